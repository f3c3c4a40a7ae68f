/*
 * test_concurrency.c - meshsyncd under pipelined load: 500 merges through
 * one sidecar and 500 deepMerges through another on the same connection at
 * the same time, none lost (in Redis and in both caches); and a burst of
 * 10,000 mixed requests on one socket, each answered exactly once.
 *
 * Requests are raw frames written without waiting for replies; one poll()
 * loop writes to and reads from every socket, so neither side can block
 * the other. Single-threaded.
 */
#include "harness.h"

#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "meshsync.h"

#define HOT_WRITES 500
#define BURST      10000
#define PUMP_MS    60000
#define WAIT_MS    10000

/* One socket's pipelined traffic. */
typedef struct pipe_s {
    int fd;
    msgpack_sbuffer out; /* every request frame, header included */
    size_t sent;
    char *in; /* bytes read, not yet split into frames */
    size_t in_len;
    size_t in_cap;
    char **replies; /* reply bodies in arrival order */
    size_t *reply_lens;
    size_t nreplies;
    size_t want; /* replies expected */
} pipe_t;

/* --- pipelined traffic ------------------------------------------------ */

static void pipe_init(pipe_t *p, const char *socket, size_t want)
{
    memset(p, 0, sizeof(*p));
    p->fd = harness_unix_connect(socket);
    assert_true(p->fd >= 0);
    msgpack_sbuffer_init(&p->out);
    p->want = want;
    p->replies = calloc(want, sizeof(*p->replies));
    p->reply_lens = calloc(want, sizeof(*p->reply_lens));
    assert_true(p->replies != NULL && p->reply_lens != NULL);
}

static void pipe_free(pipe_t *p)
{
    for (size_t i = 0; i < p->nreplies; i++)
        free(p->replies[i]);
    free(p->replies);
    free(p->reply_lens);
    free(p->in);
    msgpack_sbuffer_destroy(&p->out);
    close(p->fd);
}

/* Appends one request frame built by pack into p's output. */
static void pipe_add(pipe_t *p, const msgpack_sbuffer *body)
{
    unsigned char hdr[4] = {
        (unsigned char)(body->size >> 24), (unsigned char)(body->size >> 16),
        (unsigned char)(body->size >> 8), (unsigned char)body->size};

    msgpack_sbuffer_write(&p->out, (const char *)hdr, sizeof(hdr));
    msgpack_sbuffer_write(&p->out, body->data, body->size);
}

/* Moves every complete frame out of p->in into p->replies. */
static void pipe_split(pipe_t *p)
{
    size_t off = 0;

    while (p->in_len - off >= 4) {
        const unsigned char *h = (const unsigned char *)p->in + off;
        size_t n =
            (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];

        if (p->in_len - off - 4 < n)
            break;
        if (p->nreplies == p->want)
            fail_msg("more replies than the %zu requests", p->want);
        p->replies[p->nreplies] = malloc(n + 1);
        assert_non_null(p->replies[p->nreplies]);
        memcpy(p->replies[p->nreplies], p->in + off + 4, n);
        p->reply_lens[p->nreplies++] = n;
        off += 4 + n;
    }
    memmove(p->in, p->in + off, p->in_len - off);
    p->in_len -= off;
}

static void pipe_read(pipe_t *p)
{
    ssize_t n;

    if (p->in_cap - p->in_len < 65536) {
        p->in_cap = p->in_cap * 2 + 65536;
        p->in = realloc(p->in, p->in_cap);
        assert_non_null(p->in);
    }
    n = recv(p->fd, p->in + p->in_len, p->in_cap - p->in_len, MSG_DONTWAIT);
    if (n == 0)
        fail_msg("the sidecar closed the connection after %zu replies",
                 p->nreplies);
    if (n > 0) {
        p->in_len += (size_t)n;
        pipe_split(p);
    }
}

static void pipe_write(pipe_t *p)
{
    ssize_t n = send(p->fd, p->out.data + p->sent, p->out.size - p->sent,
                     MSG_DONTWAIT | MSG_NOSIGNAL);

    if (n > 0)
        p->sent += (size_t)n;
}

/*
 * Sends every pipe's requests and reads until each has all its replies,
 * on all sockets at once, within PUMP_MS.
 */
static void pump(pipe_t *pipes, size_t n)
{
    int64_t deadline = harness_now_ms() + PUMP_MS;
    struct pollfd pfd[4];
    size_t done = 0;

    assert_true(n <= 4);
    while (done < n) {
        int64_t left = deadline - harness_now_ms();

        if (left <= 0)
            fail_msg("pipelined replies missing after %d ms", PUMP_MS);
        for (size_t i = 0; i < n; i++) {
            pfd[i].fd = pipes[i].fd;
            pfd[i].events = POLLIN;
            if (pipes[i].sent < pipes[i].out.size)
                pfd[i].events |= POLLOUT;
        }
        if (poll(pfd, n, (int)left) <= 0)
            continue;
        done = 0;
        for (size_t i = 0; i < n; i++) {
            if (pfd[i].revents & POLLOUT)
                pipe_write(&pipes[i]);
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                pipe_read(&pipes[i]);
            done += pipes[i].nreplies == pipes[i].want;
        }
    }
}

/* --- replies ---------------------------------------------------------- */

typedef struct reply_s {
    msgpack_unpacked u;
    uint64_t id;
    const msgpack_object *version; /* NULL when absent */
} reply_t;

/* Unpacks reply i of p, which must be ok; free with reply_free(). */
static void reply_ok(const pipe_t *p, size_t i, reply_t *r)
{
    harness_unpack_map(p->replies[i], p->reply_lens[i], &r->u);
    r->id = harness_reply_id(&r->u.data);
    harness_reply_check_ok(&r->u.data);
    r->version = harness_map_get(&r->u.data, "version");
}

static void reply_free(reply_t *r)
{
    msgpack_unpacked_destroy(&r->u);
}

/* --- 1,000 merges on one connection ----------------------------------- */

/* {"a<i>": i} as a merge, or {"b<i>": {"n": i}} as a deepMerge. */
static void add_hot_write(pipe_t *p, msgpack_sbuffer *sb, uint64_t id,
                          bool deep, int i)
{
    msgpack_packer pk;
    char key[16];

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    harness_request_begin(&pk, sb, id, "conn.set", 3);
    harness_pack_str(&pk, "conn");
    harness_pack_str(&pk, "hot");
    harness_pack_str(&pk, "strategy");
    harness_pack_str(&pk, deep ? "deepMerge" : "merge");
    harness_pack_str(&pk, "value");
    msgpack_pack_map(&pk, 1);
    snprintf(key, sizeof(key), "%c%d", deep ? 'b' : 'a', i);
    harness_pack_str(&pk, key);
    if (deep) {
        msgpack_pack_map(&pk, 1);
        harness_pack_str(&pk, "n");
    }
    msgpack_pack_int(&pk, i);
    pipe_add(p, sb);
}

/* Fails unless v holds a0..a499 = i and b0..b499 = {"n": i}, nothing else. */
static void expect_hot_value(const char *json, const char *where)
{
    json_error_t jerr;
    json_t *v = json_loads(json, 0, &jerr);
    char key[16];

    if (v == NULL || !json_is_object(v))
        fail_msg("%s: not a JSON object: %s", where, jerr.text);
    assert_int_equal(json_object_size(v), 2 * HOT_WRITES);
    for (int i = 0; i < HOT_WRITES; i++) {
        json_t *b;

        snprintf(key, sizeof(key), "a%d", i);
        if (json_integer_value(json_object_get(v, key)) != i)
            fail_msg("%s: %s lost or wrong", where, key);
        snprintf(key, sizeof(key), "b%d", i);
        b = json_object_get(v, key);
        if (!json_is_object(b) || json_object_size(b) != 1 ||
            json_integer_value(json_object_get(b, "n")) != i)
            fail_msg("%s: %s lost or wrong", where, key);
    }
    json_decref(v);
}

/* Checks every reply of p and returns the largest version among them. */
static uint64_t check_write_replies(const pipe_t *p, uint64_t first_id)
{
    char *seen = calloc(p->want, 1);
    uint64_t max = 0;

    assert_non_null(seen);
    for (size_t i = 0; i < p->nreplies; i++) {
        uint64_t version;
        reply_t r;

        reply_ok(p, i, &r);
        assert_true(r.id >= first_id && r.id < first_id + p->want);
        assert_int_equal(seen[r.id - first_id], 0);
        seen[r.id - first_id] = 1;
        version = harness_reply_version(&r.u.data);
        if (version > max)
            max = version;
        reply_free(&r);
    }
    free(seen);
    return max;
}

static void expect_cached(const harness_daemon_t *d, uint64_t version)
{
    meshsync_t *ms = harness_client_open(d);
    meshsync_value_t v;

    HARNESS_CALL_OK(ms, meshsync_conn_get_min(ms, "hot", version, WAIT_MS,
                                              MESHSYNC_JSON, &v));
    assert_int_equal(v.version, version);
    assert_int_equal(v.stale, 0);
    expect_hot_value(v.data, d->socket);
    meshsync_value_free(&v);
    meshsync_free(ms);
}

static void test_concurrent_merges(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *db = harness_daemon_start(h, "b", NULL, NULL);
    pipe_t pipes[2];
    msgpack_sbuffer sb;
    uint64_t max_a, max_b, max;
    char *hot;

    pipe_init(&pipes[0], da->socket, HOT_WRITES);
    pipe_init(&pipes[1], db->socket, HOT_WRITES);
    msgpack_sbuffer_init(&sb);
    for (int i = 0; i < HOT_WRITES; i++) {
        add_hot_write(&pipes[0], &sb, 1 + (uint64_t)i, false, i);
        add_hot_write(&pipes[1], &sb, 1 + (uint64_t)i, true, i);
    }
    msgpack_sbuffer_destroy(&sb);
    pump(pipes, 2);

    max_a = check_write_replies(&pipes[0], 1);
    max_b = check_write_replies(&pipes[1], 1);
    max = max_a > max_b ? max_a : max_b;

    /* Every write got its own version from the one sequence. */
    assert_int_equal(
        harness_redis_int(harness_redis(h), "GET mesh:meshsync:seq"),
        2 * HOT_WRITES);
    assert_int_equal(max, 2 * HOT_WRITES);

    hot = harness_redis_hget(h, "mesh:connection-meta", "hot");
    assert_non_null(hot);
    expect_hot_value(hot, "redis");
    free(hot);
    expect_cached(da, max);
    expect_cached(db, max);

    pipe_free(&pipes[0]);
    pipe_free(&pipes[1]);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(db);
}

/* --- a burst on one socket -------------------------------------------- */

/* Request i: a ping, a room.set or a room.get, in turn. */
static void add_burst_request(pipe_t *p, msgpack_sbuffer *sb, uint64_t id)
{
    msgpack_packer pk;
    char room[32];

    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    snprintf(room, sizeof(room), "burst-%" PRIu64, id % 97);
    switch (id % 3) {
    case 0:
        harness_request_begin(&pk, sb, id, "ping", 0);
        break;
    case 1:
        harness_request_begin(&pk, sb, id, "room.set", 2);
        harness_pack_str(&pk, "room");
        harness_pack_str(&pk, room);
        harness_pack_str(&pk, "value");
        msgpack_pack_map(&pk, 1);
        harness_pack_str(&pk, "i");
        msgpack_pack_uint64(&pk, id);
        break;
    default:
        harness_request_begin(&pk, sb, id, "room.get", 1);
        harness_pack_str(&pk, "room");
        harness_pack_str(&pk, room);
        break;
    }
    pipe_add(p, sb);
}

/* The reply to request id carries what its operation answers. */
static void check_burst_reply(const reply_t *r)
{
    const msgpack_object *value = harness_map_get(&r->u.data, "value");

    switch (r->id % 3) {
    case 0:
        assert_true(harness_obj_is_str(value, "pong"));
        break;
    case 1:
        assert_non_null(r->version);
        break;
    default:
        assert_non_null(value);
        assert_true(value->type == MSGPACK_OBJECT_NIL ||
                    value->type == MSGPACK_OBJECT_MAP);
        assert_non_null(r->version);
        break;
    }
}

static void test_burst(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    char *seen = calloc(BURST + 1, 1);
    msgpack_sbuffer sb;
    pipe_t p;

    assert_non_null(seen);
    pipe_init(&p, d->socket, BURST);
    msgpack_sbuffer_init(&sb);
    for (uint64_t id = 1; id <= BURST; id++)
        add_burst_request(&p, &sb, id);
    msgpack_sbuffer_destroy(&sb);
    pump(&p, 1);

    assert_int_equal(p.nreplies, BURST);
    for (size_t i = 0; i < p.nreplies; i++) {
        reply_t rep;

        reply_ok(&p, i, &rep);
        assert_true(rep.id >= 1 && rep.id <= BURST);
        if (seen[rep.id])
            fail_msg("request %" PRIu64 " answered twice", rep.id);
        seen[rep.id] = 1;
        check_burst_reply(&rep);
        reply_free(&rep);
    }

    /* Each set's reply came after Redis had it. */
    assert_int_equal(
        harness_redis_int(harness_redis(h), "GET mesh:meshsync:seq"),
        (BURST + 2) / 3);

    free(seen);
    pipe_free(&p);
    harness_daemon_stop_clean(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_concurrent_merges,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_burst, harness_setup_redis,
                                        harness_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
