/*
 * bench_proc.h - the processes meshsync-bench starts: the temporary
 * directory, redis-server (Unix socket plus a free loopback port),
 * meshsyncd sidecars, forked children (the echo server), CPU pinning,
 * peak RSS, and the SIGINT/SIGTERM handler that kills every child.
 *
 * Every child is registered when started and unregistered when reaped,
 * so the signal handler can kill whatever still runs. Bench process only,
 * single-threaded.
 */
#ifndef BENCH_PROC_H
#define BENCH_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#include "bench_wire.h"

#define BENCH_PATH_MAX 108 /* what a Unix socket address can hold */

/* The bench's private redis-server. */
typedef struct bench_redis_s {
    pid_t pid;
    int port;                     /* loopback TCP port, never 6379 */
    char sock[BENCH_PATH_MAX];    /* <dir>/redis.sock */
    char url[BENCH_PATH_MAX + 8]; /* unix://<dir>/redis.sock */
    redisContext *ctl;            /* a synchronous context for setup */
} bench_redis_t;

/* One meshsyncd process. */
typedef struct bench_sidecar_s {
    pid_t pid; /* 0 when not running */
    char name[32];
    char sock[BENCH_PATH_MAX];
    char cache[BENCH_PATH_MAX];
    char log[BENCH_PATH_MAX];
    int64_t spawn_ns; /* CLOCK_MONOTONIC just before fork() */
    /* The last bench_sidecar_wait_ready(): health requests, the slowest. */
    unsigned health_calls;
    int64_t health_worst_ns;
} bench_sidecar_t;

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t bench_now_ns(void);

/* Sleeps until the CLOCK_MONOTONIC instant at_ns (no drift). */
void bench_sleep_until(int64_t at_ns);

/* --- signals, children, pinning ---------------------------------------- */

/*
 * Installs the SIGINT/SIGTERM/SIGHUP handler (it SIGKILLs every registered
 * child and sets the interrupted flag; without SA_RESTART, so blocking
 * calls return EINTR) and ignores SIGPIPE.
 */
void bench_proc_signals(void);

/* True once one of those signals arrived. */
bool bench_proc_interrupted(void);

/* Pins the calling process to cpu (a negative cpu: no pinning). */
int bench_proc_pin(int cpu);

/*
 * fork(): in the child (0 returned), pinned to cpu, killed when the bench
 * dies; in the parent, the child's pid, registered. Negative on failure.
 */
pid_t bench_proc_fork(int cpu);

/*
 * Starts path with argv (NULL-terminated, argv[0] included) pinned to
 * cpu, its stdout and stderr appended to log_path. Returns the pid
 * (registered) or a negative code.
 */
pid_t bench_proc_spawn(const char *path, char *const *argv, int cpu,
                       const char *log_path);

/* True while pid has not exited (reaps it if it has; never blocks). */
bool bench_proc_alive(pid_t pid);

/*
 * Sends sig and waits up to timeout_ms for pid to exit, then SIGKILL.
 * Reaps and unregisters it. Returns 0 when it exited with status 0
 * within the time, else a negative code.
 */
int bench_proc_stop(pid_t pid, int sig, int timeout_ms);

/* CPU time pid's main thread has used, in ns (schedstat), or negative. */
int64_t bench_proc_cpu_ns(pid_t pid);

/* VmHWM of pid in KiB (peak RSS), or a negative code. */
long bench_proc_hwm_kib(pid_t pid);

/* --- the directory ------------------------------------------------------ */

/* Creates $TMPDIR/meshsync-bench-XXXXXX (or under /tmp) into dir. */
int bench_proc_dir_create(char *dir, size_t size);

/* Removes dir and everything in it. */
void bench_proc_dir_remove(const char *dir);

/* Writes <dir>/<name> into out; negative when it does not fit. */
int bench_proc_path(const char *dir, const char *name, char *out, size_t size);

/* Prints the last bytes of a log file to stderr, for a failure report. */
void bench_proc_log_tail(const char *path, size_t bytes);

/* --- redis-server --------------------------------------------------------- */

/*
 * Starts redis-server on <dir>/redis.sock and a free port on 127.0.0.1
 * (found by binding port 0), without persistence, pinned to cpu; waits
 * (bounded) until it answers and connects r->ctl.
 */
int bench_redis_start(bench_redis_t *r, const char *dir, int cpu);

/* SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL; frees r->ctl. */
void bench_redis_stop(bench_redis_t *r);

/* --- meshsyncd --------------------------------------------------------------
 */

/*
 * Prepares s for a sidecar called name in dir (its socket, cache file and
 * log are <dir>/<name>.sock, .db and .log). Does not start it.
 */
int bench_sidecar_init(bench_sidecar_t *s, const char *dir, const char *name);

/*
 * The sidecars' scrub interval: a day. The scrub still runs (it scans
 * once when a sidecar takes its lease, at start), but its periodic full
 * pass (by default every 30 s; about 0.7 s of Redis CPU at 100k entries,
 * 7 s at 1M) would otherwise land in the middle of measurements.
 */
#define BENCH_SCRUB_INTERVAL "86400000"

/*
 * Starts meshsyncd --socket --cache --redis <url> --log-level warn
 * --scrub-interval-ms BENCH_SCRUB_INTERVAL, pinned to cpu; records
 * spawn_ns. Does not wait.
 */
int bench_sidecar_spawn(bench_sidecar_t *s, const char *redis_url, int cpu);

/*
 * Connects to the sidecar's socket, retrying every 1 ms while the daemon
 * runs, for at most timeout_ms.
 */
int bench_sidecar_connect(bench_sidecar_t *s, int timeout_ms, bench_conn_t *c);

/* Sends {id: 1, op: "health"}; the reply's "ready" says caught up. */
int bench_sidecar_send_health(bench_conn_t *c);

/*
 * Polls health every 2 ms (connecting every 1 ms until the socket takes
 * connections) until it says ready; *ready_ns is when that reply came.
 * Bounded by timeout_ms; fails early if the daemon exits.
 */
int bench_sidecar_wait_ready(bench_sidecar_t *s, int timeout_ms,
                             int64_t *ready_ns);

/*
 * Connects (retrying every 1 ms) and sends the frame req (a conn.get of a
 * known id) until a reply says ok: *served_ns is when it came. Bounded.
 */
int bench_sidecar_first_read(bench_sidecar_t *s, const char *req, size_t len,
                             int timeout_ms, int64_t *served_ns);

/*
 * SIGTERM and wait (bounded, then SIGKILL); 0 on a clean exit whose log
 * holds no sanitizer report.
 */
int bench_sidecar_stop(bench_sidecar_t *s);

/* Removes the sidecar's cache file (and its -wal, -shm, -lock). */
void bench_sidecar_remove_cache(const bench_sidecar_t *s);

#endif
