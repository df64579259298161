/*
 * rangefile: the result file of one download, written out of order by many
 * connections, and the control file that records which blocks are complete.
 *
 * Theory of operation
 * -------------------
 * The data lives in a partial file beside the final name, preallocated to the
 * full size and mapped MAP_SHARED for reading.  A control file beside it
 * holds a header (magic, version, sizes, the content's validators, a header
 * checksum), one bit per block and one xxh3-64 per block.  rf_write() puts
 * bytes into the file with pwrite(2), and for every block the write completes
 * it hashes the block, stores the hash and only then sets the block's bit
 * (release order).  A process killed at any instant therefore leaves set bits
 * that describe bytes already in the page cache.  Power loss can reorder
 * write-back of the two files; the stored hashes let the caller verify blocks
 * (rf_verify) after an unclean stop.
 *
 * Why pwrite and not a copy into the map: a store into a page of the map that
 * is not yet cached faults, and the kernel zeroes the page before the copy
 * overwrites it; pwrite of whole pages skips both.  Small pieces (libcurl hands
 * the body over in 16 KiB calls)
 * would pay a system call each, so they are staged: a piece that continues
 * where a staged run ends is appended to it in memory, and the run goes to
 * the file in one pwrite when it is full, when a write overlaps it, when the
 * stages run out, or on rf_drain() (which every query and rf_flush call
 * first).  Staged bytes are not in the file, so they mark nothing: a kill
 * loses them and the invariant holds.  The stage buffers are the one
 * allocation the core makes itself (lazily, freed by finish/discard/close).
 * benchmarks/bench_core.py, 1 GiB in 16 KiB pieces on ext4: 7.9 GB/s staged,
 * 3.9 unstaged, 6.7 for a Python mmap slice assignment.
 *
 * Durability.  With RF_OPEN_DIRECT whole pages reach the disk as they are written
 * and rf_finish(durable) fsyncs the rest before the rename.  With RF_OPEN_WRITEBACK
 * the data stays in the page cache, which outlives the process: a kill -9 loses no
 * marked block.  A power loss may lose any of them, in any order, so the control
 * file records the boot it was last opened in (rf_boot): opened in another boot,
 * every marked block is hashed again and the blocks that fail are cleared before
 * anything trusts them.  rf_checkpoint hands a writer thread the start of the disk's
 * write-back of both files (sync_file_range, never waited for) or, durable, fdatasync
 * of the data then the bitmap, and returns at once.  The caller paces it (every few
 * seconds): started every 32 MiB, write-back made a 1 GiB download from loopback twice
 * as long on a 2-core VM (its submission and the disk's work compete with receiving),
 * where the kernel's own write-back runs after the download.
 *
 * Which parts of a block have been written is tracked in memory only, in a
 * small pool of interval sets ("slots").  A block whose pieces arrive so
 * scattered that they do not fit a slot is simply not marked: the tracker may
 * under-report, never over-report.
 *
 * No policy lives here: what to fetch, retries and states are the caller's, and
 * so are the three paths (partial, control, the control file's temporary name)
 * and the stage sizes, stage memory and writer threads (rf_tuning).
 * Every function returns 0 (or a count) on success and -errno or one of the
 * RF_E_* codes below on failure.  The caller owns every buffer: the rf_file
 * struct and the workspace sized by rf_workspace_size().
 */
#ifndef BGT_RANGEFILE_H
#define BGT_RANGEFILE_H

#include <stddef.h>
#include <stdint.h>

#include "dio.h"

#define RF_OK 0
#define RF_E_FORMAT (-5001)     /* not a control file of ours (magic) */
#define RF_E_VERSION (-5002)    /* our control file, another format version */
#define RF_E_CORRUPT (-5003)    /* header checksum does not match */
#define RF_E_TRUNCATED (-5004)  /* control file shorter/longer than its header says */
#define RF_E_MISMATCH (-5005)   /* size or block size differ, or data file missing */
#define RF_E_RANGE (-5006)      /* offset/length outside the file */
#define RF_E_INCOMPLETE (-5007) /* finish() before every block is complete */
#define RF_E_ARG (-5008)        /* bad argument (block size, path length...) */
#define RF_E_CLOSED (-5009)     /* the file was finished, discarded or closed */
#define RF_E_FOREIGN (-5010)   /* control or partial file of another user, or writable by others */

#define RF_OPEN_CREATE 1   /* create (or start over) when no control file exists */
#define RF_OPEN_UNSTAGED 2 /* every rf_write is its own pwrite: no staging of small pieces */
#define RF_OPEN_DIRECT 4   /* whole pages go to the disk with O_DIRECT, from writer threads */
#define RF_OPEN_WRITEBACK 8 /* runs go to the page cache from the writer threads (see
                               Durability below) */

#define RF_MIN_BLOCK_SHIFT 9
#define RF_MAX_BLOCK_SHIFT 30
#define RF_ETAG_MAX 256
#define RF_LM_MAX 128
#define RF_PATH_MAX 4096
#define RF_BOOT_MAX 63 /* bytes of a boot id (Linux: 36) */

typedef struct rf_header rf_header;
typedef struct rf_slot rf_slot;

/* How a file stages and writes its pieces: the caller's choice (engine/_disk/core.py
 * fills it from TransferConfig), checked by rf_open (RF_E_ARG when out of range).
 *
 * stage_size: a piece under it is staged, runs end at its multiples, a write to the
 *   page cache goes in pieces of it, and it is a threaded file's smallest run (a
 *   power of two, DIO_ALIGN to RF_MAX_STAGE_SIZE).
 * max_stage_size: a threaded file's largest run: a run is a block, within
 *   [stage_size, max_stage_size] (a power of two).
 * stage_memory: bytes every threaded file of the process may hold in stages, shared
 *   evenly by those open: a small share means smaller runs (down to stage_size), and a
 *   file with none writes through the page cache.  Each file holds the process to its
 *   own figure.
 * stages, threaded_stages: runs a file gathers at once (1..RF_MAX_STAGES), through the
 *   page cache from the caller's thread, or with the writer threads.
 * writer_threads: the process keeps at least this many writer threads (dio_want). */
typedef struct {
    uint32_t stage_size;
    uint32_t max_stage_size;
    uint64_t stage_memory;
    uint32_t stages;
    uint32_t threaded_stages;
    uint32_t writer_threads;
} rf_tuning;

#define RF_MAX_STAGES 32 /* one bit a stage in dstage_collect's `passed` */
#define RF_MAX_STAGE_SIZE (64u << 20)

typedef struct {
    uint8_t *buf;     /* allocated on first use */
    uint64_t offset;  /* where the first byte held goes in the file */
    uint32_t len;     /* 0 when the stage holds nothing */
    uint32_t used_at; /* for least-recently-used eviction */
    uint32_t lead;    /* direct mode: the bytes sit at buf + lead, lead = offset % 4096 */
    uint32_t cap;     /* direct mode: runs end at multiples of this (stage_size or less) */
    int writing;      /* direct mode: `job` is with the writer threads */
    uint64_t hash;    /* direct mode: the xxh3 of a run that is one whole block, taken by
                         the writer thread (job.before set) */
    dio_job job;
} rf_stage;

typedef struct {
    uint64_t size;           /* bytes in the complete file */
    uint64_t block_size;
    uint64_t nblocks;
    uint64_t bytes_complete; /* bytes inside complete blocks */
    uint64_t bytes_written;  /* every byte passed to rf_write, for progress */
    uint32_t block_shift;
    int staged;              /* 1 when small pieces are staged (not RF_OPEN_UNSTAGED) */
    int direct;              /* 1 when whole pages bypass the page cache (RF_OPEN_DIRECT,
                                and the file system took O_DIRECT) */
    int threaded;            /* 1 when runs are written by the writer threads (direct, or
                                RF_OPEN_WRITEBACK): the engine thread only copies a piece */
    int created;             /* 1 when rf_open started a new file */
    int open;
    uint8_t *data;           /* the mapping of the partial file (NULL when size 0) */
    char etag[RF_ETAG_MAX + 1];
    char last_modified[RF_LM_MAX + 1];
    /* private */
    int data_fd;
    int ctl_fd;
    uint8_t *ctl;
    size_t ctl_len;
    rf_header *hdr;
    uint8_t *bitmap;
    uint64_t *hashes;
    int32_t *slot_of;
    rf_slot *slots;
    uint32_t nslots;
    uint32_t slot_cursor;
    int direct_fd;           /* -1 unless direct */
    rf_tuning tune;          /* as rf_open was given it */
    uint32_t nstages;        /* tune.stages, or tune.threaded_stages when threaded */
    uint32_t stage_size;     /* threaded: the block size, within [tune.stage_size,
                                tune.max_stage_size] */
    uint32_t inflight;       /* direct stages with the writer threads */
    uint64_t stage_bytes;    /* direct stage buffers this file holds */
    rf_stage stages[RF_MAX_STAGES];
    uint32_t stage_clock;
    int writeback;           /* RF_OPEN_WRITEBACK */
    int wb_busy;             /* `wb` is with the writer threads */
    dio_job wb;              /* the one write-back or checkpoint in flight */
    char data_path[RF_PATH_MAX];
    char ctl_path[RF_PATH_MAX];
} rf_file;

size_t rf_workspace_size(uint64_t size, uint32_t block_shift);
int rf_peek(const char *ctl_path, uint64_t *size, uint32_t *block_shift);
int rf_open(rf_file *f, void *workspace, size_t workspace_len,
            const char *data_path, const char *ctl_path, const char *ctl_tmp_path,
            uint64_t size, uint32_t block_shift, const char *etag,
            const char *last_modified, int flags, const rf_tuning *tuning);
int64_t rf_write(rf_file *f, uint64_t offset, const uint8_t *buf, size_t len);
int64_t rf_drain(rf_file *f);
int64_t rf_reap(rf_file *f);
int64_t rf_ranges(rf_file *f, uint64_t *pairs, size_t cap_pairs);
int rf_next_missing(rf_file *f, uint64_t from, uint64_t *start, uint64_t *len);
int rf_is_complete(rf_file *f, uint64_t offset, uint64_t len);
int64_t rf_verify(rf_file *f);
int rf_flush(rf_file *f, int durable);
int rf_checkpoint(rf_file *f, int durable);
int64_t rf_boot(rf_file *f, const char *boot_id);
int rf_finish(rf_file *f, const char *final_path, int durable);
int rf_discard(rf_file *f);
int rf_close(rf_file *f);

#endif
