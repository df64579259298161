/*
 * rangefile: the result file of one download, written out of order by many
 * connections, and the control file that records which blocks are complete.
 *
 * Theory of operation
 * -------------------
 * The data lives in a partial file beside the final name, preallocated to the
 * full size and mapped MAP_SHARED.  A control file beside it holds a header
 * (magic, version, sizes, the content's validators, a header checksum), one
 * bit per block and one xxh3-64 per block.  rf_write() copies bytes in, and
 * for every block the write completes it hashes the block, stores the hash
 * and only then sets the block's bit (release order).  A process killed at
 * any instant therefore leaves set bits that describe bytes already in the
 * page cache.  Power loss can reorder write-back of the two files; the stored
 * hashes let the caller verify blocks (rf_verify) after an unclean stop.
 *
 * Which parts of a block have been written is tracked in memory only, in a
 * small pool of interval sets ("slots").  A block whose pieces arrive so
 * scattered that they do not fit a slot is simply not marked: the tracker may
 * under-report, never over-report.
 *
 * No policy lives here: what to fetch, retries and states are the caller's.
 * Every function returns 0 (or a count) on success and -errno or one of the
 * RF_E_* codes below on failure.  The caller owns every buffer: the rf_file
 * struct and the workspace sized by rf_workspace_size().
 */
#ifndef BGT_RANGEFILE_H
#define BGT_RANGEFILE_H

#include <stddef.h>
#include <stdint.h>

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

#define RF_OPEN_CREATE 1   /* create (or start over) when no control file exists */
#define RF_OPEN_PWRITE 2   /* write with pwrite(2) instead of a copy into the map */

#define RF_MIN_BLOCK_SHIFT 9
#define RF_MAX_BLOCK_SHIFT 30
#define RF_ETAG_MAX 256
#define RF_LM_MAX 128
#define RF_PATH_MAX 4096

typedef struct rf_header rf_header;
typedef struct rf_slot rf_slot;

typedef struct {
    uint64_t size;           /* bytes in the complete file */
    uint64_t block_size;
    uint64_t nblocks;
    uint64_t bytes_complete; /* bytes inside complete blocks */
    uint64_t bytes_written;  /* every byte passed to rf_write, for progress */
    uint32_t block_shift;
    int use_pwrite;          /* 1 when writes go through pwrite (asked, or sparse file) */
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
    char data_path[RF_PATH_MAX];
    char ctl_path[RF_PATH_MAX];
} rf_file;

size_t rf_workspace_size(uint64_t size, uint32_t block_shift);
int rf_peek(const char *ctl_path, uint64_t *size, uint32_t *block_shift);
int rf_open(rf_file *f, void *workspace, size_t workspace_len,
            const char *data_path, const char *ctl_path, uint64_t size,
            uint32_t block_shift, const char *etag, const char *last_modified,
            int flags);
int64_t rf_write(rf_file *f, uint64_t offset, const uint8_t *buf, size_t len);
int64_t rf_ranges(rf_file *f, uint64_t *pairs, size_t cap_pairs);
int rf_next_missing(rf_file *f, uint64_t from, uint64_t *start, uint64_t *len);
int rf_is_complete(rf_file *f, uint64_t offset, uint64_t len);
int64_t rf_verify(rf_file *f);
int rf_flush(rf_file *f, int durable);
int rf_finish(rf_file *f, const char *final_path);
int rf_discard(rf_file *f);
int rf_close(rf_file *f);

#endif
