/* dio: see dio.h for the theory of operation. */
#define _GNU_SOURCE
#include "dio.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
static dio_job *head, *tail;
static dio_job *all; /* queued or being written */
static int started;  /* threads running; 0 again in a forked child */
static int wanted = 1; /* the most dio_want asked for */
static int atfork_set;

int dio_pwrite_all(int fd, const uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, (size_t)len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        buf += n;
        len -= (uint64_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Through the page cache in pieces of at most ``piece`` bytes (the caller's stage
 * size): one pwrite of a whole 1 MiB run cost two to three times the system time of
 * the same bytes in 64 KiB pieces, the kernel then making folios that large for the
 * page cache. */
static int buffered_write(int fd, const uint8_t *buf, uint64_t len, uint64_t off, uint32_t piece)
{
    uint64_t step = piece ? piece : (len ? len : 1);
    for (uint64_t at = 0; at < len; at += step) {
        uint64_t n = len - at < step ? len - at : step;
        int rc = dio_pwrite_all(fd, buf + at, n, off + at);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int dio_write(int fd_direct, int fd_buffered, const uint8_t *buf, uint64_t offset, uint64_t len,
              uint32_t piece)
{
    uint64_t end = offset + len;
    uint64_t a = (offset + DIO_ALIGN - 1) & ~(uint64_t)(DIO_ALIGN - 1);
    uint64_t b = end & ~(uint64_t)(DIO_ALIGN - 1);
    if (fd_direct < 0 || a >= b || ((uintptr_t)(buf + (a - offset)) & (DIO_ALIGN - 1)) != 0)
        return buffered_write(fd_buffered, buf, len, offset, piece);
    int rc = 0;
    if (a > offset && (rc = dio_pwrite_all(fd_buffered, buf, a - offset, offset)) != 0)
        return rc;
    rc = dio_pwrite_all(fd_direct, buf + (a - offset), b - a, a);
    if (rc == -EINVAL) /* this file system or device wants another alignment */
        rc = buffered_write(fd_buffered, buf + (a - offset), b - a, a, piece);
    if (rc == 0 && end > b)
        rc = dio_pwrite_all(fd_buffered, buf + (b - offset), end - b, b);
    return rc;
}

int dio_open_same(const char *path, int fd)
{
    int dfd = open(path, O_WRONLY | O_DIRECT | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    struct stat a, b;
    if (fstat(fd, &a) != 0 || fstat(dfd, &b) != 0 || a.st_dev != b.st_dev ||
        a.st_ino != b.st_ino) {
        close(dfd);
        return -1;
    }
    return dfd;
}

static int run(dio_job *j)
{
    if (j->op == DIO_WRITEBACK) {
        const int how = SYNC_FILE_RANGE_WRITE;
        if (sync_file_range(j->fd_buffered, (off64_t)j->offset, (off64_t)j->len, how) != 0)
            return -errno;
        return j->fd_direct < 0 || sync_file_range(j->fd_direct, 0, 0, how) == 0 ? 0 : -errno;
    }
    if (j->op == DIO_SYNC) {
        if (fdatasync(j->fd_buffered) != 0)
            return -errno;
        return j->fd_direct < 0 || fdatasync(j->fd_direct) == 0 ? 0 : -errno;
    }
    if (j->before)
        j->before(j);
    return dio_write(j->fd_direct, j->fd_buffered, j->buf, j->offset, j->len, j->piece);
}

static void unlink_all(dio_job *j)
{
    if (j->all_prev)
        j->all_prev->all_next = j->all_next;
    else
        all = j->all_next;
    if (j->all_next)
        j->all_next->all_prev = j->all_prev;
}

static void *writer(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (head == NULL)
            pthread_cond_wait(&work, &lock);
        dio_job *j = head;
        head = j->next;
        if (head == NULL)
            tail = NULL;
        pthread_mutex_unlock(&lock);
        int rc = run(j);
        pthread_mutex_lock(&lock);
        unlink_all(j);
        j->result = rc;
        __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&finished);
    }
    return NULL;
}

/* In the child of a fork: no thread writes what the parent had in flight. */
static void after_fork_child(void)
{
    pthread_mutex_init(&lock, NULL);
    pthread_cond_init(&work, NULL);
    pthread_cond_init(&finished, NULL);
    for (dio_job *j = all; j != NULL; j = j->all_next) {
        j->result = -ECANCELED;
        __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    }
    all = head = tail = NULL;
    started = 0;
}

int dio_want(int threads)
{
    if (threads < 1 || threads > DIO_MAX_THREADS)
        return -EINVAL;
    pthread_mutex_lock(&lock);
    if (threads > wanted)
        wanted = threads;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Called with the lock held: starts threads up to `wanted`; how many run. */
static int start_threads(void)
{
    if (!atfork_set) {
        if (pthread_atfork(NULL, NULL, after_fork_child) != 0)
            return 0;
        atfork_set = 1;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    sigset_t every, old;
    sigfillset(&every);
    pthread_sigmask(SIG_SETMASK, &every, &old); /* signals stay with the interpreter */
    for (; started < wanted; started++) {
        pthread_t t;
        if (pthread_create(&t, &attr, writer, NULL) != 0)
            break;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return started;
}

void dio_submit(dio_job *job)
{
    job->done = 0;
    job->result = 0;
    job->next = NULL;
    pthread_mutex_lock(&lock);
    if (started < wanted && start_threads() == 0) {
        pthread_mutex_unlock(&lock);
        job->result = run(job);
        __atomic_store_n(&job->done, 1, __ATOMIC_RELEASE);
        return;
    }
    job->all_prev = NULL;
    job->all_next = all;
    if (all)
        all->all_prev = job;
    all = job;
    if (tail)
        tail->next = job;
    else
        head = job;
    tail = job;
    pthread_mutex_unlock(&lock);
    pthread_cond_signal(&work);
}

void dio_wait(dio_job *job)
{
    if (dio_done(job))
        return;
    pthread_mutex_lock(&lock);
    while (!dio_done(job))
        pthread_cond_wait(&finished, &lock);
    pthread_mutex_unlock(&lock);
}
