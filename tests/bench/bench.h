/*
 * bench.h - meshsync-bench's run: its options and the state every step
 * shares (the temporary directory, redis-server, the sidecars, the echo
 * child, the result table), and the steps themselves: bench_steps.c
 * holds measurements 1 to 5 (baselines, reads, writes, convergence),
 * bench_scale.c measurement 6 (scale, restarts, resync), bench.c the
 * options, the order of the steps, the output and the targets. Bench
 * process, single-threaded.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench_proc.h"
#include "bench_req.h"
#include "bench_stats.h"

#define BENCH_SIZES_MAX 8

typedef enum bench_pin_e {
    BENCH_PIN_SAME,  /* everything on CPU 0 */
    BENCH_PIN_SPLIT, /* the bench on CPU 0, every server on CPU 1 */
    BENCH_PIN_NONE
} bench_pin_t;

typedef struct bench_opts_s {
    bool quick;
    const char *out_dir;
    size_t entries; /* connections of the main data set (rooms: a tenth) */
    bench_pin_t pin;
    size_t value_bytes;
    size_t sizes[BENCH_SIZES_MAX];
    size_t nsizes;
    size_t samples; /* latency samples per measurement */
} bench_opts_t;

typedef struct bench_s {
    bench_opts_t o;
    int cpu_client; /* the bench's CPU, -1 when not pinned */
    int cpu_server; /* redis-server's, the sidecars' and the echo's */
    char dir[BENCH_PATH_MAX];
    bench_redis_t redis;
    bench_script_t script;
    bench_table_t table;
    bench_samples_t lat;
    unsigned failures;
    bench_sidecar_t a; /* the sidecar measured */
    bench_sidecar_t b; /* the watching sidecar of the convergence run */
    pid_t echo_pid;
    pid_t scale; /* the sidecar of the scale step running now */
    char echo_sock[BENCH_PATH_MAX];
    size_t conns; /* the main data set */
    size_t rooms;
    size_t get_req_len;   /* a conn.get request frame's body */
    size_t get_reply_len; /* a conn.get hit reply frame's body */
    uint64_t rng;
    double merge_trips; /* evalsha calls per merge */
    double trips_raw;   /* the same, without the background subtracted */
} bench_t;

/*
 * Pipelined runs take this many times --samples requests: at a million
 * replies a second, fewer would be over in milliseconds.
 */
#define BENCH_PIPE_FACTOR 10

/* The pool size for random requests: enough to defeat any ordering. */
#define BENCH_POOL_MAX 131072

/* Wait bounds: a 1M load or resync may take minutes. */
#define BENCH_READY_MS (600 * 1000)

/*
 * Waits (bounded) until redis-server, the sidecars and the echo child
 * have been idle for a moment, so that work left over from a start (a
 * scrub pass, a checkpoint) does not land in the next measurement.
 */
void bench_settle(bench_t *b, const char *before);

/* What the machine was doing when a measurement began. */
typedef struct bench_probe_s {
    int64_t t_ns;
    int64_t busy_ns;    /* all CPUs' busy time (/proc/stat) */
    int64_t bench_ns;   /* the bench's CPU time */
    int64_t servers_ns; /* redis-server's, the sidecars', the echo's */
} bench_probe_t;

/*
 * Around a measurement (outside its timed loop): sets r->other_load, the
 * share of a CPU that processes outside the run used meanwhile (another
 * benchmark or build on the machine makes the figures noisy), and, when
 * ops > 0, r->server_us: the servers' CPU time per operation.
 */
void bench_probe_begin(bench_t *b, bench_probe_t *p);
void bench_probe_end(bench_t *b, const bench_probe_t *p, bench_row_t *r,
                     size_t ops);

/* Records a failure: prints it and counts it (the run exits non-zero). */
void bench_fail(bench_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A pseudo-random index below n (xorshift; reproducible runs). */
size_t bench_random(bench_t *b, size_t n);

/* Warm-up requests before a measurement of count samples. */
size_t bench_warmup(size_t count);

/* Pool of conn.get (or room.get) for random ids below n, offset by from. */
int bench_pool_gets(bench_t *b, bench_reqs_t *r, bench_kind_t kind, size_t n,
                    size_t from, size_t size);

/* --- measurements 1 to 5 (bench_steps.c) ------------------------------- */

/* Loads the main data set and starts sidecar A (a cold full resync). */
int bench_step_main(bench_t *b);

/* Baseline A: the echo child, 1 client and 16 x 16. */
int bench_step_echo(bench_t *b);

/* Baseline B: HGET over the Unix socket, TCP, with JSON; 16 x 16. */
int bench_step_hget(bench_t *b);

/* meshsync reads on sidecar A. */
int bench_step_reads(bench_t *b);

/* meshsync writes vs raw EVALSHA; evalsha calls per merge. */
int bench_step_writes(bench_t *b);

/* Convergence: A to B through meshsync, vs Redis pub/sub. */
int bench_step_converge(bench_t *b);

/* Stops the echo child and sidecars A and B. */
void bench_step_stop_main(bench_t *b);

/* --- measurement 6 (bench_scale.c) ------------------------------------------
 */

/* Load, resync, reads, warm restart and RSS at size; resync under reads
 * too when largest. */
int bench_step_scale(bench_t *b, size_t size, bool largest);

#endif
