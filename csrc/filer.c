/* filer: see filer.h for the theory of operation. */
#define _GNU_SOURCE
#include "filer.h"

#include "dio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct fl_job {
    struct fl_job *next;
    struct fl_channel *ch;
    uint64_t id;
    int64_t result;
    int fd;
    int dir; /* index of its directory in the dirsyncer's group */
    int created; /* the namer made the partial file */
    int written; /* the syncer is done with it: the namer renames it */
    int durable; /* FL_DURABLE */
    uint8_t *data; /* FINISH: bytes still to write first (page-aligned copy), or NULL */
    uint64_t data_len, data_off;
    char *b;
    char *stale; /* NULL, or unlinked with a stale partial file (see create_fresh) */
    char a[];
} fl_job;

typedef struct {
    fl_job *head, *tail;
    pthread_cond_t ready;
} fl_queue;

#define GROUP_DIRS 16

/* Where finished jobs wait for their owner (one per event loop). */
struct fl_channel {
    fl_job *head, *tail;
    int efd;
    int refs;   /* the owner's, and one per job not yet taken */
    int closed; /* the owner is gone: finished jobs are freed */
};

/* Page-aligned body buffers, kept for the next file instead of freed: a fresh one is
 * new memory, and faulting its pages in cost more than copying the body (on a VM
 * whose balloon takes freed pages back, each fault goes to the host).  Sizes are
 * rounded up to POOL_UNIT; at most POOL_BYTES are kept. */
#define POOL_UNIT (64 * 1024)
#define POOL_CLASSES 4 /* 64 KiB .. 256 KiB: the bodies the engine holds */
#define POOL_DEPTH 16
#define POOL_BYTES (4u << 20)
/* A body at most this long, not durable, is written by the namer between creating
 * and renaming its file: a copy into the page cache costs less than the two thread
 * hand-offs (wake-ups on another core) a syncer would add to every small file. */
#define INLINE_BODY (256 * 1024)

struct fl_filer {
    pthread_mutex_t lock;
    uint32_t piece;  /* page-cache writes of a body: at most this many bytes each */
    int syncers;     /* running; grows with fl_syncers, under lock */
    fl_queue syncing, naming, dirsyncing;
    void *pool[POOL_CLASSES][POOL_DEPTH]; /* under lock */
    int pooled[POOL_CLASSES];
    size_t pool_bytes;
};

static size_t pool_class(uint64_t len)
{
    return (size_t)((len + POOL_UNIT - 1) / POOL_UNIT) - 1;
}

static uint8_t *buffer_take(fl_filer *f, uint64_t len)
{
    size_t c = pool_class(len);
    void *buf = NULL;
    if (c < POOL_CLASSES) {
        pthread_mutex_lock(&f->lock);
        if (f->pooled[c] > 0) {
            buf = f->pool[c][--f->pooled[c]];
            f->pool_bytes -= (c + 1) * POOL_UNIT;
        }
        pthread_mutex_unlock(&f->lock);
        if (buf != NULL)
            return buf;
        len = (c + 1) * POOL_UNIT;
    }
    return posix_memalign(&buf, DIO_ALIGN, (size_t)len) == 0 ? buf : NULL;
}

static void buffer_give(fl_filer *f, uint8_t *buf, uint64_t len)
{
    size_t c = pool_class(len);
    if (c < POOL_CLASSES) {
        pthread_mutex_lock(&f->lock);
        size_t size = (c + 1) * POOL_UNIT;
        if (f->pooled[c] < POOL_DEPTH && f->pool_bytes + size <= POOL_BYTES) {
            f->pool[c][f->pooled[c]++] = buf;
            f->pool_bytes += size;
            buf = NULL;
        }
        pthread_mutex_unlock(&f->lock);
    }
    free(buf);
}

static void append(fl_queue *q, fl_job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

/* Signalled after unlocking: the woken thread does not block at once on the lock
 * its waker still holds (a submit from the engine loop cost twice the futex calls). */
static void push(fl_filer *f, fl_queue *q, fl_job *j)
{
    pthread_mutex_lock(&f->lock);
    append(q, j);
    pthread_mutex_unlock(&f->lock);
    pthread_cond_signal(&q->ready);
}

/* Everything queued (the whole list), or one job; waits while there is none. */
static fl_job *take(fl_filer *f, fl_queue *q, int all)
{
    pthread_mutex_lock(&f->lock);
    while (q->head == NULL)
        pthread_cond_wait(&q->ready, &f->lock);
    fl_job *j = q->head;
    if (all) {
        q->head = q->tail = NULL;
    } else {
        q->head = j->next;
        if (q->head == NULL)
            q->tail = NULL;
        j->next = NULL;
    }
    pthread_mutex_unlock(&f->lock);
    return j;
}

static void channel_unref(fl_channel *ch)
{
    if (--ch->refs == 0) {
        close(ch->efd);
        free(ch);
    }
}

static void free_data(fl_filer *f, fl_job *j)
{
    if (j->data != NULL)
        buffer_give(f, j->data, j->data_len);
    j->data = NULL;
}

static void finished(fl_filer *f, fl_job *j, int64_t result)
{
    j->result = result;
    j->next = NULL;
    pthread_mutex_lock(&f->lock);
    fl_channel *ch = j->ch;
    if (ch->closed) { /* nobody waits: what the job did stands (a finished file is whole) */
        free(j);
        channel_unref(ch);
    } else {
        if (ch->tail) {
            ch->tail->next = j;
        } else {
            ch->head = j;
            uint64_t one = 1; /* the list was empty: wake the owner */
            ssize_t w = write(ch->efd, &one, sizeof one);
            (void)w; /* fails only when the counter is full: a wake-up is pending */
        }
        ch->tail = j;
    }
    pthread_mutex_unlock(&f->lock);
}

/* A new empty partial file: O_EXCL, so a stale one, or a link someone planted, is
 * unlinked first and never written through; one another user owns is left alone
 * and fails the job (-EEXIST).  When there was a stale one, ``stale`` (the caller's
 * choice: a side file that must not outlive the result, or NULL) is unlinked too. */
static int create_fresh(const char *path, const char *stale)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd >= 0)
            return fd;
        struct stat st;
        if (errno == EEXIST && lstat(path, &st) == 0 && st.st_uid != geteuid())
            return -EEXIST;
        if (errno != EEXIST || unlink(path) != 0)
            return -errno;
        if (stale != NULL)
            unlink(stale);
    }
    return -EEXIST;
}

/* Writes what the job still holds and closes its partial file (fsync'd first when
 * durable); a file made here and never whole is removed.  0 or -errno. */
static int write_close(fl_filer *f, fl_job *j)
{
    int rc = 0;
    if (j->data != NULL) {
        /* Whole pages past the page cache: the fsync below then has no data to
         * write back, and the loop never copied them into the cache itself. */
        int dfd = j->durable ? dio_open_same(j->a, j->fd) : -1;
        rc = dio_write(dfd, j->fd, j->data, j->data_off, j->data_len, f->piece);
        if (dfd >= 0)
            close(dfd);
        free_data(f, j);
    }
    if (rc == 0 && j->durable)
        rc = fsync(j->fd) == 0 ? 0 : -errno;
    if (close(j->fd) != 0 && rc == 0)
        rc = -errno;
    if (rc != 0 && j->created)
        unlink(j->a); /* made here, never whole: nothing to resume from */
    j->fd = -1;
    j->written = 1;
    return rc;
}

static void *syncer(void *arg)
{
    fl_filer *f = arg;
    for (;;) {
        fl_job *j = take(f, &f->syncing, 0);
        int rc = write_close(f, j);
        if (rc != 0)
            finished(f, j, rc);
        else
            push(f, &f->naming, j);
    }
    return NULL;
}

/* The directory part of ``path`` ("." for a bare name), into ``out``. */
static void parent_of(const char *path, char *out)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        strcpy(out, ".");
    } else if (slash == path) {
        strcpy(out, "/");
    } else {
        memcpy(out, path, (size_t)(slash - path));
        out[slash - path] = '\0';
    }
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static void *namer(void *arg)
{
    fl_filer *f = arg;
    for (;;) {
        fl_job *j = take(f, &f->naming, 0);
        if (!j->written) { /* the partial file is made here */
            j->fd = create_fresh(j->a, j->stale);
            j->created = j->fd >= 0;
            if (j->fd < 0) {
                free_data(f, j);
                finished(f, j, j->fd);
                continue;
            }
            if (j->durable || j->data_len > INLINE_BODY) { /* written by a syncer */
                push(f, &f->syncing, j);
                continue;
            }
            int rc = write_close(f, j); /* a small body to the page cache: here */
            if (rc != 0) {
                finished(f, j, rc);
                continue;
            }
        }
        if (rename(j->a, j->b) != 0) {
            int rc = -errno;
            if (j->created)
                unlink(j->a);
            finished(f, j, rc);
        } else if (j->durable) {
            push(f, &f->dirsyncing, j);
        } else {
            finished(f, j, 0);
        }
    }
    return NULL;
}

/* Makes renames durable: takes every rename queued meanwhile and fsyncs each
 * directory they touched once, while the namer goes on creating files. */
static void *dirsyncer(void *arg)
{
    fl_filer *f = arg;
    char(*dirs)[PATH_MAX] = malloc(GROUP_DIRS * sizeof *dirs);
    int rcs[GROUP_DIRS];
    char dir[PATH_MAX];
    for (;;) {
        fl_job *group = take(f, &f->dirsyncing, 1);
        int ndirs = 0;
        for (fl_job *j = group; j; j = j->next) {
            parent_of(j->b, dir);
            j->dir = -1;
            for (int d = 0; d < ndirs && j->dir < 0; d++)
                if (strcmp(dirs[d], dir) == 0)
                    j->dir = d;
            if (j->dir < 0 && dirs != NULL && ndirs < GROUP_DIRS) {
                strcpy(dirs[ndirs], dir);
                rcs[ndirs] = fsync_dir(dir);
                j->dir = ndirs++;
            }
        }
        while (group) {
            fl_job *j = group;
            group = j->next;
            if (j->dir >= 0) {
                finished(f, j, rcs[j->dir]);
            } else { /* more directories than a group tracks: on its own */
                parent_of(j->b, dir);
                finished(f, j, fsync_dir(dir));
            }
        }
    }
    return NULL;
}

static int start(fl_filer *f, void *(*fn)(void *))
{
    pthread_attr_t attr;
    pthread_t t;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&t, &attr, fn, f);
    pthread_attr_destroy(&attr);
    return rc;
}

fl_filer *fl_new(int syncers, uint32_t piece)
{
    if (syncers < 1 || syncers > FL_MAX_SYNCERS || piece == 0)
        return NULL;
    fl_filer *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->piece = piece;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->syncing.ready, NULL);
    pthread_cond_init(&f->naming.ready, NULL);
    pthread_cond_init(&f->dirsyncing.ready, NULL);
    if (start(f, namer) != 0 || start(f, dirsyncer) != 0)
        return NULL; /* leaked on purpose: a thread may not be told to stop */
    return fl_syncers(f, syncers) > 0 ? f : NULL;
}

int fl_syncers(fl_filer *f, int syncers)
{
    if (f == NULL || syncers < 1 || syncers > FL_MAX_SYNCERS)
        return -EINVAL;
    pthread_mutex_lock(&f->lock);
    int rc = 0;
    while (f->syncers < syncers && (rc = start(f, syncer)) == 0)
        f->syncers++;
    int running = f->syncers;
    pthread_mutex_unlock(&f->lock);
    return running > 0 ? running : -rc;
}

int fl_finish(fl_filer *f, fl_channel *ch, uint64_t id, int fd, const char *part,
              const char *final, const char *stale, const uint8_t *data, uint64_t len,
              uint64_t offset, int flags)
{
    if (f == NULL || ch == NULL || part == NULL || final == NULL || (fd < 0 && offset != 0))
        return -EINVAL;
    size_t la = strlen(part), lb = strlen(final), lc = stale != NULL ? strlen(stale) : 0;
    if (la >= PATH_MAX || lb >= PATH_MAX || lc >= PATH_MAX)
        return -ENAMETOOLONG;
    uint8_t *copy = NULL;
    if (len > 0) {
        copy = buffer_take(f, len);
        if (copy == NULL)
            return -ENOMEM;
        memcpy(copy, data, (size_t)len);
    }
    fl_job *j = malloc(sizeof *j + la + lb + lc + 3);
    if (j == NULL) {
        if (copy != NULL)
            buffer_give(f, copy, len);
        return -ENOMEM;
    }
    j->data = copy;
    j->data_len = len;
    j->data_off = offset;
    j->id = id;
    j->ch = ch;
    j->fd = fd;
    j->result = 0;
    j->dir = -1;
    j->created = 0;
    j->written = 0;
    j->durable = (flags & FL_DURABLE) != 0;
    memcpy(j->a, part, la + 1);
    j->b = j->a + la + 1;
    memcpy(j->b, final, lb + 1);
    j->stale = NULL;
    if (stale != NULL) {
        j->stale = j->b + lb + 1;
        memcpy(j->stale, stale, lc + 1);
    }
    fl_queue *q = fd < 0 ? &f->naming : &f->syncing; /* no file yet: the namer makes it */
    pthread_mutex_lock(&f->lock);
    ch->refs++;
    append(q, j);
    pthread_mutex_unlock(&f->lock);
    pthread_cond_signal(&q->ready);
    return 0;
}

fl_channel *fl_channel_new(void)
{
    fl_channel *ch = calloc(1, sizeof *ch);
    if (ch == NULL)
        return NULL;
    ch->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ch->efd < 0) {
        free(ch);
        return NULL;
    }
    ch->refs = 1;
    return ch;
}

int fl_channel_fd(const fl_channel *ch)
{
    return ch->efd;
}

int fl_take(fl_filer *f, fl_channel *ch, uint64_t *ids, int64_t *results, int cap)
{
    if (cap < 1)
        return -EINVAL;
    uint64_t count;
    /* Reset the wake-up first: a job finishing after this read wakes the owner again. */
    ssize_t r = read(ch->efd, &count, sizeof count);
    (void)r; /* EAGAIN: nothing was signalled, the list may still hold jobs */
    int n = 0;
    fl_job *freed = NULL;
    pthread_mutex_lock(&f->lock);
    while (n < cap && ch->head) {
        fl_job *j = ch->head;
        ch->head = j->next;
        ids[n] = j->id;
        results[n] = j->result;
        n++;
        j->next = freed;
        freed = j;
        ch->refs--; /* never the last: the owner holds one */
    }
    if (ch->head == NULL)
        ch->tail = NULL;
    else
        eventfd_write(ch->efd, 1); /* more than cap: come back */
    pthread_mutex_unlock(&f->lock);
    while (freed) {
        fl_job *j = freed;
        freed = j->next;
        free(j);
    }
    return n;
}

void fl_channel_close(fl_filer *f, fl_channel *ch)
{
    pthread_mutex_lock(&f->lock);
    ch->closed = 1;
    while (ch->head) {
        fl_job *j = ch->head;
        ch->head = j->next;
        free(j);
        ch->refs--;
    }
    ch->tail = NULL;
    channel_unref(ch);
    pthread_mutex_unlock(&f->lock);
}
