/*
 * filer: the metadata work on many small result files, in threads of its own.
 *
 * Theory of operation
 * -------------------
 * A mirror of small files spends most of its system time creating, fsyncing and
 * renaming files.  Done from Python threads, each of those calls gives up the GIL
 * and must take it back afterwards, waiting up to a switch interval (5 ms) behind
 * the engine loop: measured, a thread doing them next to a busy Python thread was
 * 60x slower.  Here they run in plain threads that never touch Python:
 *
 *   FL_PREPARE  a new partial file: when a control file exists the caller has a
 *               download to resume (result FL_RESUMABLE, nothing touched); else the
 *               partial file is created empty with O_EXCL (a stale one, or a planted
 *               link, is unlinked first) and the result is its descriptor.
 *   FL_FINISH   write the body the caller kept in memory, if any (fl_submit_data:
 *               the whole pages with O_DIRECT), fsync the partial file's descriptor
 *               and close it, rename the partial file onto the final name, fsync
 *               the directory: result 0.
 *
 * One "namer" thread does every create and rename, in submission order: they take
 * the directory's lock anyway, and threads contending for it only spin.  A create
 * completes at once.  A rename is complete once its directory is fsynced: a
 * "dirsyncer" thread takes every rename queued meanwhile and fsyncs each directory
 * they touched once, while the namer goes on creating files.  The fsyncs of file
 * data, which wait for the disk too, run in "syncer" threads in parallel (the block
 * layer merges concurrent flushes).
 *
 * Each job names a channel, its owner's (one per event loop): finished jobs queue
 * there, and the channel's eventfd becomes readable when the queue stops being
 * empty, so an event loop watches it like a socket and takes the whole queue in one
 * call.  A closed channel's jobs are undone as they finish (a created partial file
 * is closed and removed).  Results are a descriptor, 0, FL_RESUMABLE or -errno.
 * The filer lives as long as the process.
 */
#ifndef BGTRANSFER_FILER_H
#define BGTRANSFER_FILER_H

#include <stddef.h>
#include <stdint.h>

#define FL_PREPARE 1
#define FL_FINISH 2
#define FL_RESUMABLE (-100000)

typedef struct fl_filer fl_filer;
typedef struct fl_channel fl_channel;

/* A filer with ``syncers`` fsync threads (1..64), a namer and a dirsyncer; NULL on
 * failure. */
fl_filer *fl_new(int syncers);

/* A channel for finished jobs, and its eventfd; NULL on failure. */
fl_channel *fl_channel_new(void);
int fl_channel_fd(const fl_channel *ch);

/* The owner is gone: jobs still running are undone when they finish. */
void fl_channel_close(fl_filer *f, fl_channel *ch);

/* Queue a job.  PREPARE: a = partial path, b = control path, fd unused.
 * FINISH: a = partial path, b = final path, fd = the partial file (the filer closes
 * it, whatever happens).  0, or -ENAMETOOLONG / -ENOMEM / -EINVAL. */
int fl_submit(fl_filer *f, fl_channel *ch, int kind, uint64_t id, int fd, const char *a,
              const char *b);

/* FINISH with the last bytes of the body, [offset, offset + len) of the partial file:
 * the filer copies them, writes them (whole pages with O_DIRECT) before the fsync. */
int fl_submit_data(fl_filer *f, fl_channel *ch, int kind, uint64_t id, int fd, const char *a,
                   const char *b, const uint8_t *data, uint64_t len, uint64_t offset);

/* Finished jobs of ``ch``, without waiting: up to ``cap`` (id, result) pairs. */
int fl_take(fl_filer *f, fl_channel *ch, uint64_t *ids, int64_t *results, int cap);

#endif
