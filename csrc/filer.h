/*
 * filer: the metadata work on many small result files, in threads of its own.
 *
 * Theory of operation
 * -------------------
 * A mirror of small files spends most of its system time creating, fsyncing and
 * renaming files.  Done from Python threads, each of those calls gives up the GIL
 * and must take it back afterwards, waiting up to a switch interval (5 ms) behind
 * the engine loop: measured, a thread doing them next to a busy Python thread was
 * 60x slower.  Here they run in plain threads that never touch Python.
 *
 * A job finishes a small result file: write the body the caller kept in memory, if
 * any (the whole pages with O_DIRECT), fsync the partial file and close it, rename
 * it onto the final name, fsync the directory: result 0 (without FL_DURABLE, the same
 * through the page cache and without either fsync).  Without a descriptor the
 * partial file is first created here, empty, with O_EXCL (a stale one, or a planted
 * link, is unlinked first and never written through, and so is the one other file the
 * caller names for that case): a small download keeps its body in memory and needs no
 * file until it ends, so the loop never waits for one.  Which files to make, and which
 * to remove, are the caller's: the filer knows no name of its own.
 *
 * One "namer" thread does every create and rename, in submission order: they take
 * the directory's lock anyway, and threads contending for it only spin.  A rename
 * is complete once its directory is fsynced: a "dirsyncer" thread takes every
 * rename queued meanwhile and fsyncs each directory they touched once, while the
 * namer goes on with the next files.  The writes and fsyncs of file data, which
 * wait for the disk too, run in "syncer" threads in parallel (the block layer merges
 * concurrent flushes); a small body that is not to be durable is written by the
 * namer itself, between the create and the rename, since handing it to a syncer and
 * back would cost more than the copy into the page cache.
 *
 * Each job names a channel, its owner's (one per event loop): finished jobs queue
 * there, and the channel's eventfd becomes readable when the queue stops being
 * empty, so an event loop watches it like a socket and takes the whole queue in one
 * call.  A closed channel's jobs still finish (the file they make is whole), and
 * are freed.  A job that fails removes the partial file it created.  Results are 0
 * or -errno.  The filer lives as long as the process.
 */
#ifndef BGTRANSFER_FILER_H
#define BGTRANSFER_FILER_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_filer fl_filer;
typedef struct fl_channel fl_channel;

#define FL_MAX_SYNCERS 64

/* A filer with ``syncers`` fsync threads (1..FL_MAX_SYNCERS), a namer and a dirsyncer;
 * a body goes to the page cache in writes of at most ``piece`` bytes.  NULL on
 * failure. */
fl_filer *fl_new(int syncers, uint32_t piece);

/* Starts fsync threads until ``syncers`` run (never fewer than now): how many run, or
 * -EINVAL / -errno when none could be started. */
int fl_syncers(fl_filer *f, int syncers);

/* A channel for finished jobs, and its eventfd; NULL on failure. */
fl_channel *fl_channel_new(void);
int fl_channel_fd(const fl_channel *ch);

/* The owner is gone: jobs still running finish, and are freed. */
void fl_channel_close(fl_filer *f, fl_channel *ch);

/* flags of fl_finish: the file is on the disk (its data written with O_DIRECT and
 * fsync'd, its directory fsync'd after the rename) before the job is done.  Without
 * it the body goes to the page cache and nothing waits for the disk: a killed process
 * loses nothing, a power loss may. */
#define FL_DURABLE 1

/* Queue a job: finish ``part`` as ``final``; ``fd`` is the partial file (the filer
 * closes it, whatever happens), or -1 to create it.  ``stale``: NULL, or a file to
 * unlink when a stale ``part`` is found while creating it.  ``data``: the last bytes of
 * the body, [offset, offset + len) of the file (offset 0 without a descriptor), copied
 * before this returns and written before the fsync.  0, or -ENAMETOOLONG / -ENOMEM /
 * -EINVAL. */
int fl_finish(fl_filer *f, fl_channel *ch, uint64_t id, int fd, const char *part,
              const char *final, const char *stale, const uint8_t *data, uint64_t len,
              uint64_t offset, int flags);

/* Finished jobs of ``ch``, without waiting: up to ``cap`` (id, result) pairs. */
int fl_take(fl_filer *f, fl_channel *ch, uint64_t *ids, int64_t *results, int cap);

#endif
