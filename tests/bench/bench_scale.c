/*
 * bench_scale.c - measurement 6 of meshsync-bench (see bench.h): for one
 * size, a fresh data set, a fresh sidecar's full resync, its read
 * latency, a warm restart on the same cache file (first served read,
 * caught up), the daemon's peak RSS; at the largest size also reads made
 * while a cold sidecar resyncs. Entry point: bench_step_scale(). Bench
 * process, single-threaded.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_load.h"
#include "bench_run.h"
#include "bench_wire.h"
#include "error.h"

#define HEALTH_EVERY_NS 2000000LL
#define RESYNC_READS    (4u * 1024 * 1024)

typedef struct scale_s {
    bench_t *b;
    size_t size;
    bench_sidecar_t s;
    bench_reqs_t gets; /* random hits among the size's connections */
    long hwm_kib;      /* the highest VmHWM seen */
} scale_t;

static bench_row_t *scale_row(scale_t *sc, const char *what, double value,
                              const char *unit)
{
    char name[BENCH_NAME_MAX];
    bench_row_t *r;

    snprintf(name, sizeof(name), "scale %zu %s", sc->size, what);
    r = bench_table_add(&sc->b->table, name, NULL);
    r->value = value;
    snprintf(r->unit, sizeof(r->unit), "%s", unit);
    return r;
}


/* The scale sidecar is one of the run's servers while it runs. */
static int scale_spawn(scale_t *sc)
{
    int rc = bench_sidecar_spawn(&sc->s, sc->b->redis.url, sc->b->cpu_server);

    sc->b->scale = sc->s.pid;
    return rc;
}


static int scale_stop(scale_t *sc)
{
    sc->b->scale = 0;
    return bench_sidecar_stop(&sc->s);
}


static double ms_between(int64_t from, int64_t to)
{
    return (double)(to - from) / 1e6;
}


static void note_hwm(scale_t *sc)
{
    long kib = bench_proc_hwm_kib(sc->s.pid);

    if (kib > sc->hwm_kib)
        sc->hwm_kib = kib;
}


/* What polling health cost: a slow health slows what it watches. */
static void health_note(bench_row_t *r, const bench_sidecar_t *s)
{
    snprintf(r->note, sizeof(r->note), "%u health polls, slowest %.1f ms",
             s->health_calls, (double)s->health_worst_ns / 1e6);
}


static int scale_load(scale_t *sc)
{
    bench_t *b = sc->b;
    int64_t t0 = bench_now_ns();

    if (bench_load_flush(b->redis.ctl) < 0 ||
        bench_load_entries(b->redis.ctl, &b->script, sc->size, sc->size / 10,
                           b->o.value_bytes) < 0) {
        bench_fail(b, "scale %zu: loading failed", sc->size);
        return MS_EIO;
    }
    scale_row(sc, "load", ms_between(t0, bench_now_ns()) / 1000, "s");
    return 0;
}


/* Starts the sidecar; the row what says in how long it was ready. */
static int scale_until_ready(scale_t *sc, const char *what)
{
    int64_t ready;

    if (scale_spawn(sc) < 0 ||
        bench_sidecar_wait_ready(&sc->s, BENCH_READY_MS, &ready) < 0) {
        bench_fail(sc->b, "scale %zu: %s: the sidecar did not get ready",
                   sc->size, what);
        return MS_EINTERNAL;
    }
    health_note(
        scale_row(sc, what, ms_between(sc->s.spawn_ns, ready) / 1000, "s"),
        &sc->s);
    note_hwm(sc);
    return 0;
}


/* A fresh sidecar on a new cache file: the full resync's time. */
static int scale_fresh(scale_t *sc)
{
    char name[32];

    snprintf(name, sizeof(name), "scale-%zu", sc->size);
    if (bench_sidecar_init(&sc->s, sc->b->dir, name) < 0)
        return MS_EINTERNAL;
    return scale_until_ready(sc, "full resync");
}


static int scale_reads(scale_t *sc)
{
    bench_t *b = sc->b;
    char name[BENCH_NAME_MAX], base[BENCH_NAME_MAX];
    bench_row_t *r;
    bench_tally_t t;
    bench_probe_t probe;
    bench_conn_t c;
    int rc = bench_conn_unix(&c, sc->s.sock, BENCH_WIRE_FRAME);

    snprintf(name, sizeof(name), "scale %zu conn.get hit 1c", sc->size);
    snprintf(base, sizeof(base), "scale %zu conn.get hit 1c", b->o.sizes[0]);
    r = bench_table_add(&b->table, name, base);
    bench_settle(b, name);
    bench_probe_begin(b, &probe);
    if (rc == 0) {
        rc = bench_run_serial(&c, &sc->gets, bench_warmup(b->o.samples),
                              b->o.samples, BENCH_CHECK_OK, &b->lat, &t);
        bench_conn_close(&c);
    }
    bench_probe_end(b, &probe, r,
                    rc == 0 ? bench_warmup(b->o.samples) + t.done : 0);
    bench_row_latency(r, &b->lat);
    r->ops = rc == 0 ? t.ops : r->ops;
    r->failures = (rc < 0) + (rc == 0 ? t.failures : 0);
    if (r->failures > 0)
        bench_fail(b, "%s: failed", name);
    return rc;
}


/* SIGTERM, then the same cache file again: first read, caught up. */
static int scale_restart(scale_t *sc)
{
    bench_t *b = sc->b;
    size_t len;
    const char *req = bench_reqs_at(&sc->gets, 0, &len);
    int64_t served, ready;

    note_hwm(sc);
    if (scale_stop(sc) < 0 || scale_spawn(sc) < 0 ||
        bench_sidecar_first_read(&sc->s, req, len, BENCH_READY_MS, &served) <
            0 ||
        bench_sidecar_wait_ready(&sc->s, BENCH_READY_MS, &ready) < 0) {
        bench_fail(b, "scale %zu: the warm restart failed", sc->size);
        return MS_EINTERNAL;
    }
    scale_row(sc, "warm restart first read", ms_between(sc->s.spawn_ns, served),
              "ms");
    health_note(scale_row(sc, "warm restart caught up",
                          ms_between(sc->s.spawn_ns, ready), "ms"),
                &sc->s);
    note_hwm(sc);
    return 0;
}


/*
 * SIGTERM, then the change log lost: the same cache file, full of
 * entries, takes a full load (as after a Redis restart or a long outage).
 */
static int scale_reload(scale_t *sc)
{
    if (scale_stop(sc) < 0 || bench_load_lose_log(sc->b->redis.ctl) < 0) {
        bench_fail(sc->b, "scale %zu: cannot lose the change log", sc->size);
        return MS_EINTERNAL;
    }
    return scale_until_ready(sc, "full resync, warm cache file");
}


/* --- reads while a cold sidecar resyncs ------------------------------- */

typedef struct resync_s {
    bench_conn_t data;
    bench_conn_t health;
    bool asked;       /* a health request is out */
    int64_t next_ask; /* when the next one may go */
    int64_t ready_ns; /* 0 until health said ready */
    unsigned failures;
} resync_t;

/* Looks at the health connection without blocking the reads. */
static int resync_health(resync_t *rs, int64_t now)
{
    bench_msg_t m;
    int rc;

    if (!rs->asked) {
        if (now < rs->next_ask)
            return 0;
        rs->asked = true;
        rs->next_ask = now + HEALTH_EVERY_NS;
        return bench_sidecar_send_health(&rs->health);
    }
    rc = bench_conn_next(&rs->health, &m);
    if (rc == 0 && (rc = bench_conn_fill(&rs->health, true)) >= 0)
        rc = bench_conn_next(&rs->health, &m);
    if (rc <= 0)
        return rc;
    rs->asked = false;
    if (m.ok && m.ready == 1)
        rs->ready_ns = bench_now_ns();
    return 0;
}


static int resync_loop(scale_t *sc, resync_t *rs, int64_t deadline)
{
    bench_samples_t *lat = &sc->b->lat;
    bench_msg_t m;
    int rc = 0;

    bench_samples_reset(lat);
    for (size_t k = 0; rs->ready_ns == 0 && rc == 0; k++) {
        size_t len;
        const char *req = bench_reqs_at(&sc->gets, k, &len);
        int64_t t0 = bench_now_ns(), t1;

        if (t0 > deadline || k >= RESYNC_READS * 16u ||
            bench_proc_interrupted())
            return MS_ETIMEOUT;
        if ((rc = bench_conn_send(&rs->data, req, len)) < 0 ||
            (rc = bench_conn_recv(&rs->data, &m)) < 0)
            break;
        t1 = bench_now_ns();
        bench_samples_add(lat, t1 - t0);
        rs->failures += !m.ok;
        rc = resync_health(rs, t1);
    }
    return rc;
}


static int scale_resync_reads(scale_t *sc)
{
    bench_t *b = sc->b;
    char name[32];
    resync_t rs = {0};
    bench_probe_t probe;
    bench_row_t *r;
    int rc;

    bench_samples_reset(&b->lat);
    snprintf(name, sizeof(name), "scale-%zu-cold", sc->size);
    if (bench_sidecar_init(&sc->s, b->dir, name) < 0 || scale_spawn(sc) < 0)
        return MS_EINTERNAL;
    bench_probe_begin(b, &probe);
    rc = bench_sidecar_connect(&sc->s, BENCH_READY_MS, &rs.data);
    if (rc == 0 &&
        (rc = bench_sidecar_connect(&sc->s, BENCH_READY_MS, &rs.health)) == 0) {
        rs.health.scan_all = true;
        rc = resync_loop(sc, &rs,
                         bench_now_ns() + (int64_t)BENCH_READY_MS * 1000000);
        bench_conn_close(&rs.health);
    }
    bench_conn_close(&rs.data);

    snprintf(name, sizeof(name), "scale %zu reads in resync", sc->size);
    r = bench_table_add(&b->table, name, NULL);
    bench_probe_end(b, &probe, r, 0);
    bench_row_latency(r, &b->lat);
    r->failures = rs.failures + (rc < 0);
    snprintf(r->note, sizeof(r->note), "%zu reads, max %.0f us%s", r->count,
             r->max, b->lat.dropped > 0 ? ", some not kept" : "");
    if (rc == 0)
        scale_row(sc, "full resync under reads",
                  ms_between(sc->s.spawn_ns, rs.ready_ns) / 1000, "s");
    if (r->failures > 0)
        bench_fail(b, "%s: %u failed", name, r->failures);
    note_hwm(sc);
    return rc;
}


/* --- one size --------------------------------------------------------- */

static int scale_run(scale_t *sc, bool largest)
{
    bench_t *b = sc->b;
    int rc;

    if ((rc = scale_load(sc)) < 0 || (rc = scale_fresh(sc)) < 0)
        return rc;
    if ((rc = scale_reads(sc)) < 0 || (rc = scale_restart(sc)) < 0 ||
        (rc = scale_reload(sc)) < 0)
        return rc;
    if (scale_stop(sc) < 0)
        bench_fail(b, "scale %zu: the sidecar did not stop cleanly", sc->size);
    bench_sidecar_remove_cache(&sc->s);
    scale_row(sc, "daemon peak RSS", (double)sc->hwm_kib / 1024, "MiB");
    if (!largest)
        return 0;

    rc = scale_resync_reads(sc);
    if (scale_stop(sc) < 0)
        bench_fail(b, "scale %zu: the cold sidecar did not stop cleanly",
                   sc->size);
    bench_sidecar_remove_cache(&sc->s);
    return rc;
}


int bench_step_scale(bench_t *b, size_t size, bool largest)
{
    scale_t sc = {.b = b, .size = size};
    int rc = bench_pool_gets(b, &sc.gets, BENCH_CONN, size, 0, BENCH_POOL_MAX);

    if (rc == 0)
        rc = scale_run(&sc, largest);
    scale_stop(&sc);
    bench_reqs_free(&sc.gets);
    if (rc < 0)
        bench_fail(b, "scale %zu failed: %s", size, ms_error_name(rc));
    return rc;
}
