/* rangefile.c: see rangefile.h for the theory of operation. */
#define _GNU_SOURCE
#include "rangefile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#define XXH_INLINE_ALL
#include "third_party/xxhash/xxhash.h"
#if defined(__x86_64__) || defined(__i386__)
/* xxh3 picks SSE2, AVX2 or AVX-512 at run time: the block hash stays off the critical path. */
#include "third_party/xxhash/xxh_x86dispatch.h"
#endif

#define RF_MAGIC "BGTCTL\r\n"
#define RF_VERSION 1u
#define RF_HEADER_SIZE 4096u
#define RF_SLOT_INTERVALS 16
#define RF_SLOTS 512
#define RF_BOOT_OFFSET 2048u /* in the header page, past rf_header: old files hold zeros */

struct rf_header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t size;
    uint64_t nblocks;
    uint32_t block_shift;
    uint16_t etag_len;
    uint16_t lm_len;
    char etag[RF_ETAG_MAX];
    char last_modified[RF_LM_MAX];
    uint64_t checksum; /* xxh3-64 of every byte above */
};

/* The written parts of one partial block: sorted, disjoint, non-adjacent.
 * While the block arrives in order, its hash is computed as the bytes come,
 * from the caller's (cache-hot) buffer instead of re-reading the mapping. */
struct rf_slot {
    XXH3_state_t hash; /* first: 64-byte aligned */
    int64_t block;     /* -1 when free */
    uint32_t hashed;   /* bytes [0, hashed) are in `hash` */
    uint32_t n;
    uint32_t iv[RF_SLOT_INTERVALS][2];
};

static uint64_t nblocks_of(uint64_t size, uint32_t shift)
{
    return (size + (1ull << shift) - 1) >> shift;
}

static size_t bitmap_len(uint64_t nblocks) { return (size_t)((nblocks + 63) / 64 * 8); }

static size_t ctl_len_of(uint64_t nblocks)
{
    return RF_HEADER_SIZE + bitmap_len(nblocks) + (size_t)nblocks * 8;
}

static uint64_t block_len(const rf_file *f, uint64_t b)
{
    uint64_t start = b << f->block_shift;
    uint64_t left = f->size - start;
    return left < f->block_size ? left : f->block_size;
}

static int bit_get(const rf_file *f, uint64_t b)
{
    return (__atomic_load_n(&f->bitmap[b >> 3], __ATOMIC_ACQUIRE) >> (b & 7)) & 1;
}

/* Partial blocks tracked at once: no more than the file has blocks.  A slot holds a
 * hash state (about 770 bytes in all), so 512 of them cost 390 KiB a file, every page
 * touched when they are cleared: 64 files of 32 blocks at once held 24 MiB of slots
 * they could never use. */
static uint32_t nslots_of(uint64_t nblocks)
{
    return nblocks < RF_SLOTS ? (uint32_t)(nblocks ? nblocks : 1) : RF_SLOTS;
}

size_t rf_workspace_size(uint64_t size, uint32_t block_shift)
{
    if (block_shift < RF_MIN_BLOCK_SHIFT || block_shift > RF_MAX_BLOCK_SHIFT)
        return 0;
    uint64_t nblocks = nblocks_of(size, block_shift);
    return (size_t)nblocks * sizeof(int32_t) + nslots_of(nblocks) * sizeof(rf_slot) + 64;
}

/* Preallocate; 1 when the file system refused and the file is sparse. */
static int preallocate(int fd, uint64_t len, int zero_fill)
{
    if (len == 0)
        return 0;
    int rc = posix_fallocate(fd, 0, (off_t)len);
    if (rc == 0)
        return 0;
    if (rc != EOPNOTSUPP && rc != EINVAL)
        return -rc;
    if (ftruncate(fd, (off_t)len) != 0)
        return -errno;
    if (!zero_fill)
        return 1;
    static const uint8_t zeros[4096];
    for (uint64_t off = 0; off < len; off += sizeof zeros) {
        uint64_t n = len - off < sizeof zeros ? len - off : sizeof zeros;
        if ((rc = dio_pwrite_all(fd, zeros, n, off)) != 0)
            return rc;
    }
    return 0;
}

static void header_fill(rf_header *h, uint64_t size, uint32_t shift, const char *etag,
                        const char *lm)
{
    memset(h, 0, sizeof *h);
    memcpy(h->magic, RF_MAGIC, 8);
    h->version = RF_VERSION;
    h->header_size = RF_HEADER_SIZE;
    h->size = size;
    h->nblocks = nblocks_of(size, shift);
    h->block_shift = shift;
    h->etag_len = (uint16_t)strlen(etag);
    h->lm_len = (uint16_t)strlen(lm);
    memcpy(h->etag, etag, h->etag_len);
    memcpy(h->last_modified, lm, h->lm_len);
    h->checksum = XXH3_64bits(h, offsetof(rf_header, checksum));
}

static int header_check(const rf_header *h, size_t file_len)
{
    if (memcmp(h->magic, RF_MAGIC, 8) != 0)
        return RF_E_FORMAT;
    if (h->version != RF_VERSION || h->header_size != RF_HEADER_SIZE)
        return RF_E_VERSION;
    if (h->checksum != XXH3_64bits(h, offsetof(rf_header, checksum)))
        return RF_E_CORRUPT;
    if (h->block_shift < RF_MIN_BLOCK_SHIFT || h->block_shift > RF_MAX_BLOCK_SHIFT ||
        h->nblocks != nblocks_of(h->size, h->block_shift) || h->etag_len > RF_ETAG_MAX ||
        h->lm_len > RF_LM_MAX)
        return RF_E_CORRUPT;
    if (file_len != ctl_len_of(h->nblocks))
        return RF_E_TRUNCATED;
    return 0;
}

/* Reads the header of an open control file and checks it against the file's length. */
static int header_read(int fd, rf_header *h)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    if ((size_t)st.st_size < sizeof *h)
        return st.st_size >= 8 ? RF_E_TRUNCATED : RF_E_FORMAT;
    if (pread(fd, h, sizeof *h, 0) != (ssize_t)sizeof *h)
        return -EIO;
    return header_check(h, (size_t)st.st_size);
}

/* A side file made by this call and nobody else: O_EXCL | O_NOFOLLOW, never through
 * a file or link someone planted under its name.  A name of this user's already
 * there (a crash's leftover, a link) is unlinked once, which never follows it;
 * another user's is RF_E_FOREIGN.  A name taken again before the second try fails
 * (EEXIST). */
static int create_own(const char *path, mode_t mode)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd >= 0 || errno != EEXIST)
        return fd >= 0 ? fd : -errno;
    struct stat st;
    if (lstat(path, &st) != 0)
        return -errno;
    if (st.st_uid != geteuid())
        return RF_E_FOREIGN;
    if (unlink(path) != 0)
        return -errno;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    return fd >= 0 ? fd : -errno;
}

/* A side file found on disk is trusted only when it is ours: owned by this user and
 * writable by nobody else, so another user cannot have written its bits or bytes. */
static int check_own(int fd, mode_t forbidden)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    if (st.st_uid != geteuid() || (st.st_mode & forbidden) != 0 || !S_ISREG(st.st_mode))
        return RF_E_FOREIGN;
    return 0;
}

/* Reads and checks an existing control file's header: what rf_open will need. */
int rf_peek(const char *ctl_path, uint64_t *size, uint32_t *block_shift)
{
    int fd = open(ctl_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    rf_header h;
    int rc = check_own(fd, S_IWGRP | S_IWOTH);
    if (rc == 0)
        rc = header_read(fd, &h);
    close(fd);
    if (rc == 0) {
        *size = h.size;
        *block_shift = h.block_shift;
    }
    return rc;
}

/* Writes a new control file under the caller's temporary name and renames it into
 * place, so that a crash never leaves a half-written header under ctl_path. */
static int ctl_create(rf_file *f, const char *tmp, const char *etag, const char *lm)
{
    int fd = create_own(tmp, 0600);
    if (fd < 0)
        return fd;
    rf_header h;
    header_fill(&h, f->size, f->block_shift, etag, lm);
    int rc = preallocate(fd, ctl_len_of(f->nblocks), 1);
    if (rc == 0)
        rc = dio_pwrite_all(fd, (const uint8_t *)&h, sizeof h, 0);
    if (rc == 0 && rename(tmp, f->ctl_path) != 0)
        rc = -errno;
    if (rc != 0) {
        close(fd);
        unlink(tmp);
        return rc;
    }
    f->ctl_fd = fd;
    return 0;
}

static int data_create(rf_file *f)
{
    int fd = create_own(f->data_path, 0666);
    if (fd < 0)
        return fd;
    int rc = preallocate(fd, f->size, 0);
    if (rc < 0) {
        close(fd);
        unlink(f->data_path);
        return rc;
    }
    f->data_fd = fd; /* sparse when rc == 1: fine, nothing stores through the map */
    return 0;
}

/* Opens an existing pair; 1 when there is no control file at all. */
static int open_existing(rf_file *f)
{
    int fd = open(f->ctl_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 1 : -errno;
    f->ctl_fd = fd;
    int rc = check_own(fd, S_IWGRP | S_IWOTH);
    if (rc != 0)
        return rc;
    rf_header h;
    rc = header_read(fd, &h);
    if (rc != 0)
        return rc;
    if (h.size != f->size || h.block_shift != f->block_shift)
        return RF_E_MISMATCH;
    f->data_fd = open(f->data_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (f->data_fd < 0)
        return errno == ENOENT ? RF_E_MISMATCH : -errno;
    if ((rc = check_own(f->data_fd, 0)) != 0) /* its mode follows the umask */
        return rc;
    struct stat st;
    if (fstat(f->data_fd, &st) != 0)
        return -errno;
    if ((uint64_t)st.st_size != f->size)
        return RF_E_MISMATCH;
    return 0;
}

static int map_all(rf_file *f)
{
    f->ctl_len = ctl_len_of(f->nblocks);
    f->ctl = mmap(NULL, f->ctl_len, PROT_READ | PROT_WRITE, MAP_SHARED, f->ctl_fd, 0);
    if (f->ctl == MAP_FAILED) {
        f->ctl = NULL;
        return -errno;
    }
    f->hdr = (rf_header *)f->ctl;
    f->bitmap = f->ctl + RF_HEADER_SIZE;
    f->hashes = (uint64_t *)(f->bitmap + bitmap_len(f->nblocks));
    if (f->size == 0)
        return 0;
    f->data = mmap(NULL, f->size, PROT_READ | PROT_WRITE, MAP_SHARED, f->data_fd, 0);
    if (f->data == MAP_FAILED) {
        f->data = NULL;
        return -errno;
    }
    return 0;
}

static void load_state(rf_file *f)
{
    memcpy(f->etag, f->hdr->etag, f->hdr->etag_len);
    f->etag[f->hdr->etag_len] = 0;
    memcpy(f->last_modified, f->hdr->last_modified, f->hdr->lm_len);
    f->last_modified[f->hdr->lm_len] = 0;
    f->bytes_complete = 0;
    for (uint64_t b = 0; b < f->nblocks; b++)
        if (bit_get(f, b))
            f->bytes_complete += block_len(f, b);
    for (uint64_t b = 0; b < f->nblocks; b++)
        f->slot_of[b] = -1;
    for (uint32_t i = 0; i < f->nslots; i++)
        f->slots[i].block = -1;
}

static uint64_t direct_stage_bytes; /* process-wide, against each file's stage_memory */
static uint32_t direct_files;       /* open in direct mode, process-wide */

static void dstage_free(rf_file *f, rf_stage *st);

/* Waits for the writer threads to give back every stage, then frees the buffers. */
static void release_stages(rf_file *f)
{
    if (f->wb_busy)
        dio_wait(&f->wb);
    f->wb_busy = 0;
    for (uint32_t i = 0; i < RF_MAX_STAGES; i++) {
        rf_stage *st = &f->stages[i];
        if (st->writing) {
            dio_wait(&st->job);
            st->writing = 0;
        }
        if (st->buf != NULL && f->threaded)
            dstage_free(f, st); /* gives its bytes back to the budget */
        else
            free(st->buf);
        st->buf = NULL;
        st->len = 0;
    }
    f->inflight = 0;
    if (f->threaded && f->open)
        __atomic_sub_fetch(&direct_files, 1, __ATOMIC_RELAXED);
}

static void release(rf_file *f)
{
    release_stages(f); /* first: a writer thread may still be using the descriptors */
    if (f->data)
        munmap(f->data, f->size);
    if (f->ctl)
        munmap(f->ctl, f->ctl_len);
    if (f->data_fd >= 0)
        close(f->data_fd);
    if (f->ctl_fd >= 0)
        close(f->ctl_fd);
    if (f->direct_fd >= 0)
        close(f->direct_fd);
    f->direct_fd = -1;
    f->data = NULL;
    f->ctl = NULL;
    f->data_fd = f->ctl_fd = -1;
    f->open = 0;
}

static int power_of_two(uint64_t n)
{
    return n != 0 && (n & (n - 1)) == 0;
}

static int tuning_ok(const rf_tuning *t)
{
    return t != NULL && power_of_two(t->stage_size) && t->stage_size >= DIO_ALIGN &&
           power_of_two(t->max_stage_size) && t->max_stage_size >= t->stage_size &&
           t->max_stage_size <= RF_MAX_STAGE_SIZE && t->stages >= 1 &&
           t->stages <= RF_MAX_STAGES && t->threaded_stages >= 1 &&
           t->threaded_stages <= RF_MAX_STAGES && t->writer_threads >= 1 &&
           t->writer_threads <= DIO_MAX_THREADS;
}

int rf_open(rf_file *f, void *workspace, size_t workspace_len, const char *data_path,
            const char *ctl_path, const char *ctl_tmp_path, uint64_t size, uint32_t block_shift,
            const char *etag, const char *last_modified, int flags, const rf_tuning *tuning)
{
    memset(f, 0, sizeof *f);
    f->data_fd = f->ctl_fd = f->direct_fd = -1;
    size_t need = rf_workspace_size(size, block_shift);
    if (need == 0 || workspace_len < need || strlen(data_path) >= RF_PATH_MAX ||
        strlen(ctl_path) >= RF_PATH_MAX || strlen(ctl_tmp_path) >= RF_PATH_MAX ||
        strlen(etag) > RF_ETAG_MAX || strlen(last_modified) > RF_LM_MAX ||
        size > (uint64_t)INT64_MAX || !tuning_ok(tuning))
        return RF_E_ARG;
    f->tune = *tuning;
    dio_want((int)tuning->writer_threads);
    strcpy(f->data_path, data_path);
    strcpy(f->ctl_path, ctl_path);
    f->size = size;
    f->block_shift = block_shift;
    f->block_size = 1ull << block_shift;
    f->nblocks = nblocks_of(size, block_shift);
    f->staged = (flags & RF_OPEN_UNSTAGED) == 0;
    f->nstages = f->tune.stages;
    f->slot_of = workspace;
    uintptr_t slots = ((uintptr_t)(f->slot_of + f->nblocks) + 63) & ~(uintptr_t)63;
    f->slots = (rf_slot *)slots;
    f->nslots = nslots_of(f->nblocks);

    int rc = open_existing(f);
    if (rc == 1 && (flags & RF_OPEN_CREATE)) {
        rc = data_create(f);
        if (rc == 0 && (rc = ctl_create(f, ctl_tmp_path, etag, last_modified)) != 0)
            unlink(data_path);
        f->created = rc == 0;
    } else if (rc == 1) {
        rc = -ENOENT;
    }
    if (rc == 0)
        rc = map_all(f);
    if (rc != 0) {
        release(f);
        return rc;
    }
    if ((flags & (RF_OPEN_DIRECT | RF_OPEN_WRITEBACK)) && f->staged && size > 0) {
        /* Refused (tmpfs before Linux 6.6, some FUSE): the page cache it is. */
        if (flags & RF_OPEN_DIRECT)
            f->direct_fd = dio_open_same(data_path, f->data_fd);
        f->direct = f->direct_fd >= 0;
        f->writeback = (flags & RF_OPEN_WRITEBACK) != 0;
        f->threaded = f->direct || f->writeback;
        if (f->threaded) {
            __atomic_add_fetch(&direct_files, 1, __ATOMIC_RELAXED);
            /* A stage a block: one hash from memory each, and a kill loses what a
             * block-sized bitmap would lose anyway. */
            uint32_t lo = f->tune.stage_size, hi = f->tune.max_stage_size;
            f->nstages = f->tune.threaded_stages;
            f->stage_size = (uint32_t)(f->block_size < lo ? lo : f->block_size > hi ? hi : f->block_size);
        }
    }
    load_state(f);
    f->open = 1;
    return 0;
}

/* h: the block's hash when the caller already has it, else 0 to hash the mapping. */
static void mark_complete(rf_file *f, uint64_t b, uint64_t h, int have_hash)
{
    uint64_t len = block_len(f, b);
    if (!have_hash)
        h = XXH3_64bits(f->data + (b << f->block_shift), (size_t)len);
    __atomic_store_n(&f->hashes[b], h, __ATOMIC_RELAXED);
    /* The bit is published after the data and the hash: release order. */
    __atomic_fetch_or(&f->bitmap[b >> 3], (uint8_t)(1u << (b & 7)), __ATOMIC_RELEASE);
    f->bytes_complete += len;
}

static rf_slot *slot_for(rf_file *f, uint64_t b)
{
    int32_t i = f->slot_of[b];
    if (i >= 0)
        return &f->slots[i];
    for (uint32_t k = 0; k < f->nslots; k++) {
        uint32_t j = (f->slot_cursor + k) % f->nslots;
        if (f->slots[j].block < 0) {
            f->slot_cursor = j + 1;
            f->slots[j].block = (int64_t)b;
            f->slots[j].n = 0;
            f->slots[j].hashed = 0;
            XXH3_64bits_reset(&f->slots[j].hash);
            f->slot_of[b] = (int32_t)j;
            return &f->slots[j];
        }
    }
    return NULL; /* pool full: this piece goes untracked (under-report) */
}

/* Adds [s, e) to the block's interval set; 1 when the block is now whole. */
static int slot_add(rf_file *f, rf_slot *sl, uint32_t s, uint32_t e, uint32_t blen)
{
    uint32_t out[RF_SLOT_INTERVALS + 1][2];
    uint32_t n = 0, i = 0;
    while (i < sl->n && sl->iv[i][1] < s)
        memcpy(out[n++], sl->iv[i++], sizeof out[0]);
    while (i < sl->n && sl->iv[i][0] <= e) {
        if (sl->iv[i][0] < s)
            s = sl->iv[i][0];
        if (sl->iv[i][1] > e)
            e = sl->iv[i][1];
        i++;
    }
    out[n][0] = s;
    out[n++][1] = e;
    while (i < sl->n && n <= RF_SLOT_INTERVALS)
        memcpy(out[n++], sl->iv[i++], sizeof out[0]);
    if (n > RF_SLOT_INTERVALS || i < sl->n)
        return 0; /* too scattered to track: leave the slot as it was */
    if (n == 1 && out[0][0] == 0 && out[0][1] == blen)
        return 1;
    memcpy(sl->iv, out, n * sizeof out[0]);
    sl->n = n;
    return 0;
}

/* Marks what [offset, offset + len) completes; buf holds those bytes, already in the file.
 * known: NULL, or the xxh3 of the run when it is one whole block (taken elsewhere). */
static int64_t account(rf_file *f, uint64_t offset, const uint8_t *buf, uint64_t len,
                       const uint64_t *known)
{
    int64_t done = 0;
    uint64_t end = offset + len;
    for (uint64_t b = offset >> f->block_shift; b <= (end - 1) >> f->block_shift; b++) {
        if (bit_get(f, b))
            continue;
        uint64_t bstart = b << f->block_shift, blen = block_len(f, b);
        uint32_t s = (uint32_t)(offset > bstart ? offset - bstart : 0);
        uint32_t e = (uint32_t)(end < bstart + blen ? end - bstart : blen);
        const uint8_t *src = buf + (bstart + s - offset);
        if (s == 0 && e == blen && f->slot_of[b] < 0) {
            mark_complete(f, b, known ? *known : XXH3_64bits(src, e), 1);
            done++;
            continue;
        }
        rf_slot *sl = slot_for(f, b);
        if (sl == NULL)
            continue;
        if (s <= sl->hashed && e > sl->hashed) { /* extends the in-order prefix */
            XXH3_64bits_update(&sl->hash, src + (sl->hashed - s), e - sl->hashed);
            sl->hashed = e;
        }
        if (slot_add(f, sl, s, e, (uint32_t)blen)) {
            int streamed = sl->hashed == blen;
            mark_complete(f, b, streamed ? XXH3_64bits_digest(&sl->hash) : 0, streamed);
            f->slot_of[b] = -1;
            sl->block = -1;
            done++;
        }
    }
    return done;
}

static int64_t put(rf_file *f, uint64_t offset, const uint8_t *buf, uint64_t len)
{
    int rc = dio_pwrite_all(f->data_fd, buf, len, offset);
    return rc != 0 ? rc : account(f, offset, buf, len, NULL);
}

/* Writes one stage to the file and marks what it completes; the stage is empty after,
 * even on failure (its bytes were never marked, so they are simply fetched again). */
static int64_t dstage_drain(rf_file *f, int wait);

static int64_t stage_drain(rf_file *f, rf_stage *st)
{
    if (st->len == 0)
        return 0;
    uint32_t len = st->len;
    st->len = 0;
    return put(f, st->offset, st->buf, len);
}

int64_t rf_drain(rf_file *f)
{
    if (!f->open)
        return RF_E_CLOSED;
    if (f->threaded)
        return dstage_drain(f, 1);
    int64_t done = 0, err = 0;
    for (uint32_t i = 0; i < f->nstages; i++) {
        int64_t n = stage_drain(f, &f->stages[i]);
        if (n < 0)
            err = n;
        else
            done += n;
    }
    return err ? err : done;
}

/* Drains the stages that overlap [offset, end): a later write must land after them. */
static int64_t drain_overlapping(rf_file *f, uint64_t offset, uint64_t end)
{
    int64_t done = 0;
    for (uint32_t i = 0; i < f->nstages; i++) {
        rf_stage *st = &f->stages[i];
        if (st->len == 0 || st->offset >= end || st->offset + st->len <= offset)
            continue;
        int64_t n = stage_drain(f, st);
        if (n < 0)
            return n;
        done += n;
    }
    return done;
}

/* The stage for a piece: the run it continues, else an empty stage (allocated ones
 * first), else the least recently used one, drained. */
static int64_t stage_write(rf_file *f, uint64_t offset, const uint8_t *buf, uint32_t len)
{
    rf_stage *st = NULL;
    for (uint32_t i = 0; i < f->nstages && st == NULL; i++) {
        rf_stage *c = &f->stages[i];
        if (c->len != 0 && c->offset + c->len == offset)
            st = c;
    }
    int64_t done = 0;
    if (st == NULL) {
        if ((done = drain_overlapping(f, offset, offset + len)) < 0)
            return done;
        rf_stage *victim = &f->stages[0];
        for (uint32_t i = 0; i < f->nstages; i++) {
            rf_stage *c = &f->stages[i];
            int c_rank = c->len == 0 ? (c->buf != NULL ? 0 : 1) : 2;
            int v_rank = victim->len == 0 ? (victim->buf != NULL ? 0 : 1) : 2;
            if (c_rank < v_rank || (c_rank == 2 && v_rank == 2 && c->used_at < victim->used_at))
                victim = c;
        }
        int64_t n = stage_drain(f, victim);
        if (n < 0)
            return n;
        done += n;
        if (victim->buf == NULL && (victim->buf = malloc(2 * (size_t)f->tune.stage_size)) == NULL) {
            int64_t m = put(f, offset, buf, len); /* no memory for a stage: write through */
            return m < 0 ? m : done + m;
        }
        st = victim;
        st->offset = offset;
    }
    memcpy(st->buf + st->len, buf, len);
    st->len += len;
    st->used_at = ++f->stage_clock;
    /* Write up to the last stage_size boundary crossed, so runs start and end
     * aligned (unaligned runs measured 35% slower); the tail, under one piece, stays
     * for the next append. */
    uint64_t end = st->offset + st->len;
    uint64_t cut = end == f->size ? end : end & ~(uint64_t)(f->tune.stage_size - 1);
    if (cut > st->offset) {
        uint32_t head = (uint32_t)(cut - st->offset), tail = st->len - head;
        int64_t n = put(f, st->offset, st->buf, head);
        memmove(st->buf, st->buf + head, tail);
        st->offset = cut;
        st->len = tail;
        if (n < 0)
            return n;
        done += n;
    }
    return done;
}

/* -- direct mode: stages written by the writer threads (see dio.h) ---------------
 *
 * A stage fills up to the next boundary of its size in the file (or its
 * end) and then goes to the writer threads whole; its blocks are accounted (hashed,
 * marked) by the caller's thread when it comes back, in a later rf_write, rf_reap or
 * drain.  The bits stay single-threaded, and each is set only after the write that
 * holds its bytes returned. */

#if defined(__x86_64__)
/* Copies a piece into a direct stage with non-temporal stores: the stage is next read
 * by a writer thread (its hash) and the disk, not by this thread, and ordinary stores
 * first read every line of the stage into this core's cache (16 MiB of stages, cold
 * by the time one is reused).  perf on one 2 GiB download from loopback nginx: with
 * memcpy the copy was 38-47% of the engine thread (0.5-0.6 s), with these stores 14%,
 * and the thread's CPU fell from 1.39 to 1.05 s.  dstage_submit fences the stores
 * before a writer sees the stage. */
static void stage_copy(uint8_t *dst, const uint8_t *src, size_t n)
{
    size_t head = (size_t)(-(uintptr_t)dst & 15);
    if (n < 256 || head >= n) {
        memcpy(dst, src, n);
        return;
    }
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_stream_si128((__m128i *)(dst + i), a);
        _mm_stream_si128((__m128i *)(dst + i + 16), b);
        _mm_stream_si128((__m128i *)(dst + i + 32), c);
        _mm_stream_si128((__m128i *)(dst + i + 48), d);
    }
    memcpy(dst + i, src + i, n - i);
}
#define stage_fence() _mm_sfence()
#else
#define stage_copy(dst, src, n) memcpy((dst), (src), (n))
#define stage_fence() ((void)0)
#endif

/* Accounts a stage the writer threads are done with; the stage is empty after.  A
 * stage that is one whole block comes back with its hash, taken by the writer (one
 * large file: a tenth of the engine thread's time was this hash). */
static int64_t dstage_settle(rf_file *f, rf_stage *st)
{
    st->writing = 0;
    f->inflight--;
    uint32_t len = st->len;
    st->len = 0;
    if (st->job.result != 0)
        return st->job.result; /* never marked: fetched again */
    return account(f, st->offset, st->buf + st->lead, len, st->job.before ? &st->hash : NULL);
}

/* Whether the run just before this one is still with the writers.  Settled after it,
 * this run extends its blocks' in-order hash (see account); settled first, a block it
 * shares with that run would be hashed again from the file. */
static int dstage_follows_inflight(const rf_file *f, const rf_stage *st)
{
    for (uint32_t i = 0; i < f->nstages; i++) {
        const rf_stage *o = &f->stages[i];
        if (o != st && o->writing && o->offset + o->len == st->offset)
            return 1;
    }
    return 0;
}

/* Hands the file's one write-back job to the writer threads, unless the last one is
 * still there (then it is skipped: the next one covers what this one would have).  0,
 * or the error the last one finished with. */
static int wb_start(rf_file *f, int op)
{
    int rc = 0;
    if (f->wb_busy) {
        if (!dio_done(&f->wb))
            return 0;
        f->wb_busy = 0;
        rc = f->wb.result == -ECANCELED ? 0 : f->wb.result; /* not run: a forked child */
    }
    memset(&f->wb, 0, sizeof f->wb);
    f->wb.op = op;
    f->wb.fd_buffered = f->data_fd;
    f->wb.fd_direct = f->ctl_fd; /* the bitmap after the data */
    f->wb_busy = 1;
    dio_submit(&f->wb);
    return rc;
}

/* Accounts every stage that came back (or, with wait, every one in flight), lowest
 * offset first. */
static int64_t dstage_collect(rf_file *f, int wait)
{
    _Static_assert(RF_MAX_STAGES <= 32, "one bit a stage in `passed`");
    int any = wait;
    for (uint32_t i = 0; i < f->nstages && !any; i++)
        any = f->stages[i].writing && dio_done(&f->stages[i].job);
    if (!any)
        return 0; /* the common case on the data path: nothing came back */
    int64_t done = 0, err = 0;
    uint32_t passed = 0; /* stages not ready this time */
    for (;;) {
        rf_stage *st = NULL;
        uint32_t at = 0;
        for (uint32_t i = 0; i < f->nstages; i++) {
            rf_stage *c = &f->stages[i];
            if (c->writing && !(passed & (1u << i)) && (st == NULL || c->offset < st->offset)) {
                st = c;
                at = i;
            }
        }
        if (st == NULL)
            break;
        if (wait) {
            dio_wait(&st->job);
        } else if (!dio_done(&st->job) || dstage_follows_inflight(f, st)) {
            passed |= 1u << at;
            continue;
        }
        int64_t n = dstage_settle(f, st);
        if (n < 0)
            err = n;
        else
            done += n;
    }
    return err ? err : done;
}

static void hash_whole_block(dio_job *job)
{
    rf_stage *st = (rf_stage *)((char *)job - offsetof(rf_stage, job));
    st->hash = XXH3_64bits(job->buf, (size_t)job->len);
}

static void dstage_submit(rf_file *f, rf_stage *st)
{
    int whole = (st->offset & (f->block_size - 1)) == 0 &&
                st->len == block_len(f, st->offset >> f->block_shift);
    st->job.before = whole ? hash_whole_block : NULL; /* also tells settle the hash is there */
    stage_fence(); /* the non-temporal stores of stage_copy, before a writer reads them */
    st->job.op = DIO_WRITE;
    st->job.piece = f->tune.stage_size;
    st->job.fd_direct = f->direct_fd;
    st->job.fd_buffered = f->data_fd;
    st->job.buf = st->buf + st->lead;
    st->job.offset = st->offset;
    st->job.len = st->len;
    st->writing = 1;
    f->inflight++;
    dio_submit(&st->job);
}

static int64_t dstage_drain(rf_file *f, int wait)
{
    for (uint32_t i = 0; i < f->nstages; i++) {
        rf_stage *st = &f->stages[i];
        if (!st->writing && st->len > 0)
            dstage_submit(f, st);
    }
    return dstage_collect(f, wait);
}

/* Waits for the stage longest with the writers, and accounts it. */
static int64_t dstage_wait_oldest(rf_file *f)
{
    rf_stage *oldest = NULL;
    for (uint32_t i = 0; i < f->nstages; i++) {
        rf_stage *st = &f->stages[i];
        if (st->writing && (oldest == NULL || st->used_at < oldest->used_at))
            oldest = st;
    }
    if (oldest == NULL)
        return 0;
    dio_wait(&oldest->job);
    return dstage_settle(f, oldest);
}

/* This file's fair part of the budget: its stage_memory over the direct files open now. */
static uint64_t dstage_share(const rf_file *f)
{
    uint32_t files = __atomic_load_n(&direct_files, __ATOMIC_RELAXED);
    return f->tune.stage_memory / (files ? files : 1);
}

static void dstage_free(rf_file *f, rf_stage *st)
{
    __atomic_sub_fetch(&direct_stage_bytes, st->cap + DIO_ALIGN, __ATOMIC_RELAXED);
    f->stage_bytes -= st->cap + DIO_ALIGN;
    free(st->buf);
    st->buf = NULL;
}

/* A buffer for a stage, within the file's share: a block's worth while the share holds
 * four, else smaller, down to stage_size (64 files at once: 64 KiB stages); 0 when
 * the share or the budget is spent. */
static int dstage_alloc(rf_file *f, rf_stage *st)
{
    uint64_t share = dstage_share(f);
    uint32_t cap = f->stage_size, least = f->tune.stage_size;
    while (cap > least && 4 * ((uint64_t)cap + DIO_ALIGN) > share)
        cap /= 4;
    if (cap < least)
        cap = least;
    uint64_t cost = cap + DIO_ALIGN;
    if (f->stage_bytes + cost > share && f->stage_bytes > 0)
        return 0;
    if (__atomic_add_fetch(&direct_stage_bytes, cost, __ATOMIC_RELAXED) > f->tune.stage_memory ||
        posix_memalign((void **)&st->buf, DIO_ALIGN, cost) != 0) {
        __atomic_sub_fetch(&direct_stage_bytes, cost, __ATOMIC_RELAXED);
        st->buf = NULL;
        return 0;
    }
    st->cap = cap;
    f->stage_bytes += cost;
    return 1;
}

/* Gives back empty buffers past the file's share (more files opened since they were
 * taken), so that the files opened later get theirs. */
static void dstage_trim(rf_file *f)
{
    uint64_t share = dstage_share(f);
    for (uint32_t i = 0; i < f->nstages && f->stage_bytes > share; i++) {
        rf_stage *st = &f->stages[i];
        if (st->buf != NULL && !st->writing && st->len == 0)
            dstage_free(f, st);
    }
}

/* A stage for a piece at offset: the one it continues, else an empty one (allocated
 * ones first, a new one within the budget), else one handed to the writers to free
 * it.  NULL when the budget allows none: the piece goes through the page cache. */
static rf_stage *dstage_for(rf_file *f, uint64_t offset, uint64_t end, int64_t *done)
{
    rf_stage *empty = NULL, *unallocated = NULL, *lru = NULL;
    for (uint32_t i = 0; i < f->nstages; i++) {
        rf_stage *st = &f->stages[i];
        if (st->writing)
            continue;
        if (st->len > 0 && st->offset + st->len == offset)
            return st;
        if (st->len == 0 && st->buf != NULL && empty == NULL)
            empty = st;
        if (st->buf == NULL && unallocated == NULL)
            unallocated = st;
        if (st->len > 0 && (lru == NULL || st->used_at < lru->used_at))
            lru = st;
    }
    if (f->stage_bytes > f->tune.stage_size) { /* a new run: a file over its share gives back */
        dstage_trim(f);
        if (empty != NULL && empty->buf == NULL)
            empty = NULL;
    }
    /* A rewrite of bytes with the writers must land after them. */
    for (uint32_t i = 0; i < f->nstages; i++) {
        rf_stage *st = &f->stages[i];
        if (st->len == 0 || st->offset >= end || st->offset + st->len <= offset)
            continue;
        if (!st->writing)
            dstage_submit(f, st);
        dio_wait(&st->job);
        int64_t n = dstage_settle(f, st);
        if (n < 0) {
            *done = n;
            return NULL;
        }
        *done += n;
        if (empty == NULL)
            empty = st;
        if (lru == st)
            lru = NULL;
    }
    if (empty == NULL && unallocated != NULL && dstage_alloc(f, unallocated))
        empty = unallocated;
    while (empty == NULL && (lru != NULL || f->inflight > 0)) {
        if (lru != NULL && lru->len > 0 && !lru->writing)
            dstage_submit(f, lru);
        int64_t n = dstage_wait_oldest(f);
        if (n < 0) {
            *done = n;
            return NULL;
        }
        *done += n;
        lru = NULL;
        for (uint32_t i = 0; i < f->nstages && empty == NULL; i++)
            if (!f->stages[i].writing && f->stages[i].len == 0 && f->stages[i].buf != NULL)
                empty = &f->stages[i];
    }
    if (empty != NULL) {
        empty->offset = offset;
        empty->lead = (uint32_t)(offset & (DIO_ALIGN - 1));
        empty->len = 0;
    }
    return empty;
}

static int64_t dstage_write(rf_file *f, uint64_t offset, const uint8_t *buf, uint64_t len)
{
    int64_t done = f->inflight > 0 ? dstage_collect(f, 0) : 0;
    if (done < 0)
        return done;
    while (len > 0) {
        rf_stage *st = dstage_for(f, offset, offset + len, &done);
        if (done < 0)
            return done;
        if (st == NULL) { /* over the budget: through the page cache, at once */
            int64_t n = put(f, offset, buf, len);
            return n < 0 ? n : done + n;
        }
        uint64_t boundary = (st->offset / st->cap + 1) * st->cap;
        if (boundary > f->size)
            boundary = f->size;
        uint64_t room = boundary - (st->offset + st->len);
        uint64_t n = len < room ? len : room;
        stage_copy(st->buf + st->lead + st->len, buf, (size_t)n);
        st->len += (uint32_t)n;
        st->used_at = ++f->stage_clock;
        if (st->offset + st->len == boundary)
            dstage_submit(f, st);
        offset += n;
        buf += n;
        len -= n;
    }
    return done;
}

int64_t rf_reap(rf_file *f)
{
    if (!f->open)
        return RF_E_CLOSED;
    return f->threaded && f->inflight > 0 ? dstage_collect(f, 0) : 0;
}

int64_t rf_write(rf_file *f, uint64_t offset, const uint8_t *buf, size_t len)
{
    if (!f->open)
        return RF_E_CLOSED;
    if (offset > f->size || len > f->size - offset)
        return RF_E_RANGE;
    if (len == 0)
        return 0;
    f->bytes_written += len;
    if (f->threaded)
        return dstage_write(f, offset, buf, len);
    if (f->staged && len < f->tune.stage_size)
        return stage_write(f, offset, buf, (uint32_t)len);
    int64_t done = drain_overlapping(f, offset, offset + len);
    if (done < 0)
        return done;
    int64_t n = put(f, offset, buf, len);
    return n < 0 ? n : done + n;
}

int64_t rf_ranges(rf_file *f, uint64_t *pairs, size_t cap_pairs)
{
    if (!f->open)
        return RF_E_CLOSED;
    int64_t drained = rf_drain(f);
    if (drained < 0)
        return (int)drained;
    int64_t n = 0;
    uint64_t b = 0;
    while (b < f->nblocks) {
        if ((b & 63) == 0 && b + 64 <= f->nblocks &&
            ((const uint64_t *)f->bitmap)[b >> 6] == 0) {
            b += 64;
            continue;
        }
        if (!bit_get(f, b)) {
            b++;
            continue;
        }
        uint64_t first = b;
        while (b < f->nblocks && bit_get(f, b))
            b++;
        if ((size_t)n < cap_pairs) {
            pairs[2 * n] = first << f->block_shift;
            pairs[2 * n + 1] = (b << f->block_shift > f->size ? f->size : b << f->block_shift) -
                               pairs[2 * n];
        }
        n++;
    }
    return n;
}

int rf_next_missing(rf_file *f, uint64_t from, uint64_t *start, uint64_t *len)
{
    if (!f->open)
        return RF_E_CLOSED;
    int64_t drained = rf_drain(f);
    if (drained < 0)
        return (int)drained;
    *start = f->size;
    *len = 0;
    if (from >= f->size)
        return 0;
    uint64_t b = from >> f->block_shift;
    while (b < f->nblocks && bit_get(f, b))
        b++;
    if (b >= f->nblocks)
        return 0;
    uint64_t first = b;
    while (b < f->nblocks && !bit_get(f, b))
        b++;
    *start = first << f->block_shift;
    uint64_t stop = b << f->block_shift;
    *len = (stop > f->size ? f->size : stop) - *start;
    return 0;
}

int rf_is_complete(rf_file *f, uint64_t offset, uint64_t len)
{
    if (!f->open)
        return RF_E_CLOSED;
    int64_t drained = rf_drain(f);
    if (drained < 0)
        return (int)drained;
    if (offset > f->size || len > f->size - offset)
        return RF_E_RANGE;
    if (len == 0)
        return 1;
    for (uint64_t b = offset >> f->block_shift; b <= (offset + len - 1) >> f->block_shift; b++)
        if (!bit_get(f, b))
            return 0;
    return 1;
}

int64_t rf_verify(rf_file *f)
{
    if (!f->open)
        return RF_E_CLOSED;
    int64_t drained = rf_drain(f);
    if (drained < 0)
        return (int)drained;
    int64_t bad = 0;
    for (uint64_t b = 0; b < f->nblocks; b++) {
        if (!bit_get(f, b))
            continue;
        uint64_t len = block_len(f, b);
        if (XXH3_64bits(f->data + (b << f->block_shift), (size_t)len) == f->hashes[b])
            continue;
        __atomic_fetch_and(&f->bitmap[b >> 3], (uint8_t)~(1u << (b & 7)), __ATOMIC_RELEASE);
        f->bytes_complete -= len;
        bad++;
    }
    return bad;
}

int rf_flush(rf_file *f, int durable)
{
    if (!f->open)
        return RF_E_CLOSED;
    int64_t drained = rf_drain(f);
    if (drained < 0)
        return (int)drained;
    int mode = durable ? MS_SYNC : MS_ASYNC;
    /* Data before bitmap: the order in which a power loss finds them consistent. */
    if (durable && fdatasync(f->data_fd) != 0)
        return -errno;
    if (msync(f->ctl, f->ctl_len, mode) != 0)
        return -errno;
    return 0;
}

int rf_checkpoint(rf_file *f, int durable)
{
    if (!f->open)
        return RF_E_CLOSED;
    if (f->size == 0)
        return 0;
    return wb_start(f, durable ? DIO_SYNC : DIO_WRITEBACK);
}

int64_t rf_boot(rf_file *f, const char *boot_id)
{
    _Static_assert(sizeof(rf_header) <= RF_BOOT_OFFSET &&
                       RF_BOOT_OFFSET + RF_BOOT_MAX + 1 <= RF_HEADER_SIZE,
                   "the boot id fits the header page, past the header");
    if (!f->open)
        return RF_E_CLOSED;
    size_t n = strlen(boot_id);
    if (n > RF_BOOT_MAX)
        return RF_E_ARG;
    char *stored = (char *)f->ctl + RF_BOOT_OFFSET;
    if (n > 0 && strncmp(stored, boot_id, RF_BOOT_MAX + 1) == 0)
        return 0;
    int64_t bad = rf_verify(f); /* before the new id: a kill meanwhile verifies again */
    if (bad < 0)
        return bad;
    memset(stored, 0, RF_BOOT_MAX + 1);
    memcpy(stored, boot_id, n);
    return bad;
}

static int fsync_parent(const char *path)
{
    char buf[RF_PATH_MAX];
    strcpy(buf, path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int rf_finish(rf_file *f, const char *final_path, int durable)
{
    if (!f->open)
        return RF_E_CLOSED;
    int64_t drained = rf_drain(f);
    if (drained < 0)
        return (int)drained;
    if (f->bytes_complete != f->size)
        return RF_E_INCOMPLETE;
    if (durable && fsync(f->data_fd) != 0)
        return -errno;
    if (rename(f->data_path, final_path) != 0)
        return -errno;
    int rc = durable ? fsync_parent(final_path) : 0;
    release(f);
    unlink(f->ctl_path);
    return rc;
}

int rf_discard(rf_file *f)
{
    if (!f->open)
        return RF_E_CLOSED;
    release(f);
    int rc = 0;
    if (unlink(f->ctl_path) != 0 && errno != ENOENT)
        rc = -errno;
    if (unlink(f->data_path) != 0 && errno != ENOENT)
        rc = -errno;
    return rc;
}

int rf_close(rf_file *f)
{
    if (f->open) {
        rf_drain(f); /* best effort: a stage that cannot be written was never marked */
        release(f);
    }
    return 0;
}
