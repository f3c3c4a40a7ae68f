/*
 * bench_run.h - meshsync-bench's measurement drivers: one client sending
 * one request at a time, many clients keeping several requests in flight
 * each (one poll() loop), and the convergence runs (writes at a steady
 * rate on one socket, their arrival watched on another, in one ppoll()
 * loop). Requests come pre-encoded from a pool (bench_req.h); timed
 * loops neither allocate nor print. Bench process, single-threaded.
 */
#ifndef BENCH_RUN_H
#define BENCH_RUN_H

#include <stddef.h>
#include <stdint.h>

#include "bench_req.h"
#include "bench_stats.h"
#include "bench_wire.h"

/* What a reply must be to count as a success. */
typedef enum bench_check_e {
    BENCH_CHECK_OK,    /* ok (frames: "ok": true; RESP: no error) */
    BENCH_CHECK_VALUE, /* ok with a string value (an HGET hit) */
    BENCH_CHECK_JSON   /* a string value that Jansson decodes (then frees) */
} bench_check_t;

/* What a run measured besides its latencies. */
typedef struct bench_tally_s {
    size_t done;       /* replies taken after the warm-up */
    unsigned failures; /* replies that failed the check */
    double ops;        /* replies per second after the warm-up */
} bench_tally_t;

/*
 * One request at a time on c: warmup requests unrecorded, then count
 * requests each timed from before its send to after its reply's check.
 * Requests are taken from reqs in order, cycling. Fails (a negative code)
 * on an I/O error or a timeout; failed checks only count.
 */
int bench_run_serial(bench_conn_t *c, const bench_reqs_t *reqs, size_t warmup,
                     size_t count, bench_check_t check, bench_samples_t *lat,
                     bench_tally_t *t);

/*
 * nconns clients with depth requests in flight each, warmup + count
 * requests in all; a reply's latency is from its request's send (the
 * replies of one client come in request order).
 */
int bench_run_pipelined(bench_conn_t *conns, int nconns, int depth,
                        const bench_reqs_t *reqs, size_t warmup, size_t count,
                        bench_check_t check, bench_samples_t *lat,
                        bench_tally_t *t);

/* A convergence run: count writes at one every interval_ns. */
typedef struct bench_conv_s {
    bench_conn_t *writer;  /* meshsync: sidecar A; pub/sub: the publisher */
    bench_conn_t *watcher; /* meshsync: a watch-all session on sidecar B */
    const bench_reqs_t *reqs;
    size_t count;
    int64_t interval_ns;
    int max_inflight;
    uint64_t base; /* meshsync: the first write's expected version */
    /* results */
    size_t arrived;    /* writes whose arrival was seen */
    size_t negatives;  /* meshsync: arrivals before the write's reply */
    size_t strays;     /* arrivals that matched no write of the run */
    unsigned failures; /* failed writes, missing arrivals, resets */
    double rate;       /* writes per second actually sent */
} bench_conv_t;

/*
 * meshsync: writes conn.set through the writer; the latency of each is
 * the push for its version arriving at the watcher minus its reply
 * arriving at the writer (negatives clamped to 0 and counted).
 */
int bench_run_converge(bench_conv_t *cv, bench_samples_t *lat);

/*
 * Redis pub/sub: PUBLISHes through the writer (payloads numbered from 0);
 * the latency of each is its message's arrival at the subscribed watcher
 * minus its PUBLISH's send.
 */
int bench_run_pubsub(bench_conv_t *cv, bench_samples_t *lat);

#endif
