/*
 * bench_run.c - the measurement drivers (see bench_run.h). Entry points:
 * bench_run_serial(), bench_run_pipelined(), bench_run_converge(),
 * bench_run_pubsub(). Bench process, single-threaded.
 *
 * Timestamps are CLOCK_MONOTONIC. A reply's time is taken once per read
 * that brought it, after the read, so the replies of one read share it.
 * Every loop is bounded by a count and by a deadline.
 */
#define _GNU_SOURCE
#include "bench_run.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "bench_proc.h"
#include "error.h"

#define DEPTH_MAX      64
#define CONNS_MAX      64
#define RUN_TIMEOUT_NS (600 * 1000000000LL)
#define DRAIN_NS       (10 * 1000000000LL)
#define IDLE_WAIT_NS   (10 * 1000000LL)
#define POLL_MS        1000
#define CHECK_EVERY    1024

static bool check_msg(const bench_msg_t *m, bench_check_t check)
{
    json_t *j;

    if (!m->ok)
        return false;
    if (check == BENCH_CHECK_OK)
        return true;
    if (m->body == NULL)
        return false;
    if (check == BENCH_CHECK_VALUE)
        return true;
    j = json_loadb(m->body, m->len, 0, NULL);
    if (j == NULL)
        return false;
    json_decref(j);
    return true;
}


static double per_second(size_t n, int64_t from_ns, int64_t to_ns)
{
    return to_ns > from_ns ? (double)n * 1e9 / (double)(to_ns - from_ns) : 0;
}


/* --- one at a time ---------------------------------------------------- */

int bench_run_serial(bench_conn_t *c, const bench_reqs_t *reqs, size_t warmup,
                     size_t count, bench_check_t check, bench_samples_t *lat,
                     bench_tally_t *t)
{
    int64_t start = bench_now_ns();
    bench_msg_t m;
    int rc;

    *t = (bench_tally_t){0};
    bench_samples_reset(lat);
    for (size_t k = 0; k < warmup + count; k++) {
        size_t len;
        const char *req = bench_reqs_at(reqs, k, &len);
        int64_t t0, t1;
        bool ok;

        if (k % CHECK_EVERY == 0 && bench_proc_interrupted())
            return MS_EIO;
        if (k == warmup)
            start = bench_now_ns();
        t0 = bench_now_ns();
        if ((rc = bench_conn_send(c, req, len)) < 0 ||
            (rc = bench_conn_recv(c, &m)) < 0)
            return rc;
        ok = check_msg(&m, check);
        t1 = bench_now_ns();
        if (k < warmup)
            continue;
        bench_samples_add(lat, t1 - t0);
        t->failures += !ok;
        t->done++;
    }
    t->ops = per_second(count, start, bench_now_ns());
    return 0;
}


/* --- many in flight --------------------------------------------------- */

/* The send times of one client's requests in flight, oldest first. */
typedef struct lane_s {
    int64_t sent[DEPTH_MAX];
    unsigned head;
    unsigned n;
} lane_t;

typedef struct pipe_s {
    bench_conn_t *conns;
    lane_t *lanes;
    struct pollfd *pfd;
    int nconns;
    int depth;
    const bench_reqs_t *reqs;
    size_t issued; /* requests sent */
    size_t done;   /* replies taken, warm-up included */
    size_t warmup;
    size_t total;
    bench_check_t check;
    int64_t start; /* when the warm-up ended */
} pipe_t;

/* Tops client i up to depth requests in flight, in one sendmsg(). */
static int lane_fill(pipe_t *p, int i)
{
    lane_t *l = &p->lanes[i];
    struct iovec iov[DEPTH_MAX];
    size_t k = (size_t)p->depth - l->n;
    int64_t now = bench_now_ns();

    if (k > p->total - p->issued)
        k = p->total - p->issued;
    if (k == 0)
        return 0;
    for (size_t j = 0; j < k; j++) {
        size_t len;

        iov[j].iov_base = (void *)bench_reqs_at(p->reqs, p->issued++, &len);
        iov[j].iov_len = len;
        l->sent[(l->head + l->n + j) % DEPTH_MAX] = now;
    }
    l->n += (unsigned)k;
    return bench_conn_sendv(&p->conns[i], iov, (int)k);
}


/* Takes every complete reply client i has received. */
static int lane_take(pipe_t *p, int i, bench_samples_t *lat, bench_tally_t *t)
{
    lane_t *l = &p->lanes[i];
    int rc = bench_conn_fill(&p->conns[i], true);
    int64_t now = bench_now_ns();
    bench_msg_t m;

    if (rc < 0)
        return rc;
    while ((rc = bench_conn_next(&p->conns[i], &m)) == 1) {
        bool ok = check_msg(&m, p->check);

        if (l->n == 0)
            return MS_EPROTO;
        if (p->done >= p->warmup) {
            bench_samples_add(lat, now - l->sent[l->head]);
            t->failures += !ok;
            t->done++;
        }
        l->head = (l->head + 1) % DEPTH_MAX;
        l->n--;
        if (++p->done == p->warmup)
            p->start = now;
    }
    return rc < 0 ? rc : lane_fill(p, i);
}


static int pipe_loop(pipe_t *p, bench_samples_t *lat, bench_tally_t *t)
{
    int64_t deadline = bench_now_ns() + RUN_TIMEOUT_NS;
    size_t max_turns = p->total * 4 + 100000;
    int rc;

    for (int i = 0; i < p->nconns; i++) {
        if ((rc = lane_fill(p, i)) < 0)
            return rc;
    }
    for (size_t turn = 0; p->done < p->total; turn++) {
        if (turn > max_turns || bench_now_ns() > deadline)
            return MS_ETIMEOUT;
        rc = poll(p->pfd, (nfds_t)p->nconns, POLL_MS);
        if (rc < 0 && (errno != EINTR || bench_proc_interrupted()))
            return MS_EIO;
        for (int i = 0; rc > 0 && i < p->nconns; i++) {
            if (p->pfd[i].revents == 0)
                continue;
            if ((rc = lane_take(p, i, lat, t)) < 0)
                return rc;
            rc = 1;
        }
    }
    return 0;
}


int bench_run_pipelined(bench_conn_t *conns, int nconns, int depth,
                        const bench_reqs_t *reqs, size_t warmup, size_t count,
                        bench_check_t check, bench_samples_t *lat,
                        bench_tally_t *t)
{
    lane_t lanes[CONNS_MAX];
    struct pollfd pfd[CONNS_MAX];
    pipe_t p = {.conns = conns,
                .lanes = lanes,
                .pfd = pfd,
                .nconns = nconns,
                .depth = depth,
                .reqs = reqs,
                .warmup = warmup,
                .total = warmup + count,
                .check = check,
                .start = bench_now_ns()};
    int rc;

    if (nconns > CONNS_MAX || depth > DEPTH_MAX || depth < 1)
        return MS_EINVAL;
    *t = (bench_tally_t){0};
    bench_samples_reset(lat);
    memset(lanes, 0, sizeof(lanes));
    for (int i = 0; i < nconns; i++)
        pfd[i] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
    rc = pipe_loop(&p, lat, t);
    t->ops = per_second(count, p.start, bench_now_ns());
    return rc;
}


/* --- convergence ------------------------------------------------------ */

typedef struct conv_s {
    bench_conv_t *cv;
    bool pubsub;
    int64_t *from; /* by write: its reply's arrival (meshsync), send (pub) */
    int64_t *to;   /* by write: its arrival at the watcher */
    size_t slots;
    size_t sent;
    size_t replies;
    size_t ok_replies;
    size_t inflight;
    int64_t t0;
    int64_t last_send;
} conv_t;

/* The slot of a write: meshsync by version, pub/sub by payload number. */
static bool conv_slot(const conv_t *c, uint64_t n, size_t *slot)
{
    if (!c->pubsub) {
        if (n < c->cv->base)
            return false;
        n -= c->cv->base;
    }
    *slot = (size_t)n;
    return n < c->slots;
}


static int conv_send(conv_t *c)
{
    size_t len;
    const char *req = bench_reqs_at(c->cv->reqs, c->sent, &len);
    int64_t now = bench_now_ns();

    if (c->pubsub)
        c->from[c->sent] = now;
    c->last_send = now;
    c->sent++;
    c->inflight++;
    return bench_conn_send(c->cv->writer, req, len);
}


static int conv_take_replies(conv_t *c)
{
    bench_conn_t *w = c->cv->writer;
    int rc = bench_conn_fill(w, true);
    int64_t now = bench_now_ns();
    bench_msg_t m;
    size_t slot;

    if (rc < 0)
        return rc;
    while ((rc = bench_conn_next(w, &m)) == 1) {
        if (m.push)
            continue;
        c->replies++;
        c->inflight -= c->inflight > 0;
        if (!m.ok) {
            c->cv->failures++;
            continue;
        }
        c->ok_replies++;
        if (!c->pubsub && m.has_version && conv_slot(c, m.version, &slot))
            c->from[slot] = now;
        else if (!c->pubsub)
            c->cv->strays++;
    }
    return rc;
}


static int conv_take_arrivals(conv_t *c)
{
    bench_conn_t *w = c->cv->watcher;
    int rc = bench_conn_fill(w, true);
    int64_t now = bench_now_ns();
    bench_msg_t m;
    size_t slot;

    if (rc < 0)
        return rc;
    while ((rc = bench_conn_next(w, &m)) == 1) {
        uint64_t n = m.version;

        if (m.reset) {
            c->cv->failures++;
            continue;
        }
        if (c->pubsub && m.body == NULL)
            continue; /* the subscription's confirmation */
        if (c->pubsub)
            n = bench_req_payload_seq(m.body, m.len);
        else if (!m.push || !m.has_version)
            continue;
        if (!conv_slot(c, n, &slot) || c->to[slot] != 0) {
            c->cv->strays++;
            continue;
        }
        c->to[slot] = now;
        c->cv->arrived++;
    }
    return rc;
}


/* How long ppoll() may wait: until the next write is due, or a while. */
static struct timespec conv_wait(const conv_t *c, int64_t now)
{
    const bench_conv_t *cv = c->cv;
    int64_t wait = IDLE_WAIT_NS;

    if (c->sent < cv->count && c->inflight < (size_t)cv->max_inflight) {
        int64_t due = c->t0 + (int64_t)c->sent * cv->interval_ns;

        wait = due > now ? due - now : 0;
    }
    return (struct timespec){wait / 1000000000, wait % 1000000000};
}


/* Sends what is due, then waits for either socket; one turn. */
static int conv_turn(conv_t *c)
{
    bench_conv_t *cv = c->cv;
    struct pollfd pfd[2] = {{.fd = cv->writer->fd, .events = POLLIN},
                            {.fd = cv->watcher->fd, .events = POLLIN}};
    int64_t now = bench_now_ns();
    struct timespec ts;
    int rc;

    /* Deadlines, not pauses: a late write goes at once, with no drift. */
    while (c->sent < cv->count && c->inflight < (size_t)cv->max_inflight &&
           now >= c->t0 + (int64_t)c->sent * cv->interval_ns) {
        if ((rc = conv_send(c)) < 0)
            return rc;
    }
    ts = conv_wait(c, now);
    rc = ppoll(pfd, 2, &ts, NULL);
    if (rc < 0)
        return errno == EINTR && !bench_proc_interrupted() ? 0 : MS_EIO;
    if (pfd[0].revents != 0 && (rc = conv_take_replies(c)) < 0)
        return rc;
    if (pfd[1].revents != 0 && (rc = conv_take_arrivals(c)) < 0)
        return rc;
    return 0;
}


static bool conv_done(const conv_t *c)
{
    return c->sent == c->cv->count && c->replies == c->cv->count &&
           c->cv->arrived >= c->ok_replies;
}


/* Latency of every write with both times; the rest are failures. */
static void conv_collect(conv_t *c, bench_samples_t *lat)
{
    bench_conv_t *cv = c->cv;

    for (size_t i = 0; i < c->slots; i++) {
        int64_t d;

        if (c->from[i] == 0 || c->to[i] == 0) {
            cv->failures += c->from[i] != 0 || (c->pubsub && i < cv->count);
            continue;
        }
        d = c->to[i] - c->from[i];
        if (d < 0) {
            cv->negatives++;
            d = 0;
        }
        bench_samples_add(lat, d);
    }
}


static int conv_run(bench_conv_t *cv, bool pubsub, bench_samples_t *lat)
{
    conv_t c = {.cv = cv, .pubsub = pubsub, .slots = cv->count * 2 + 16};
    int64_t deadline;
    size_t max_turns = cv->count * 64 + 100000;
    int rc = 0;

    cv->arrived = cv->negatives = cv->strays = 0;
    cv->failures = 0;
    bench_samples_reset(lat);
    c.from = calloc(c.slots, sizeof(*c.from));
    c.to = calloc(c.slots, sizeof(*c.to));
    if (c.from == NULL || c.to == NULL) {
        rc = MS_ENOMEM;
        goto done;
    }
    cv->watcher->scan_all = true;
    cv->writer->scan_all = true;

    c.t0 = bench_now_ns();
    deadline = c.t0 + (int64_t)cv->count * cv->interval_ns + DRAIN_NS;
    for (size_t turn = 0; !conv_done(&c) && rc == 0; turn++) {
        if (turn > max_turns || bench_now_ns() > deadline)
            break;
        rc = conv_turn(&c);
    }
    cv->rate = per_second(c.sent, c.t0, c.last_send + cv->interval_ns);
    conv_collect(&c, lat);
    cv->failures += (unsigned)(cv->count - c.replies);

done:
    free(c.from);
    free(c.to);
    return rc;
}


int bench_run_converge(bench_conv_t *cv, bench_samples_t *lat)
{
    return conv_run(cv, false, lat);
}


int bench_run_pubsub(bench_conv_t *cv, bench_samples_t *lat)
{
    return conv_run(cv, true, lat);
}
