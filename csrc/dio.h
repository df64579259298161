/*
 * dio: the writer threads of the range-file core, and the one write that
 * sends whole pages past the page cache.
 *
 * Theory of operation
 * -------------------
 * A buffered write copies every byte into a page-cache page, and a fresh page
 * can cost far more than the copy: on a VM whose host takes freed memory back
 * (virtio-balloon free-page reporting) each one is a host fault, and the
 * fsync that makes the finished file durable writes it all out again at the
 * end.  O_DIRECT writes go from our buffer to the device and are durable data
 * when they return, but each one waits for the device, so they are made here,
 * by a few plain threads that never take the GIL, while the engine loop goes
 * on receiving.  dio_write() writes the whole pages of a run with O_DIRECT
 * and its ragged edges (and everything, when direct I/O is refused) through
 * the page cache: a page is written one way or the other, never both, so the
 * kernel keeps the two views coherent.
 *
 * A job is owned by its submitter until `done` reads 1 (acquire order): the
 * thread stores `result` first.  After fork() the child has no writer threads:
 * jobs in flight in the parent read as done with -ECANCELED there (their bytes
 * were never marked, so they are fetched again).
 */
#ifndef BGT_DIO_H
#define BGT_DIO_H

#include <stddef.h>
#include <stdint.h>

#define DIO_ALIGN 4096u
#define DIO_MAX_THREADS 64 /* writer threads a process may ask for (dio_want) */

/* What a job does.  DIO_WRITE: the run [offset, offset + len) of buf.  DIO_WRITEBACK:
 * starts the write-back of fd_buffered's dirty pages in [offset, offset + len) (len 0:
 * to the end), then of all of fd_direct's when >= 0, without waiting for the disk
 * (sync_file_range).  DIO_SYNC: fdatasync fd_buffered, then fd_direct when >= 0.  (For
 * these two fd_direct is a second file, a download's bitmap after its data.) */
#define DIO_WRITE 0
#define DIO_WRITEBACK 1
#define DIO_SYNC 2

typedef struct dio_job {
    struct dio_job *next;     /* queue link: the pool's */
    struct dio_job *all_next; /* every job in flight, for fork */
    struct dio_job *all_prev;
    int fd_direct;            /* -1: everything through fd_buffered */
    int fd_buffered;
    const uint8_t *buf;
    uint64_t offset;
    uint64_t len;
    uint32_t piece;           /* DIO_WRITE: see dio_write */
    int op;                   /* DIO_WRITE, DIO_WRITEBACK or DIO_SYNC */
    int result;               /* 0 or -errno, stored before done */
    int done;
    /* NULL, or run by the thread that writes the job, just before the write: work on
     * the buffer (a block's hash) that then costs the submitter's thread nothing. */
    void (*before)(struct dio_job *job);
} dio_job;

/* pwrite until all of buf is written (EINTR retried, a write of 0 is -EIO); 0 or -errno. */
int dio_pwrite_all(int fd, const uint8_t *buf, uint64_t len, uint64_t off);

/* Writes [offset, offset + len): whole pages through fd_direct when buf is aligned
 * like the file offset, the rest (or all, on EINVAL) through fd_buffered, in writes of
 * at most ``piece`` bytes (0: one write; see buffered_write in dio.c).  0 or -errno. */
int dio_write(int fd_direct, int fd_buffered, const uint8_t *buf, uint64_t offset, uint64_t len,
              uint32_t piece);

/* Opens ``path`` again for O_DIRECT writes, only if it is still the file ``fd`` has
 * open (same device and inode: a name swapped meanwhile gets no direct writes); -1
 * when refused or not the same file. */
int dio_open_same(const char *path, int fd);

/* The process keeps at least ``threads`` writer threads (1..DIO_MAX_THREADS): the most
 * any caller asked for, started on the next dio_submit.  0, or -EINVAL. */
int dio_want(int threads);

/* Queues a job for the writer threads (started on first use, as many as dio_want asked
 * for, at least one); when no thread can be started the job is written at once, in the
 * caller.  The job is done when done == 1. */
void dio_submit(dio_job *job);

/* Blocks until the job is done. */
void dio_wait(dio_job *job);

static inline int dio_done(const dio_job *job)
{
    return __atomic_load_n(&job->done, __ATOMIC_ACQUIRE);
}

#endif
