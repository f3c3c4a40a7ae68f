/*
 * bench_steps.c - measurements 1 to 5 of meshsync-bench (see bench.h):
 * the main data set and sidecar A, baseline A (echo), baseline B (HGET),
 * meshsync reads, writes against raw EVALSHA, and convergence against
 * Redis pub/sub. Entry points: bench_step_main(), bench_step_echo(),
 * bench_step_hget(), bench_step_reads(), bench_step_writes(),
 * bench_step_converge(), bench_step_stop_main(). Bench process,
 * single-threaded.
 */
#include "bench.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench_echo.h"
#include "bench_load.h"
#include "bench_run.h"
#include "bench_wire.h"
#include "error.h"

#define CLIENTS       16
#define DEPTH         16
#define WRITE_POOL    65536
#define CONVERGE_RATE 5000
#define INFLIGHT_MAX  4
#define IDLE_WINDOW   500000000LL
#define PUSH_WAIT_MS  5000
#define CHANNEL       "meshsync-bench:converge"

/* Variants of the written values: each write step stores new values. */
enum { V_EVALSHA = 1, V_REPLACE, V_MERGE, V_DEEP, V_CONVERGE, V_PRIME };

static double seconds_between(int64_t from, int64_t to)
{
    return (double)(to - from) / 1e9;
}


static bench_row_t *value_row(bench_t *b, const char *name, double value,
                              const char *unit)
{
    bench_row_t *r = bench_table_add(&b->table, name, NULL);

    r->value = value;
    snprintf(r->unit, sizeof(r->unit), "%s", unit);
    return r;
}


/* Runs one unpipelined measurement into a row (and a CDF if cdf). */
static int measure_serial(bench_t *b, bench_conn_t *c, const bench_reqs_t *reqs,
                          bench_check_t check, const char *name,
                          const char *baseline, const char *cdf)
{
    bench_row_t *r = bench_table_add(&b->table, name, baseline);
    bench_tally_t t;
    bench_probe_t probe;
    int rc;

    bench_settle(b, name);
    bench_probe_begin(b, &probe);
    rc = bench_run_serial(c, reqs, bench_warmup(b->o.samples), b->o.samples,
                          check, &b->lat, &t);
    bench_probe_end(b, &probe, r, bench_warmup(b->o.samples) + t.done);

    bench_row_latency(r, &b->lat);
    r->ops = t.ops;
    r->failures = t.failures;
    if (rc < 0) {
        r->failures++;
        bench_fail(b, "%s: %s", name, ms_error_name(rc));
        return rc;
    }
    if (t.failures > 0)
        bench_fail(b, "%s: %u requests failed", name, t.failures);
    if (cdf != NULL)
        bench_cdf_add(&b->table, cdf, &b->lat);
    return 0;
}


/* Runs CLIENTS x DEPTH pipelined clients on the Unix socket path. */
static int measure_pipelined(bench_t *b, const char *path, bench_wire_t wire,
                             const bench_reqs_t *reqs, bench_check_t check,
                             const char *name, const char *baseline)
{
    bench_row_t *r = bench_table_add(&b->table, name, baseline);
    bench_conn_t conns[CLIENTS];
    bench_tally_t t = {0};
    bench_probe_t probe;
    int n = 0, rc = 0;

    r->pipelined = true;
    bench_settle(b, name);
    for (; n < CLIENTS && rc == 0; n++)
        rc = bench_conn_unix(&conns[n], path, wire);
    bench_probe_begin(b, &probe);
    if (rc == 0)
        rc = bench_run_pipelined(conns, CLIENTS, DEPTH, reqs,
                                 BENCH_PIPE_FACTOR * bench_warmup(b->o.samples),
                                 BENCH_PIPE_FACTOR * b->o.samples, check,
                                 &b->lat, &t);
    bench_probe_end(b, &probe, r,
                    BENCH_PIPE_FACTOR * bench_warmup(b->o.samples) + t.done);
    for (int i = 0; i < n; i++)
        bench_conn_close(&conns[i]);

    bench_row_latency(r, &b->lat);
    r->ops = t.ops;
    r->failures = t.failures + (rc < 0);
    snprintf(r->note, sizeof(r->note), "%d clients x %d in flight", CLIENTS,
             DEPTH);
    if (rc < 0)
        bench_fail(b, "%s: %s", name, ms_error_name(rc));
    else if (t.failures > 0)
        bench_fail(b, "%s: %u requests failed", name, t.failures);
    return rc;
}


/* --- the main data set and sidecar A ---------------------------------- */

/* The sizes of a conn.get hit's request and reply, for the echo. */
static int measure_get_sizes(bench_t *b)
{
    bench_reqs_t reqs;
    bench_conn_t c;
    bench_msg_t m = {0};
    size_t len;
    int rc;

    if ((rc = bench_pool_gets(b, &reqs, BENCH_CONN, b->conns, 0, 1024)) < 0)
        return rc;
    rc = bench_conn_unix(&c, b->a.sock, BENCH_WIRE_FRAME);
    if (rc == 0) {
        const char *req = bench_reqs_at(&reqs, 1000, &len);

        b->get_req_len = len - 4;
        if ((rc = bench_conn_send(&c, req, len)) == 0 &&
            (rc = bench_conn_recv(&c, &m)) == 0)
            rc = m.ok && m.len > 0 ? 0 : MS_EPROTO;
        b->get_reply_len = m.len;
        bench_conn_close(&c);
    }
    bench_reqs_free(&reqs);
    if (rc < 0)
        bench_fail(b, "conn.get on sidecar A failed: %s", ms_error_name(rc));
    return rc;
}


int bench_step_main(bench_t *b)
{
    int64_t t0 = bench_now_ns(), ready;
    bench_row_t *r;

    b->conns = b->o.entries;
    b->rooms = b->o.entries / 10;
    if (bench_load_entries(b->redis.ctl, &b->script, b->conns, b->rooms,
                           b->o.value_bytes) < 0) {
        bench_fail(b, "loading the main data set failed");
        return MS_EIO;
    }
    r = value_row(b, "load main data set", seconds_between(t0, bench_now_ns()),
                  "s");
    snprintf(r->note, sizeof(r->note), "%zu conns + %zu rooms, write.lua",
             b->conns, b->rooms);

    if (bench_sidecar_init(&b->a, b->dir, "a") < 0 ||
        bench_sidecar_spawn(&b->a, b->redis.url, b->cpu_server) < 0 ||
        bench_sidecar_wait_ready(&b->a, BENCH_READY_MS, &ready) < 0) {
        bench_fail(b, "sidecar A did not start");
        return MS_EINTERNAL;
    }
    r = value_row(b, "sidecar A cold start",
                  seconds_between(b->a.spawn_ns, ready), "s");
    snprintf(r->note, sizeof(r->note),
             "%zu entries; %u health polls, slowest %.1f ms",
             b->conns + b->rooms, b->a.health_calls,
             (double)b->a.health_worst_ns / 1e6);
    return measure_get_sizes(b);
}


/* --- baseline A: the echo --------------------------------------------- */

static int echo_listen(bench_t *b)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;

    if (bench_proc_path(b->dir, "echo.sock", b->echo_sock,
                        sizeof(b->echo_sock)) < 0)
        return MS_EINVAL;
    strcpy(sa.sun_path, b->echo_sock);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return MS_EIO;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(fd, 128) != 0) {
        close(fd);
        return MS_EIO;
    }
    return fd;
}


/* The echo child listens on a socket bound before the fork: no wait. */
static int echo_start(bench_t *b)
{
    int fd = echo_listen(b);
    pid_t pid;

    if (fd < 0)
        return fd;
    pid = bench_proc_fork(b->cpu_server);
    if (pid == 0)
        _exit(bench_echo_run(fd, b->get_reply_len) < 0 ? 1 : 0);
    close(fd);
    if (pid < 0)
        return MS_EINTERNAL;
    b->echo_pid = pid;
    return 0;
}


int bench_step_echo(bench_t *b)
{
    bench_reqs_t reqs;
    bench_conn_t c;
    int rc;

    if (echo_start(b) < 0) {
        bench_fail(b, "the echo server did not start");
        return MS_EINTERNAL;
    }
    /* The very requests meshsync gets: the same sizes on the wire. */
    rc = bench_pool_gets(b, &reqs, BENCH_CONN, b->conns, 0, BENCH_POOL_MAX);
    if (rc == 0 &&
        (rc = bench_conn_unix(&c, b->echo_sock, BENCH_WIRE_FRAME)) == 0) {
        rc = measure_serial(b, &c, &reqs, BENCH_CHECK_OK, "A echo 1c", NULL,
                            "echo");
        bench_conn_close(&c);
    }
    if (rc == 0)
        rc = measure_pipelined(b, b->echo_sock, BENCH_WIRE_FRAME, &reqs,
                               BENCH_CHECK_OK, "A echo 16x16", NULL);
    bench_reqs_free(&reqs);
    if (rc < 0)
        bench_fail(b, "baseline A failed");
    return rc;
}


/* --- baseline B: HGET ------------------------------------------------- */

static int hget_pool(bench_t *b, bench_reqs_t *r)
{
    size_t n = b->o.samples < BENCH_POOL_MAX ? b->o.samples : BENCH_POOL_MAX;
    char id[32];
    int rc = bench_reqs_init(r, n);

    for (size_t i = 0; i < n && rc == 0; i++) {
        bench_req_id(BENCH_CONN, bench_random(b, b->conns), id, sizeof(id));
        rc = bench_reqs_hget(r, BENCH_CONN, id);
    }
    return rc;
}


static int hget_serial(bench_t *b, const bench_reqs_t *reqs, bool tcp,
                       bench_check_t check, const char *name,
                       const char *baseline, const char *cdf)
{
    bench_conn_t c;
    int rc = tcp ? bench_conn_tcp(&c, b->redis.port, BENCH_WIRE_RESP)
                 : bench_conn_unix(&c, b->redis.sock, BENCH_WIRE_RESP);

    if (rc < 0) {
        bench_fail(b, "%s: cannot connect to redis-server", name);
        return rc;
    }
    rc = measure_serial(b, &c, reqs, check, name, baseline, cdf);
    bench_conn_close(&c);
    return rc;
}


int bench_step_hget(bench_t *b)
{
    static const char *unix_1c = "B hget unix 1c";
    bench_reqs_t reqs;
    int rc = hget_pool(b, &reqs);

    if (rc == 0)
        rc = hget_serial(b, &reqs, false, BENCH_CHECK_VALUE, unix_1c, NULL,
                         "hget_unix");
    if (rc == 0)
        rc = hget_serial(b, &reqs, true, BENCH_CHECK_VALUE, "B hget tcp 1c",
                         unix_1c, NULL);
    if (rc == 0)
        rc = hget_serial(b, &reqs, false, BENCH_CHECK_JSON,
                         "B hget+json unix 1c", unix_1c, "hget_json");
    if (rc == 0)
        rc = measure_pipelined(b, b->redis.sock, BENCH_WIRE_RESP, &reqs,
                               BENCH_CHECK_VALUE, "B hget unix 16x16", NULL);
    bench_reqs_free(&reqs);
    return rc;
}


/* --- meshsync reads --------------------------------------------------- */

static int read_serial(bench_t *b, bench_conn_t *c, bench_kind_t kind, bool hit,
                       const char *name, const char *cdf)
{
    size_t n = kind == BENCH_CONN ? b->conns : b->rooms;
    bench_reqs_t reqs;
    int rc;

    /* Misses ask for ids past the loaded ones: never written. */
    rc = bench_pool_gets(b, &reqs, kind, n, hit ? 0 : n, BENCH_POOL_MAX);
    if (rc == 0)
        rc =
            measure_serial(b, c, &reqs, BENCH_CHECK_OK, name, "A echo 1c", cdf);
    bench_reqs_free(&reqs);
    return rc;
}


int bench_step_reads(bench_t *b)
{
    bench_reqs_t reqs;
    bench_conn_t c;
    int rc = bench_conn_unix(&c, b->a.sock, BENCH_WIRE_FRAME);

    if (rc == 0) {
        rc = read_serial(b, &c, BENCH_CONN, true, "ms conn.get hit 1c",
                         "ms_get_hit");
        if (rc == 0)
            rc = read_serial(b, &c, BENCH_CONN, false, "ms conn.get miss 1c",
                             NULL);
        if (rc == 0)
            rc = read_serial(b, &c, BENCH_ROOM, true, "ms room.get hit 1c",
                             NULL);
        if (rc == 0)
            rc = read_serial(b, &c, BENCH_ROOM, false, "ms room.get miss 1c",
                             NULL);
        bench_conn_close(&c);
    }
    if (rc == 0 && (rc = bench_pool_gets(b, &reqs, BENCH_CONN, b->conns, 0,
                                         BENCH_POOL_MAX)) == 0) {
        rc = measure_pipelined(b, b->a.sock, BENCH_WIRE_FRAME, &reqs,
                               BENCH_CHECK_OK, "ms conn.get hit 16x16",
                               "B hget unix 16x16");
        bench_reqs_free(&reqs);
    }
    if (rc < 0)
        bench_fail(b, "meshsync reads failed");
    return rc;
}


/* --- writes ----------------------------------------------------------- */

static size_t write_pool_size(const bench_t *b)
{
    size_t n = b->o.samples + bench_warmup(b->o.samples);

    return n < WRITE_POOL ? n : WRITE_POOL;
}


/* conn.set of new values (variant v) on random existing connections. */
static int set_pool(bench_t *b, bench_reqs_t *r, unsigned v,
                    const char *strategy)
{
    size_t n = write_pool_size(b);
    int rc = bench_reqs_init(r, n);

    for (size_t i = 0; i < n && rc == 0; i++)
        rc = bench_reqs_set(r, bench_random(b, b->conns), v, b->o.value_bytes,
                            strategy, i);
    return rc;
}


static int evalsha_step(bench_t *b)
{
    size_t n = write_pool_size(b);
    bench_reqs_t reqs;
    bench_conn_t c;
    int rc = bench_reqs_init(&reqs, n);

    for (size_t i = 0; i < n && rc == 0; i++)
        rc = bench_reqs_evalsha(&reqs, &b->script, BENCH_CONN,
                                bench_random(b, b->conns), V_EVALSHA,
                                b->o.value_bytes);
    if (rc == 0 &&
        (rc = bench_conn_unix(&c, b->redis.sock, BENCH_WIRE_RESP)) == 0) {
        rc = measure_serial(b, &c, &reqs, BENCH_CHECK_OK,
                            "raw evalsha replace 1c", NULL, "evalsha");
        bench_conn_close(&c);
    }
    bench_reqs_free(&reqs);
    return rc;
}


static int set_step(bench_t *b, bench_conn_t *c, unsigned v,
                    const char *strategy, const char *name, const char *cdf)
{
    bench_reqs_t reqs;
    int rc = set_pool(b, &reqs, v, strategy);

    if (rc == 0)
        rc = measure_serial(b, c, &reqs, BENCH_CHECK_OK, name,
                            "raw evalsha replace 1c", cdf);
    bench_reqs_free(&reqs);
    return rc;
}


/*
 * evalsha calls per merge: INFO commandstats around the merges, less the
 * background (heartbeats, the scrub's lease) counted over an idle second
 * just before, scaled to the merges' duration.
 */
static int merge_step(bench_t *b, bench_conn_t *c)
{
    size_t k = b->o.samples + bench_warmup(b->o.samples);
    uint64_t idle0, idle1, c0, c1;
    int64_t t0, t1, t2;
    double background;
    bench_row_t *r;
    int rc;

    if (bench_load_evalsha_calls(b->redis.ctl, &idle0) < 0)
        return MS_EIO;
    t0 = bench_now_ns();
    bench_sleep_until(t0 + IDLE_WINDOW);
    if (bench_load_evalsha_calls(b->redis.ctl, &idle1) < 0 ||
        bench_load_evalsha_calls(b->redis.ctl, &c0) < 0)
        return MS_EIO;
    t1 = bench_now_ns();
    rc = set_step(b, c, V_MERGE, "merge", "ms conn.set merge 1c", NULL);
    t2 = bench_now_ns();
    if (rc < 0 || bench_load_evalsha_calls(b->redis.ctl, &c1) < 0)
        return rc < 0 ? rc : MS_EIO;

    background =
        (double)(idle1 - idle0) * (double)(t2 - t1) / (double)(t1 - t0);
    b->trips_raw = (double)(c1 - c0) / (double)k;
    b->merge_trips = ((double)(c1 - c0) - background) / (double)k;
    r = value_row(b, "merge evalsha calls per merge", b->merge_trips, "calls");
    snprintf(r->note, sizeof(r->note),
             "%zu merges, raw %.4f, background %.1f calls subtracted", k,
             b->trips_raw, background);
    return 0;
}


int bench_step_writes(bench_t *b)
{
    bench_conn_t c;
    int rc = evalsha_step(b);

    if (rc == 0 &&
        (rc = bench_conn_unix(&c, b->a.sock, BENCH_WIRE_FRAME)) == 0) {
        rc = set_step(b, &c, V_REPLACE, "replace", "ms conn.set replace 1c",
                      "ms_replace");
        if (rc == 0)
            rc = merge_step(b, &c);
        if (rc == 0)
            rc = set_step(b, &c, V_DEEP, "deepMerge",
                          "ms conn.set deepMerge 1c", NULL);
        bench_conn_close(&c);
    }
    if (rc < 0)
        bench_fail(b, "write measurements failed");
    return rc;
}


/* --- convergence ------------------------------------------------------ */

typedef struct converge_s {
    bench_conn_t writer;  /* on A */
    bench_conn_t watcher; /* on B, watching everything */
    uint64_t base;        /* the first measured write's version */
    size_t push_len;      /* a push frame's body */
} converge_t;

/* Reads the watcher until the push of version v arrives (bounded). */
static int wait_push(bench_conn_t *w, uint64_t v, size_t *len)
{
    int64_t deadline = bench_now_ns() + PUSH_WAIT_MS * 1000000LL;
    bench_msg_t m;

    for (int i = 0; i < 100000 && bench_now_ns() < deadline; i++) {
        int rc = bench_conn_next(w, &m);

        if (rc < 0)
            return rc;
        if (rc == 0) {
            if (bench_conn_wait(w, PUSH_WAIT_MS) <= 0 ||
                bench_conn_fill(w, true) < 0)
                return MS_ETIMEOUT;
            continue;
        }
        if (m.push && m.has_version && m.version >= v) {
            *len = m.len;
            return 0;
        }
    }
    return MS_ETIMEOUT;
}


/* Watch everything on B, then one write on A whose push B must see. */
static int converge_prime(bench_t *b, converge_t *cv)
{
    bench_reqs_t reqs;
    bench_msg_t m;
    size_t len;
    int rc;

    cv->writer.scan_all = cv->watcher.scan_all = true;
    if ((rc = bench_reqs_init(&reqs, 2)) < 0)
        return rc;
    if ((rc = bench_reqs_watch_all(&reqs, 1)) == 0)
        rc = bench_reqs_set(&reqs, 0, V_PRIME, b->o.value_bytes, "replace", 2);
    if (rc == 0) {
        const char *req = bench_reqs_at(&reqs, 0, &len);

        if ((rc = bench_conn_send(&cv->watcher, req, len)) == 0 &&
            (rc = bench_conn_recv(&cv->watcher, &m)) == 0 && !m.ok)
            rc = MS_EPROTO;
    }
    if (rc == 0) {
        const char *req = bench_reqs_at(&reqs, 1, &len);

        if ((rc = bench_conn_send(&cv->writer, req, len)) == 0 &&
            (rc = bench_conn_recv(&cv->writer, &m)) == 0 && !m.has_version)
            rc = MS_EPROTO;
    }
    if (rc == 0) {
        cv->base = m.version + 1;
        rc = wait_push(&cv->watcher, m.version, &cv->push_len);
    }
    bench_reqs_free(&reqs);
    return rc;
}


static size_t converge_count(const bench_t *b)
{
    return (size_t)CONVERGE_RATE * (b->o.quick ? 2 : 5);
}


static void converge_row(bench_t *b, const bench_conv_t *c, const char *name,
                         const char *baseline, int rc,
                         const bench_probe_t *probe)
{
    bench_row_t *r = bench_table_add(&b->table, name, baseline);

    bench_probe_end(b, probe, r, c->count);
    bench_row_latency(r, &b->lat);
    r->ops = c->rate;
    r->failures = c->failures + (rc < 0);
    snprintf(r->note, sizeof(r->note),
             "%zu writes, %zu arrived, %zu negative, %zu stray", c->count,
             c->arrived, c->negatives, c->strays);
    if (rc < 0 || c->failures > 0)
        bench_fail(b, "%s: %u failures%s", name, c->failures,
                   rc < 0 ? ", run failed" : "");
}


static int pubsub_run(bench_t *b, size_t payload)
{
    bench_conn_t pub, sub;
    bench_reqs_t reqs, subscribe;
    bench_conv_t c = {.writer = &pub,
                      .watcher = &sub,
                      .reqs = &reqs,
                      .count = converge_count(b),
                      .interval_ns = 1000000000LL / CONVERGE_RATE,
                      .max_inflight = INFLIGHT_MAX};
    bench_probe_t probe;
    bench_msg_t m;
    size_t len;
    int rc = bench_reqs_init(&reqs, c.count);

    /* Until the run starts, the probe spans the set-up only. */
    bench_probe_begin(b, &probe);
    bench_samples_reset(&b->lat);
    for (size_t i = 0; i < c.count && rc == 0; i++)
        rc = bench_reqs_publish(&reqs, CHANNEL, i, payload);
    if (rc == 0 && (rc = bench_reqs_init(&subscribe, 1)) == 0) {
        rc = bench_reqs_subscribe(&subscribe, CHANNEL);
        if (rc == 0 &&
            (rc = bench_conn_unix(&sub, b->redis.sock, BENCH_WIRE_RESP)) == 0) {
            const char *req = bench_reqs_at(&subscribe, 0, &len);

            if ((rc = bench_conn_send(&sub, req, len)) == 0)
                rc = bench_conn_recv(&sub, &m);
            if (rc == 0 && (rc = bench_conn_unix(&pub, b->redis.sock,
                                                 BENCH_WIRE_RESP)) == 0) {
                bench_settle(b, "pubsub");
                bench_probe_begin(b, &probe);
                rc = bench_run_pubsub(&c, &b->lat);
                bench_conn_close(&pub);
            }
            bench_conn_close(&sub);
        }
        bench_reqs_free(&subscribe);
    }
    bench_reqs_free(&reqs);
    converge_row(b, &c, "pubsub 5000/s", NULL, rc, &probe);
    return rc;
}


static int meshsync_run(bench_t *b, converge_t *cv)
{
    bench_reqs_t reqs;
    bench_conv_t c = {.writer = &cv->writer,
                      .watcher = &cv->watcher,
                      .reqs = &reqs,
                      .count = converge_count(b),
                      .interval_ns = 1000000000LL / CONVERGE_RATE,
                      .max_inflight = INFLIGHT_MAX,
                      .base = cv->base};
    bench_probe_t probe;
    int rc = bench_reqs_init(&reqs, c.count);

    /* Until the run starts, the probe spans the set-up only. */
    bench_probe_begin(b, &probe);
    bench_samples_reset(&b->lat);

    /* Ids in turn, so no two writes in flight share an entry's queue. */
    for (size_t i = 0; i < c.count && rc == 0; i++)
        rc = bench_reqs_set(&reqs, i % b->conns, V_CONVERGE, b->o.value_bytes,
                            "replace", i);
    if (rc == 0) {
        bench_settle(b, "convergence");
        bench_probe_begin(b, &probe);
        rc = bench_run_converge(&c, &b->lat);
    }
    bench_reqs_free(&reqs);
    converge_row(b, &c, "ms converge A->B 5000/s", "pubsub 5000/s", rc, &probe);
    return rc;
}


int bench_step_converge(bench_t *b)
{
    converge_t cv;
    bench_row_t *r;
    int64_t ready;
    int rc;

    if (bench_sidecar_init(&b->b, b->dir, "b") < 0 ||
        bench_sidecar_spawn(&b->b, b->redis.url, b->cpu_server) < 0 ||
        bench_sidecar_wait_ready(&b->b, BENCH_READY_MS, &ready) < 0) {
        bench_fail(b, "sidecar B did not start");
        return MS_EINTERNAL;
    }
    r = value_row(b, "sidecar B cold start",
                  seconds_between(b->b.spawn_ns, ready), "s");
    snprintf(r->note, sizeof(r->note), "%u health polls, slowest %.1f ms",
             b->b.health_calls, (double)b->b.health_worst_ns / 1e6);

    if ((rc = bench_conn_unix(&cv.writer, b->a.sock, BENCH_WIRE_FRAME)) < 0)
        goto failed_writer;
    if ((rc = bench_conn_unix(&cv.watcher, b->b.sock, BENCH_WIRE_FRAME)) < 0)
        goto failed_watcher;
    if ((rc = converge_prime(b, &cv)) < 0) {
        bench_fail(b, "convergence: no push for a write: %s",
                   ms_error_name(rc));
        goto failed_prime;
    }
    rc = pubsub_run(b, cv.push_len);
    if (rc == 0)
        rc = meshsync_run(b, &cv);

failed_prime:
    bench_conn_close(&cv.watcher);
failed_watcher:
    bench_conn_close(&cv.writer);
failed_writer:
    if (rc < 0)
        bench_fail(b, "convergence failed");
    return rc;
}


void bench_step_stop_main(bench_t *b)
{
    /* The echo child ends by the signal: its status says nothing. */
    if (b->echo_pid > 0)
        bench_proc_stop(b->echo_pid, SIGTERM, 10000);
    b->echo_pid = 0;

    /* Interrupted, the signal handler has killed them already. */
    if (bench_sidecar_stop(&b->a) < 0 && !bench_proc_interrupted())
        bench_fail(b, "sidecar A did not stop cleanly");
    if (bench_sidecar_stop(&b->b) < 0 && !bench_proc_interrupted())
        bench_fail(b, "sidecar B did not stop cleanly");
}
