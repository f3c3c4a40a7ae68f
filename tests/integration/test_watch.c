/*
 * test_watch.c - watch and push frames end to end: a watcher on sidecar C
 * sees every change of a 10,000-write burst made through sidecars A and B
 * exactly once and in version order, also when C's subscriber link is cut
 * mid-burst (the gap is read from the change log); filters, unwatch, own
 * writes, pushes queued by the client library while it waits for a reply;
 * a reset when the log no longer covers a gap and when Redis loses its
 * data; a watcher that never reads is cut off while others are served;
 * a value that is not JSON is pushed as nil; the CLI prints one JSON line
 * per event; bad watch requests; a lagging watcher's sidecar checks the
 * history instead of reading the log.
 *
 * Raw sockets carry the burst: one poll() loop writes to the writers and
 * reads every socket, so no side blocks another. Links are kept down for
 * a while by lowering Redis's maxclients to the clients still connected
 * before CLIENT KILL TYPE pubsub, so a gap is certain, not a race.
 * Single-threaded.
 */
#define _GNU_SOURCE /* pipe2 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "meshsync.h"

#define PER_WRITER 5000
#define BURST      (2 * PER_WRITER)
#define PUMP_MS    120000
#define WAIT_MS    10000
#define SPREAD     64 /* entries each writer cycles through */

/* The lagging watcher: writes queued while its sidecar is stopped. */
static const char *const debug_args[] = {"--log-level", "debug", NULL};
#define LAG_WRITES  300
#define LAG_VALUE   4000
#define LAG_CHANNEL "mesh:meshsync:changes:0"

/* Daemons that come back quickly once Redis takes connections again. */
static const char *const quick_args[] = {"--redis-backoff-max-ms", "200", NULL};
static const char *const short_log_args[] = {"--redis-backoff-max-ms", "200",
                                             "--log-length", "100", NULL};

/* --- raw pipelined connections ---------------------------------------- */

typedef struct conn_s {
    int fd;
    msgpack_sbuffer out; /* request frames, headers included */
    size_t sent;
    char *in; /* bytes read, not yet split into frames */
    size_t in_len;
    size_t in_cap;
    char **frames; /* frame bodies in arrival order */
    size_t *lens;
    size_t n;
    size_t cap;
    int64_t last_ms; /* when the latest frame arrived */
} conn_t;

static void conn_open(conn_t *c, const char *socket)
{
    memset(c, 0, sizeof(*c));
    c->fd = harness_unix_connect(socket);
    assert_true(c->fd >= 0);
    msgpack_sbuffer_init(&c->out);
}

static void conn_forget(conn_t *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->frames[i]);
    c->n = 0;
}

static void conn_free(conn_t *c)
{
    conn_forget(c);
    free(c->frames);
    free(c->lens);
    free(c->in);
    msgpack_sbuffer_destroy(&c->out);
    if (c->fd >= 0)
        close(c->fd);
}

static void conn_add(conn_t *c, const msgpack_sbuffer *body)
{
    unsigned char hdr[4] = {
        (unsigned char)(body->size >> 24), (unsigned char)(body->size >> 16),
        (unsigned char)(body->size >> 8), (unsigned char)body->size};

    msgpack_sbuffer_write(&c->out, (const char *)hdr, sizeof(hdr));
    msgpack_sbuffer_write(&c->out, body->data, body->size);
}

static void conn_keep(conn_t *c, const char *body, size_t n)
{
    if (c->n == c->cap) {
        c->cap = c->cap * 2 + 1024;
        c->frames = realloc(c->frames, c->cap * sizeof(*c->frames));
        c->lens = realloc(c->lens, c->cap * sizeof(*c->lens));
        assert_true(c->frames != NULL && c->lens != NULL);
    }
    c->frames[c->n] = malloc(n + 1);
    assert_non_null(c->frames[c->n]);
    memcpy(c->frames[c->n], body, n);
    c->lens[c->n++] = n;
    c->last_ms = harness_now_ms();
}

/* Moves every complete frame out of c->in. */
static void conn_split(conn_t *c)
{
    size_t off = 0;

    while (c->in_len - off >= 4) {
        const unsigned char *h = (const unsigned char *)c->in + off;
        size_t n =
            (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];

        if (c->in_len - off - 4 < n)
            break;
        conn_keep(c, c->in + off + 4, n);
        off += 4 + n;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
}

static void conn_read(conn_t *c)
{
    ssize_t n;

    if (c->in_cap - c->in_len < 65536) {
        c->in_cap = c->in_cap * 2 + 65536;
        c->in = realloc(c->in, c->in_cap);
        assert_non_null(c->in);
    }
    n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
    if (n == 0)
        fail_msg("the sidecar closed a connection after %zu frames", c->n);
    if (n > 0) {
        c->in_len += (size_t)n;
        conn_split(c);
    }
}

static void conn_write(conn_t *c)
{
    ssize_t n = send(c->fd, c->out.data + c->sent, c->out.size - c->sent,
                     MSG_DONTWAIT | MSG_NOSIGNAL);

    if (n > 0)
        c->sent += (size_t)n;
}

/*
 * Writes every connection's requests and reads every socket until step
 * returns true (it is called after each round), within PUMP_MS.
 */
static void pump(conn_t *conns, size_t n, bool (*step)(void *), void *arg)
{
    int64_t deadline = harness_now_ms() + PUMP_MS;
    struct pollfd pfd[4];

    assert_true(n <= 4);
    while (!step(arg)) {
        int64_t left = deadline - harness_now_ms();

        if (left <= 0)
            fail_msg("frames missing after %d ms: got %zu, %zu, %zu", PUMP_MS,
                     conns[0].n, n > 1 ? conns[1].n : 0,
                     n > 2 ? conns[2].n : 0);
        for (size_t i = 0; i < n; i++) {
            pfd[i].fd = conns[i].fd;
            pfd[i].events = POLLIN;
            if (conns[i].sent < conns[i].out.size)
                pfd[i].events |= POLLOUT;
        }
        if (poll(pfd, n, (int)left) <= 0)
            continue;
        for (size_t i = 0; i < n; i++) {
            if (pfd[i].revents & POLLOUT)
                conn_write(&conns[i]);
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                conn_read(&conns[i]);
        }
    }
}

/* Sends a request built into sb on c at once and waits for its reply. */
static void conn_call(conn_t *c, const msgpack_sbuffer *sb, uint64_t id,
                      harness_reply_t *r)
{
    harness_request_send(c->fd, sb);
    harness_reply_recv(c->fd, WAIT_MS, r);
    assert_int_equal(harness_reply_id(&r->u.data), id);
}

/* --- Redis: keeping the subscriber links down --------------------------- */

/*
 * Cuts every subscriber link (the sidecars' pubsub connections) and
 * keeps them from coming back: maxclients becomes the number of clients
 * left, so a reconnect is refused until unblock_subscribers().
 */
static void block_subscribers(harness_t *h)
{
    redisContext *c = harness_redis(h);
    redisReply *list = harness_command(c, "CLIENT LIST");
    long long total = 0, subs = 0;

    assert_int_equal(list->type, REDIS_REPLY_STRING);
    for (const char *p = list->str; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');

        total++;
        if (strstr(p, "flags=P") != NULL &&
            (eol == NULL || strstr(p, "flags=P") < eol))
            subs++;
        p = eol != NULL ? eol + 1 : NULL;
    }
    freeReplyObject(list);
    assert_true(subs > 0);
    freeReplyObject(
        harness_command(c, "CONFIG SET maxclients %lld", total - subs));
    assert_int_equal(harness_redis_int(c, "CLIENT KILL TYPE pubsub"), subs);
}

static void unblock_subscribers(harness_t *h)
{
    freeReplyObject(
        harness_command(harness_redis(h), "CONFIG SET maxclients 10000"));
}

/* --- pushes --------------------------------------------------------- */

/* A push frame, decoded. */
typedef struct push_s {
    msgpack_unpacked u;
    bool reset;
    const msgpack_object *kind;
    const msgpack_object *id;
    const msgpack_object *value;
    uint64_t version;
} push_t;

/* Decodes a frame that must be a push: no request id, "push" set. */
static void push_decode(const char *body, size_t len, push_t *p)
{
    const msgpack_object *m, *push, *version;

    harness_unpack_map(body, len, &p->u);
    m = &p->u.data;
    push = harness_map_get(m, "push");
    version = harness_map_get(m, "version");
    assert_non_null(push);
    assert_non_null(version);
    assert_int_equal(version->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    p->version = version->via.u64;
    p->reset = harness_obj_is_str(push, "reset");
    p->kind = harness_map_get(m, "kind");
    p->id = harness_map_get(m, "id");
    p->value = harness_map_get(m, "value");
    if (p->reset) {
        assert_int_equal(m->via.map.size, 2);
        return;
    }
    assert_true(harness_obj_is_str(push, "change"));
    assert_int_equal(m->via.map.size, 5);
    assert_non_null(p->kind);
    assert_non_null(p->value);
    assert_true(p->id != NULL && p->id->type == MSGPACK_OBJECT_STR);
}

/* The integer under key of a msgpack map, or -1. */
static int64_t map_int(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = harness_map_get(map, key);

    return o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER
               ? (int64_t)o->via.u64
               : -1;
}

/* --- the burst ---------------------------------------------------------- */

/* One write of the burst: who made it, and the version it got. */
typedef struct write_s {
    uint64_t version;
    int writer; /* 0: A (rooms), 1: B (conns) */
    int i;
} write_t;

/* Request i of a writer: {room|conn: "<r|c><i % SPREAD>", value: {i}}. */
static void add_write(conn_t *c, msgpack_sbuffer *sb, int writer, int i)
{
    msgpack_packer pk;
    char id[16];

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    snprintf(id, sizeof(id), "%c%d", writer == 0 ? 'r' : 'c', i % SPREAD);
    harness_request_begin(&pk, sb, 1 + (uint64_t)i,
                          writer == 0 ? "room.set" : "conn.set", 2);
    harness_pack_str(&pk, writer == 0 ? "room" : "conn");
    harness_pack_str(&pk, id);
    harness_pack_str(&pk, "value");
    msgpack_pack_map(&pk, 1);
    harness_pack_str(&pk, "i");
    msgpack_pack_int(&pk, i);
    conn_add(c, sb);
}

typedef struct burst_s {
    harness_t *h;
    conn_t conns[3]; /* A's writes, B's writes, C's watcher */
    bool cut;        /* cut C's subscriber link mid-burst */
    bool blocked;
    bool unblocked;
    int64_t started;
    int64_t writes_done;
} burst_t;

/* Done when every write is answered and every push has arrived. */
static bool burst_step(void *arg)
{
    burst_t *b = arg;
    size_t replies = b->conns[0].n + b->conns[1].n;

    if (b->cut && !b->blocked && replies >= BURST * 3 / 10) {
        block_subscribers(b->h);
        b->blocked = true;
    }
    if (b->blocked && !b->unblocked && replies >= BURST * 6 / 10) {
        unblock_subscribers(b->h);
        b->unblocked = true;
    }
    if (replies == BURST && b->writes_done == 0)
        b->writes_done = harness_now_ms();
    if (b->conns[2].n > BURST)
        fail_msg("more pushes than writes: %zu", b->conns[2].n);
    return replies == BURST && b->conns[2].n == BURST;
}

static int compare_writes(const void *a, const void *b)
{
    const write_t *x = a, *y = b;

    return x->version < y->version ? -1 : x->version > y->version;
}

/* The versions the writers got back, sorted: what the watcher must see. */
static write_t *burst_writes(const burst_t *b)
{
    write_t *w = calloc(BURST, sizeof(*w));
    size_t k = 0;

    assert_non_null(w);
    for (int writer = 0; writer < 2; writer++) {
        const conn_t *c = &b->conns[writer];

        assert_int_equal(c->n, PER_WRITER);
        for (size_t j = 0; j < c->n; j++) {
            msgpack_unpacked u;

            harness_unpack_map(c->frames[j], c->lens[j], &u);
            harness_reply_check_ok(&u.data);
            w[k].writer = writer;
            w[k].i = (int)harness_reply_id(&u.data) - 1;
            w[k++].version = harness_reply_version(&u.data);
            msgpack_unpacked_destroy(&u);
        }
    }
    qsort(w, BURST, sizeof(*w), compare_writes);
    for (size_t j = 1; j < BURST; j++)
        assert_true(w[j].version > w[j - 1].version);
    return w;
}

/* Push j must be write j: same version, entry and value. */
static void check_push(const char *body, size_t len, const write_t *w)
{
    char id[16];
    push_t p;

    push_decode(body, len, &p);
    assert_false(p.reset);
    if (p.version != w->version)
        fail_msg("push of version %" PRIu64 " where %" PRIu64 " was due",
                 p.version, w->version);
    snprintf(id, sizeof(id), "%c%d", w->writer == 0 ? 'r' : 'c', w->i % SPREAD);
    assert_true(harness_obj_is_str(p.kind, w->writer == 0 ? "room" : "conn"));
    assert_true(harness_obj_is_str(p.id, id));
    assert_int_equal(p.value->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(map_int(p.value, "i"), w->i);
    msgpack_unpacked_destroy(&p.u);
}

/* Sends {watch, all: true} on c and returns the version of the reply. */
static uint64_t watch_all_raw(conn_t *c, uint64_t id)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    harness_reply_t r;
    uint64_t version;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    harness_request_begin(&pk, &sb, id, "watch", 1);
    harness_pack_str(&pk, "all");
    msgpack_pack_true(&pk);
    conn_call(c, &sb, id, &r);
    harness_reply_check_ok(&r.u.data);
    version = harness_reply_version(&r.u.data);
    harness_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
    return version;
}

/* The changes the daemon's watch feed read from the log, from its log. */
static uint64_t logged_fill(harness_daemon_t *d)
{
    static const char line[] =
        "msg=\"watchers caught up from the change log\" changes=";
    const char *hit;
    uint64_t changes;

    assert_true(harness_daemon_wait_log(d, line, WAIT_MS));
    hit = strstr(harness_daemon_log(d), line);
    assert_non_null(hit);
    changes = strtoull(hit + sizeof(line) - 1, NULL, 10);
    assert_true(changes > 0);
    return changes;
}

static void run_burst(harness_t *h, bool cut)
{
    const char *const *args = cut ? quick_args : NULL;
    harness_daemon_t *da = harness_daemon_start(h, "a", args, NULL);
    harness_daemon_t *db = harness_daemon_start(h, "b", args, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", args, NULL);
    burst_t b = {.h = h, .cut = cut};
    msgpack_sbuffer sb;
    uint64_t start;
    write_t *w;

    conn_open(&b.conns[0], da->socket);
    conn_open(&b.conns[1], db->socket);
    conn_open(&b.conns[2], dc->socket);
    start = watch_all_raw(&b.conns[2], 1);
    msgpack_sbuffer_init(&sb);
    for (int i = 0; i < PER_WRITER; i++) {
        add_write(&b.conns[0], &sb, 0, i);
        add_write(&b.conns[1], &sb, 1, i);
    }
    msgpack_sbuffer_destroy(&sb);

    b.started = harness_now_ms();
    pump(b.conns, 3, burst_step, &b);
    print_message(
        "    %d writes through A and B in %" PRId64
        " ms; the last push reached the watcher on C after %" PRId64 " ms%s\n",
        BURST, b.writes_done - b.started, b.conns[2].last_ms - b.started,
        cut ? " (C's subscriber link cut mid-burst)" : "");

    w = burst_writes(&b);
    assert_true(w[0].version > start);
    for (size_t j = 0; j < BURST; j++)
        check_push(b.conns[2].frames[j], b.conns[2].lens[j], &w[j]);
    if (cut)
        print_message("    the gap filled from the log: %" PRIu64 " changes\n",
                      logged_fill(dc));
    assert_null(strstr(harness_daemon_log(dc), "watchers reset"));

    free(w);
    for (int i = 0; i < 3; i++)
        conn_free(&b.conns[i]);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(db);
    harness_daemon_stop_clean(dc);
}

static void test_burst_exactly_once(void **state)
{
    run_burst(*state, false);
}

static void test_gap_filled_from_log(void **state)
{
    run_burst(*state, true);
}

/* --- the client library ------------------------------------------------- */

/* Takes the next event within WAIT_MS, failing the test if none comes. */
static void next_event(meshsync_t *ms, meshsync_event_t *ev)
{
    int rc = meshsync_next_event(ms, ev, WAIT_MS);

    if (rc < 0)
        fail_msg("next_event: %s: %s", meshsync_errcode(ms),
                 meshsync_errmsg(ms));
    if (rc == 0)
        fail_msg("no event within %d ms", WAIT_MS);
}

/* The next event must be this change. */
static void expect_change(meshsync_t *ms, meshsync_kind_t kind, const char *id,
                          const char *json, uint64_t version)
{
    meshsync_event_t ev;

    next_event(ms, &ev);
    assert_int_equal(ev.reset, 0);
    assert_int_equal(ev.kind, kind);
    assert_string_equal(ev.id, id);
    assert_int_equal(ev.id_len, strlen(id));
    assert_string_equal(ev.data, json);
    assert_int_equal(ev.version, version);
    meshsync_event_free(&ev);
}

static uint64_t room_set(meshsync_t *ms, const char *room, const char *json)
{
    uint64_t v = 0;

    HARNESS_CALL_OK(ms, meshsync_room_set(ms, room, MESHSYNC_JSON, json,
                                          strlen(json), MESHSYNC_REPLACE, &v));
    return v;
}

static uint64_t conn_set(meshsync_t *ms, const char *conn, const char *json)
{
    uint64_t v = 0;

    HARNESS_CALL_OK(ms, meshsync_conn_set(ms, conn, MESHSYNC_JSON, json,
                                          strlen(json), MESHSYNC_REPLACE, &v));
    return v;
}

/* True when no event is queued or waiting: a ping's reply comes after
 * any push made before it. */
static bool no_event_pending(meshsync_t *ms)
{
    meshsync_event_t ev;
    int rc;

    HARNESS_CALL_OK(ms, meshsync_ping(ms));
    rc = meshsync_next_event(ms, &ev, 0);
    meshsync_event_free(&ev);
    assert_true(rc >= 0);
    return rc == 0;
}

static void test_filters_and_unwatch(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", NULL, NULL);
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(dc);
    meshsync_t *y = harness_client_open(dc), *both = harness_client_open(dc);
    const char *rooms[] = {"a"}, *conns[] = {"c1"};
    uint64_t start, v1, v3, v5, v7, v8, v9, got;
    meshsync_event_t ev;

    HARNESS_CALL_OK(x, meshsync_watch(x, rooms, 1, conns, 1, 0, &start));
    HARNESS_CALL_OK(both, meshsync_watch(both, rooms, 1, NULL, 0, 1, NULL));
    v1 = room_set(w, "a", "{\"n\":1}");
    room_set(w, "b", "{\"n\":2}");
    v3 = conn_set(w, "c1", "{\"n\":3}");
    conn_set(w, "c2", "{\"n\":4}");
    HARNESS_CALL_OK(w, meshsync_room_delete(w, "a", &v5));
    assert_true(v1 > start);

    /* Only what x watches, in order; a later event proves none between. */
    expect_change(x, MESHSYNC_ROOM, "a", "{\"n\":1}", v1);
    expect_change(x, MESHSYNC_CONN, "c1", "{\"n\":3}", v3);
    expect_change(x, MESHSYNC_ROOM, "a", "null", v5);

    /* Watching a room and everything: each change once. */
    for (uint64_t v = v1; v <= v5; v++) {
        next_event(both, &ev);
        assert_int_equal(ev.version, v);
        meshsync_event_free(&ev);
    }
    assert_true(no_event_pending(both));

    /* Unwatching one room keeps the connection. */
    HARNESS_CALL_OK(x, meshsync_unwatch(x, rooms, 1, NULL, 0, 0, &got));
    assert_int_equal(got, v5);
    room_set(w, "a", "{\"n\":6}");
    v7 = conn_set(w, "c1", "{\"n\":7}");
    expect_change(x, MESHSYNC_CONN, "c1", "{\"n\":7}", v7);

    /* unwatch {} ends everything: y, watching all, sees what x would. */
    HARNESS_CALL_OK(x, meshsync_unwatch(x, NULL, 0, NULL, 0, 0, NULL));
    HARNESS_CALL_OK(y, meshsync_watch(y, NULL, 0, NULL, 0, 1, &got));
    v8 = conn_set(w, "c1", "{\"n\":8}");
    v9 = room_set(w, "a", "{\"n\":9}");
    expect_change(y, MESHSYNC_CONN, "c1", "{\"n\":8}", v8);
    expect_change(y, MESHSYNC_ROOM, "a", "{\"n\":9}", v9);
    assert_true(no_event_pending(x));

    meshsync_free(w);
    meshsync_free(x);
    meshsync_free(y);
    meshsync_free(both);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

static void test_own_writes_and_queue(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", NULL, NULL);
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(dc);
    meshsync_t *z = harness_client_open(dc);
    meshsync_value_t v;
    meshsync_event_t ev;
    uint64_t own, other;

    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));

    /* A write through the watching handle itself comes back as an event. */
    own = conn_set(x, "me", "{\"o\":1}");
    expect_change(x, MESHSYNC_CONN, "me", "{\"o\":1}", own);

    /*
     * Once z reads the write back through C, C has pushed it to x; x's
     * ping reply follows that push, so the library queues the push while
     * it waits for the reply, and hands it out without waiting.
     */
    other = room_set(w, "q", "{\"p\":[1,2]}");
    HARNESS_CALL_OK(
        z, meshsync_room_get_min(z, "q", other, WAIT_MS, MESHSYNC_JSON, &v));
    meshsync_value_free(&v);
    HARNESS_CALL_OK(x, meshsync_ping(x));
    assert_int_equal(meshsync_next_event(x, &ev, 0), 1);
    assert_int_equal(ev.version, other);
    assert_string_equal(ev.data, "{\"p\":[1,2]}");
    meshsync_event_free(&ev);
    assert_int_equal(meshsync_next_event(x, &ev, 0), 0);
    assert_null(meshsync_errcode(x));

    meshsync_free(w);
    meshsync_free(x);
    meshsync_free(z);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

/* --- resets ------------------------------------------------------------- */

static void test_reset_when_log_trimmed(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", short_log_args, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", short_log_args, NULL);
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(dc);
    meshsync_event_t ev;
    uint64_t v = 0, after;
    char json[32];

    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));
    for (int i = 0; i < 5; i++) {
        snprintf(json, sizeof(json), "{\"i\":%d}", i);
        v = room_set(w, "t", json);
        expect_change(x, MESHSYNC_ROOM, "t", json, v);
    }

    /* C misses 500 changes; the log keeps about the last 100. */
    block_subscribers(h);
    for (int i = 0; i < 500; i++)
        v = room_set(w, "t", "{\"gone\":true}");
    unblock_subscribers(h);

    next_event(x, &ev);
    assert_int_equal(ev.reset, 1);
    assert_int_equal(ev.version, v);
    assert_null(ev.data);
    meshsync_event_free(&ev);
    assert_true(harness_daemon_wait_log(
        dc, "reason=\"the change log no longer reaches back\"", WAIT_MS));

    /* Changes after the reset's version follow as usual. */
    after = room_set(w, "t", "{\"back\":1}");
    assert_int_equal(after, v + 1);
    expect_change(x, MESHSYNC_ROOM, "t", "{\"back\":1}", after);

    meshsync_free(w);
    meshsync_free(x);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

static void test_reset_when_redis_lost_data(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", quick_args, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", quick_args, NULL);
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(dc);
    meshsync_event_t ev;
    uint64_t v;
    int resets = 0;

    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));
    for (int i = 0; i < 3; i++) {
        v = room_set(w, "lost", "{\"old\":true}");
        expect_change(x, MESHSYNC_ROOM, "lost", "{\"old\":true}", v);
    }

    /* A Redis without persistence comes back empty. */
    harness_redis_kill(h);
    harness_redis_start(h, NULL);
    assert_true(harness_daemon_wait_log(da, "state=live", WAIT_MS));
    assert_true(harness_daemon_wait_log(dc, "state=live", WAIT_MS));
    v = room_set(w, "new", "{\"new\":true}");

    /* A reset (or two: the history check and the mirror's rebuild may
     * each see the loss), then the new history's change. */
    for (int i = 0; i < 4; i++) {
        next_event(x, &ev);
        if (!ev.reset)
            break;
        resets++;
        meshsync_event_free(&ev);
    }
    assert_true(resets >= 1);
    assert_int_equal(ev.reset, 0);
    assert_string_equal(ev.id, "new");
    assert_int_equal(ev.version, v);
    meshsync_event_free(&ev);

    meshsync_free(w);
    meshsync_free(x);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

/*
 * A FLUSHALL right after the watch began: the first message after it is
 * not above the feed's position and no earlier message on the link shows
 * the fall; the feed must still notice (a reset) and go on.
 */
static void test_reset_after_flush(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", quick_args, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", quick_args, NULL);
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(dc);
    meshsync_value_t got;
    meshsync_event_t ev;
    uint64_t v = 0;
    int resets = 0;

    for (int i = 0; i < 3; i++)
        v = room_set(w, "old", "{}");
    HARNESS_CALL_OK(
        x, meshsync_room_get_min(x, "old", v, WAIT_MS, MESHSYNC_JSON, &got));
    meshsync_value_free(&got);
    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));

    freeReplyObject(harness_command(harness_redis(h), "FLUSHALL"));
    v = conn_set(w, "fresh", "{\"n\":1}");

    /*
     * A reset, then the new history's change, unless the reset already
     * covers it (its version is at or past the change's).
     */
    for (int i = 0; i < 4; i++) {
        bool done;

        next_event(x, &ev);
        resets += ev.reset;
        done = ev.reset ? ev.version >= v : ev.version == v;
        if (!ev.reset) {
            assert_true(resets >= 1);
            assert_string_equal(ev.id, "fresh");
        }
        meshsync_event_free(&ev);
        if (done)
            break;
        assert_true(i < 3);
    }
    assert_true(resets >= 1);

    meshsync_free(w);
    meshsync_free(x);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

/*
 * A change under the feed's position while C's subscriber lags (here: C
 * stopped while LAG_WRITES writes of 4 KB queue up behind an old change)
 * costs a check of the history, not a fill: a fill read the log page
 * after page, and the channel then brought the same changes again. The
 * watcher gets every change once, in order, either way.
 */
static void test_lagging_watcher_checks(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *dc;
    meshsync_t *w = harness_client_open(da), *x;
    redisContext *sub = harness_redis_connect(h);
    struct timeval tv = {WAIT_MS / 1000, 0};
    static char json[LAG_WRITES][LAG_VALUE + 32];
    uint64_t version[LAG_WRITES], xrange;
    void *old = NULL;

    /*
     * One change to publish again later; C starts after it, so its
     * channel has shown nothing newer (else a rebuild, by design).
     */
    assert_int_equal(redisSetTimeout(sub, tv), REDIS_OK);
    freeReplyObject(harness_command(sub, "SUBSCRIBE %s", LAG_CHANNEL));
    room_set(w, "lag", "0");
    assert_int_equal(redisGetReply(sub, &old), REDIS_OK);
    redisFree(sub);
    dc = harness_daemon_start(h, "c", debug_args, NULL);
    x = harness_client_open(dc);
    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));

    /* The watch's first fill done (it logs at debug), C stops. */
    if (!harness_daemon_wait_log(dc, "watchers caught up", WAIT_MS))
        fail_msg("no first fill; log:\n%s", harness_daemon_log(dc));
    assert_int_equal(kill(dc->pid, SIGSTOP), 0);
    xrange = harness_redis_calls(h, "xrange");
    freeReplyObject(
        harness_command(harness_redis(h), "PUBLISH %s %b", LAG_CHANNEL,
                        ((redisReply *)old)->element[2]->str,
                        (size_t)((redisReply *)old)->element[2]->len));
    freeReplyObject(old);
    for (int i = 0; i < LAG_WRITES; i++) {
        snprintf(json[i], sizeof(json[i]), "{\"i\":%d,\"pad\":\"%0*d\"}", i,
                 LAG_VALUE, 0);
        version[i] = room_set(w, "lag", json[i]);
    }
    assert_int_equal(kill(dc->pid, SIGCONT), 0);

    for (int i = 0; i < LAG_WRITES; i++)
        expect_change(x, MESHSYNC_ROOM, "lag", json[i], version[i]);
    assert_true(no_event_pending(x));

    /* One check by the feed, one by the mirror; a fill made 6 or more. */
    xrange = harness_redis_calls(h, "xrange") - xrange;
    print_message("  %" PRIu64 " XRANGE calls\n", xrange);
    assert_true(xrange <= 3);
    meshsync_free(w);
    meshsync_free(x);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

/*
 * A watch placed while Redis is down takes the sidecar's position; Redis
 * comes back with another history whose sequence is past it (restarted
 * empty, then 9 writes through another sidecar while A was stopped). The
 * first fill must tell: a reset, not the new history's changes 6 to 9 as
 * if they followed 5. It once pushed them.
 */
static void test_watch_placed_while_down(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", quick_args, NULL);
    harness_daemon_t *db;
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(da);
    meshsync_t *mb;
    meshsync_event_t ev;

    for (int i = 0; i < 5; i++)
        room_set(w, "old", "1");
    harness_redis_stop(h);
    if (!harness_daemon_wait_log(da, "state=down", WAIT_MS))
        fail_msg("a did not see Redis go; log:\n%s", harness_daemon_log(da));
    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));

    assert_int_equal(kill(da->pid, SIGSTOP), 0);
    harness_redis_start(h, NULL);
    db = harness_daemon_start(h, "b", NULL, NULL);
    mb = harness_client_open(db);
    for (int i = 0; i < 9; i++)
        room_set(mb, "new", "2");
    assert_int_equal(kill(da->pid, SIGCONT), 0);

    next_event(x, &ev);
    if (!ev.reset)
        fail_msg("pushed %s v%" PRIu64 " of another history, no reset", ev.id,
                 ev.version);
    meshsync_event_free(&ev);
    meshsync_free(mb);
    meshsync_free(w);
    meshsync_free(x);
    harness_daemon_stop_clean(db);
    harness_daemon_stop_clean(da);
}

/*
 * A FLUSHALL that no write follows: the sidecar's periodic history check
 * finds it, and its watchers must hear of it too (a reset), not keep the
 * flushed history until the next write.
 */
static void test_reset_after_quiet_flush(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", NULL, NULL);
    meshsync_t *w = harness_client_open(da), *x = harness_client_open(dc);
    meshsync_event_t ev;
    uint64_t v;

    HARNESS_CALL_OK(x, meshsync_watch(x, NULL, 0, NULL, 0, 1, NULL));
    v = conn_set(w, "a1", "{\"x\":2}");
    expect_change(x, MESHSYNC_CONN, "a1", "{\"x\":2}", v);

    freeReplyObject(harness_command(harness_redis(h), "FLUSHALL"));
    next_event(x, &ev);
    if (!ev.reset)
        fail_msg("after the flush: %s v%" PRIu64 ", not a reset", ev.id,
                 ev.version);
    meshsync_event_free(&ev);

    /* The new history's first write follows: once, no second reset. */
    v = conn_set(w, "a2", "1");
    expect_change(x, MESHSYNC_CONN, "a2", "1", v);
    meshsync_free(w);
    meshsync_free(x);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

/* --- a watcher that does not read ------------------------------------- */

#define BIG_VALUE  (40 * 1024)
#define BIG_WRITES 500

static void test_stalled_watcher_cut_off(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", NULL, NULL);
    meshsync_t *w = harness_client_open(da), *y = harness_client_open(dc);
    meshsync_t *p = harness_client_open(dc);
    char *json = malloc(BIG_VALUE + 32);
    uint64_t versions[BIG_WRITES];
    size_t seen = 0;
    meshsync_event_t ev;
    conn_t stalled;

    assert_non_null(json);
    snprintf(json, 16, "{\"blob\":\"");
    memset(json + 9, 'x', BIG_VALUE);
    strcpy(json + 9 + BIG_VALUE, "\"}");

    /* stalled asks for everything, then never reads again. */
    conn_open(&stalled, dc->socket);
    watch_all_raw(&stalled, 7);
    HARNESS_CALL_OK(y, meshsync_watch(y, NULL, 0, NULL, 0, 1, NULL));
    for (int i = 0; i < BIG_WRITES; i++) {
        versions[i] = room_set(w, "big", json);
        while (meshsync_next_event(y, &ev, 0) == 1) {
            assert_true(seen < BIG_WRITES);
            assert_int_equal(ev.version, versions[seen++]);
            meshsync_event_free(&ev);
        }
        if (i % 50 == 0)
            HARNESS_CALL_OK(p, meshsync_ping(p));
    }
    assert_true(harness_daemon_wait_log(dc, "msg=\"client cut off\"", WAIT_MS));

    /* The reader got everything; the daemon still answers. */
    while (seen < BIG_WRITES) {
        next_event(y, &ev);
        assert_int_equal(ev.version, versions[seen++]);
        meshsync_event_free(&ev);
    }
    HARNESS_CALL_OK(p, meshsync_ping(p));
    assert_true(harness_wait_closed(stalled.fd, WAIT_MS));

    /* Cut off once, with its reason. */
    assert_non_null(strstr(harness_daemon_log(dc), "reason=\"watcher does "
                                                   "not read"));
    assert_false(harness_daemon_wait_log(dc, "msg=\"client cut off\"", 0));

    conn_free(&stalled);
    free(json);
    meshsync_free(w);
    meshsync_free(y);
    meshsync_free(p);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

/* --- a value that is not JSON ------------------------------------------- */

static void test_unreadable_value_pushed_as_nil(void **state)
{
    harness_t *h = *state;
    const char *const scrub[] = {"--scrub-interval-ms", "100", NULL};
    harness_daemon_t *dc = harness_daemon_start(h, "c", scrub, NULL);
    meshsync_t *x = harness_client_open(dc);
    const char *rooms[] = {"bad"};
    meshsync_event_t ev;

    HARNESS_CALL_OK(x, meshsync_watch(x, rooms, 1, NULL, 0, 0, NULL));

    /* Written around meshsync; the scrub versions and publishes it. */
    freeReplyObject(harness_command(
        harness_redis(h), "HSET mesh:roommeta:bad data %s", "{not json"));
    next_event(x, &ev);
    assert_int_equal(ev.reset, 0);
    assert_string_equal(ev.id, "bad");
    assert_string_equal(ev.data, "null");
    assert_true(ev.version > 0);
    meshsync_event_free(&ev);
    assert_true(harness_daemon_wait_log(
        dc, "msg=\"unreadable value in a change, pushed as nil\"", WAIT_MS));

    meshsync_free(x);
    harness_daemon_stop_clean(dc);
}

/* --- requests the daemon refuses ---------------------------------------- */

/* Sends {watch, key: <packed by fn>} and returns the error code. */
static void expect_refused(conn_t *c, uint64_t id, const char *key,
                           void (*pack)(msgpack_packer *), const char *code)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    harness_reply_t r;
    const msgpack_object *got;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    harness_request_begin(&pk, &sb, id, "watch", 1);
    harness_pack_str(&pk, key);
    pack(&pk);
    conn_call(c, &sb, id, &r);
    got = harness_reply_error_code(&r.u.data);
    if (!harness_obj_is_str(got, code))
        fail_msg("watch with a bad '%s': want %s", key, code);
    harness_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static void pack_not_array(msgpack_packer *pk)
{
    harness_pack_str(pk, "lobby");
}

static void pack_empty_id(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    harness_pack_str(pk, "");
}

static void pack_number_id(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_int(pk, 5);
}

static void pack_too_many(msgpack_packer *pk)
{
    char id[16];

    msgpack_pack_array(pk, 10001);
    for (int i = 0; i < 10001; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        harness_pack_str(pk, id);
    }
}

static void pack_not_bool(msgpack_packer *pk)
{
    msgpack_pack_int(pk, 1);
}

static void test_bad_requests(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *dc = harness_daemon_start(h, "c", NULL, NULL);
    meshsync_t *ms = harness_client_open(dc);
    const char *ids[] = {"a", NULL};
    conn_t c;

    conn_open(&c, dc->socket);
    expect_refused(&c, 1, "rooms", pack_not_array, "invalid_request");
    expect_refused(&c, 2, "conns", pack_empty_id, "invalid_request");
    expect_refused(&c, 3, "rooms", pack_number_id, "invalid_request");
    expect_refused(&c, 4, "rooms", pack_too_many, "too_large");
    expect_refused(&c, 5, "all", pack_not_bool, "invalid_request");

    /* An unwatch of what nobody watches is fine; the session goes on. */
    HARNESS_CALL_OK(ms, meshsync_unwatch(ms, ids, 1, NULL, 0, 0, NULL));
    assert_int_equal(meshsync_watch(ms, ids, 2, NULL, 0, 0, NULL), -1);
    assert_string_equal(meshsync_errcode(ms), "invalid_request");
    HARNESS_CALL_OK(ms, meshsync_ping(ms));

    conn_free(&c);
    meshsync_free(ms);
    harness_daemon_stop_clean(dc);
}

/* --- the CLI -------------------------------------------------------------- */

/* Starts the CLI with args, its stdout on a pipe (*out). */
static pid_t cli_start(const char *const *args, int *out)
{
    char *argv[16] = {MESHSYNC_CLI_PATH};
    int p[2];
    pid_t pid;
    size_t n = 1;

    for (size_t i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 1);
        signal(SIGPIPE, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(MESHSYNC_CLI_PATH, argv);
        _exit(127);
    }
    close(p[1]);
    *out = p[0];
    return pid;
}

/* Reads fd to its end within WAIT_MS; returns what came (caller frees). */
static char *read_to_end(int fd)
{
    int64_t deadline = harness_now_ms() + WAIT_MS;
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);

    assert_non_null(buf);
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - harness_now_ms();
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            fail_msg("the CLI did not finish within %d ms", WAIT_MS);
        if (len + 1 == cap) {
            buf = realloc(buf, cap *= 2);
            assert_non_null(buf);
        }
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n >= 0);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

static void test_cli(void **state)
{
    harness_t *h = *state;
    const char *const debug[] = {"--log-level", "debug", NULL};
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *dc = harness_daemon_start(h, "c", debug, NULL);
    meshsync_t *w = harness_client_open(da);
    const char *const args[] = {"--socket", dc->socket, "watch", "--room",
                                "r",        "--conn",   "c\"q",  "--count",
                                "3",        NULL};
    char expected[512];
    uint64_t v1, v3, v4;
    harness_run_t run;
    int fd, status;
    char *out;
    pid_t pid;

    pid = cli_start(args, &fd);
    assert_true(harness_daemon_wait_log(dc, "msg=\"watch\"", WAIT_MS));
    v1 = room_set(w, "r", "{\"n\":1}");
    room_set(w, "x", "{\"n\":0}");
    v3 = conn_set(w, "c\"q", "{\"n\":[2]}");
    HARNESS_CALL_OK(w, meshsync_room_delete(w, "r", &v4));

    out = read_to_end(fd);
    close(fd);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    snprintf(expected, sizeof(expected),
             "{\"kind\":\"room\",\"id\":\"r\",\"value\":{\"n\":1},"
             "\"version\":%" PRIu64 "}\n"
             "{\"kind\":\"conn\",\"id\":\"c\\\"q\",\"value\":{\"n\":[2]},"
             "\"version\":%" PRIu64 "}\n"
             "{\"kind\":\"room\",\"id\":\"r\",\"value\":null,"
             "\"version\":%" PRIu64 "}\n",
             v1, v3, v4);
    assert_string_equal(out, expected);
    free(out);

    /* Usage: watch wants something to watch; --help documents it. */
    harness_cli_run(
        (const char *const[]){"--socket", dc->socket, "watch", NULL}, NULL,
        NULL, 0, &run);
    assert_int_equal(run.status, 2);
    harness_run_free(&run);
    harness_cli_run((const char *const[]){"--help", NULL}, NULL, NULL, 0, &run);
    assert_int_equal(run.status, 0);
    assert_non_null(strstr(run.out, "  watch "));
    assert_non_null(strstr(run.out, "--count N"));
    harness_run_free(&run);

    meshsync_free(w);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(dc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_burst_exactly_once,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_gap_filled_from_log,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_filters_and_unwatch,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_own_writes_and_queue,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_reset_when_log_trimmed,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_reset_when_redis_lost_data,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_lagging_watcher_checks,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_watch_placed_while_down,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_reset_after_quiet_flush,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_reset_after_flush,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_stalled_watcher_cut_off,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_value_pushed_as_nil,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_cli, harness_setup_redis,
                                        harness_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
