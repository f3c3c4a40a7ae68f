/*
 * test_bulk.c - bulk reads end to end: conn.list and room.list (every live
 * entry once, in byte order, tombstones skipped, cursors that name no
 * entry, ids with ':' and multibyte UTF-8, the limit, pages ending at
 * about 1 MiB), conn.mget and room.mget (request order, missing entries,
 * the id count and reply size limits), bad arguments over the raw
 * protocol while another client is served, stale answers while Redis is
 * down, the CLI's list and mget, and a scale run: 100,000 connections
 * written straight into Redis, paged and mget'd through the daemon while
 * its peak RSS is watched.
 *
 * Each test starts its own redis-server and daemon.
 */
#define _GNU_SOURCE /* memmem */

#include "harness.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "meshsync.h"

#define WAIT_MS 5000

typedef enum { CONN = 0, ROOM = 1 } kind_t;

/* Rooms with odd ids, in no particular order; two are deleted. */
static const char *const odd_rooms[] = {
    "lobby",
    "a:b:c",
    "a",
    "B",
    "a:",
    "\xc3\xa9",                 /* é */
    "\xe6\x97\xa5\xe6\x9c\xac", /* 日本 */
    "\xf0\x9f\x98\x80",         /* an emoji */
    "gone",
    "zz-gone",
};
static const char *const odd_values[] = {
    "{\"topic\":\"General\"}", "[1,2,3]", "1",   "\"upper\"", "{}",
    "{\"k\":\"v\"}",           "true",    "2.5", "0",         "0",
};
#define N_ODD     (sizeof(odd_rooms) / sizeof(odd_rooms[0]))
#define N_ODD_DEL 2 /* the last ones */

/* --- helpers ---------------------------------------------------------- */

static uint64_t put(meshsync_t *ms, kind_t kind, const char *id,
                    const char *json)
{
    uint64_t version = 0;

    if (kind == ROOM)
        HARNESS_CALL_OK(ms, meshsync_room_set(ms, id, MESHSYNC_JSON, json,
                                              strlen(json), MESHSYNC_REPLACE,
                                              &version));
    else
        HARNESS_CALL_OK(ms, meshsync_conn_set(ms, id, MESHSYNC_JSON, json,
                                              strlen(json), MESHSYNC_REPLACE,
                                              &version));
    assert_true(version > 0);
    return version;
}

static uint64_t del(meshsync_t *ms, kind_t kind, const char *id)
{
    uint64_t version = 0;

    if (kind == ROOM)
        HARNESS_CALL_OK(ms, meshsync_room_delete(ms, id, &version));
    else
        HARNESS_CALL_OK(ms, meshsync_conn_close(ms, id, &version));
    return version;
}

static int list(meshsync_t *ms, kind_t kind, const char *after, size_t limit,
                meshsync_format_t format, meshsync_page_t *page)
{
    if (kind == ROOM)
        return meshsync_room_list(ms, after, limit, format, page);
    return meshsync_conn_list(ms, after, limit, format, page);
}

static int mget(meshsync_t *ms, kind_t kind, const char *const *ids, size_t n,
                meshsync_format_t format, meshsync_value_t *out)
{
    if (kind == ROOM)
        return meshsync_room_mget(ms, ids, n, format, out);
    return meshsync_conn_mget(ms, ids, n, format, out);
}

/* A growing text buffer. */
typedef struct text_s {
    char *s;
    size_t len;
    size_t cap;
} text_t;

static void text_add(text_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void text_add(text_t *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = (t->len + (size_t)n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        assert_non_null(t->s);
    }
    va_start(ap, fmt);
    vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

/*
 * Pages through a kind, limit entries at a time, checking that ids rise
 * strictly in byte order and that every page but the last has a next
 * (its last id); returns "id=value@version\n" per entry (free it) and
 * the number of pages in *pages.
 */
static char *list_all(meshsync_t *ms, kind_t kind, size_t limit, int *pages)
{
    text_t t = {0};
    char *after = NULL;
    char *prev = NULL;

    text_add(&t, "%s", "");
    *pages = 0;
    do {
        meshsync_page_t p;

        assert_true(*pages < 100000);
        HARNESS_CALL_OK(ms, list(ms, kind, after, limit, MESHSYNC_JSON, &p));
        (*pages)++;
        if (limit > 0)
            assert_true(p.count <= limit);
        assert_int_equal(p.stale, 0);
        for (size_t i = 0; i < p.count; i++) {
            const meshsync_item_t *it = &p.items[i];

            if (prev != NULL && strcmp(prev, it->id) >= 0)
                fail_msg("'%s' listed after '%s'", it->id, prev);
            free(prev);
            prev = strdup(it->id);
            text_add(&t, "%s=%s@%" PRIu64 "\n", it->id, it->data, it->version);
        }
        if (p.next != NULL)
            assert_string_equal(p.next, p.items[p.count - 1].id);
        free(after);
        after = p.next;
        p.next = NULL;
        meshsync_page_free(&p);
    } while (after != NULL);
    free(prev);
    return t.s;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * What list_all must return for the ids given (each read with a get,
 * which the tests elsewhere check), in byte order; free it.
 */
static char *expected_list(meshsync_t *ms, kind_t kind, const char **ids,
                           size_t n)
{
    text_t t = {0};

    text_add(&t, "%s", "");
    qsort(ids, n, sizeof(*ids), cmp_str);
    for (size_t i = 0; i < n; i++) {
        meshsync_value_t v;

        if (kind == ROOM)
            HARNESS_CALL_OK(ms,
                            meshsync_room_get(ms, ids[i], MESHSYNC_JSON, &v));
        else
            HARNESS_CALL_OK(ms,
                            meshsync_conn_get(ms, ids[i], MESHSYNC_JSON, &v));
        text_add(&t, "%s=%s@%" PRIu64 "\n", ids[i], v.data, v.version);
        meshsync_value_free(&v);
    }
    return t.s;
}

/* Writes odd_rooms, deletes the last N_ODD_DEL, adds two connections. */
static void write_odd(meshsync_t *ms)
{
    for (size_t i = 0; i < N_ODD; i++)
        put(ms, ROOM, odd_rooms[i], odd_values[i]);
    for (size_t i = N_ODD - N_ODD_DEL; i < N_ODD; i++)
        del(ms, ROOM, odd_rooms[i]);
    put(ms, CONN, "c2", "{\"role\":\"admin\"}");
    put(ms, CONN, "c1", "{\"role\":\"user\"}");
}

/* The first id of a page that starts after `after`, or NULL if empty. */
static char *first_after(meshsync_t *ms, kind_t kind, const char *after)
{
    meshsync_page_t p;
    char *id;

    HARNESS_CALL_OK(ms, list(ms, kind, after, 1, MESHSYNC_JSON, &p));
    id = p.count > 0 ? strdup(p.items[0].id) : NULL;
    if (p.count == 0)
        assert_null(p.next);
    meshsync_page_free(&p);
    return id;
}

static void expect_first_after(meshsync_t *ms, kind_t kind, const char *after,
                               const char *want)
{
    char *got = first_after(ms, kind, after);

    if (want == NULL && got != NULL)
        fail_msg("after '%s': got '%s', want an empty page", after, got);
    if (want != NULL && (got == NULL || strcmp(got, want) != 0))
        fail_msg("after '%s': got '%s', want '%s'", after,
                 got != NULL ? got : "(empty)", want);
    free(got);
}

/* --- raw protocol helpers --------------------------------------------- */

typedef struct raw_s {
    int fd;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t next_id;
} raw_t;

static void raw_open(raw_t *r, const harness_daemon_t *d)
{
    r->fd = harness_unix_connect(d->socket);
    assert_true(r->fd >= 0);
    msgpack_sbuffer_init(&r->sb);
    msgpack_packer_init(&r->pk, &r->sb, msgpack_sbuffer_write);
    r->next_id = 1;
}

static void raw_close(raw_t *r)
{
    close(r->fd);
    msgpack_sbuffer_destroy(&r->sb);
}

static uint64_t raw_begin(raw_t *r, const char *op, size_t nmore)
{
    uint64_t id = r->next_id++;

    harness_request_begin(&r->pk, &r->sb, id, op, nmore);
    return id;
}

/*
 * Sends what raw_begin started and expects the error code, with a
 * message naming `mentions` (when not NULL).
 */
static void raw_expect_error(raw_t *r, uint64_t id, const char *code,
                             const char *mentions)
{
    harness_reply_t rep;
    const msgpack_object *got;
    const msgpack_object *err;
    const msgpack_object *msg;

    harness_request_send(r->fd, &r->sb);
    harness_reply_recv(r->fd, WAIT_MS, &rep);
    assert_int_equal(harness_reply_id(&rep.u.data), id);
    got = harness_reply_error_code(&rep.u.data);
    if (got == NULL || !harness_obj_is_str(got, code))
        fail_msg("request %" PRIu64 ": want error %s", id, code);
    err = harness_map_get(&rep.u.data, "error");
    msg = harness_map_get(err, "message");
    assert_non_null(msg);
    if (mentions != NULL && (msg->type != MSGPACK_OBJECT_STR ||
                             memmem(msg->via.str.ptr, msg->via.str.size,
                                    mentions, strlen(mentions)) == NULL))
        fail_msg("request %" PRIu64 ": message '%.*s' does not name %s", id,
                 (int)msg->via.str.size, msg->via.str.ptr, mentions);
    harness_reply_free(&rep);
}

/* Sends what raw_begin started; the reply must be ok. Free rep. */
static void raw_expect_ok(raw_t *r, uint64_t id, harness_reply_t *rep)
{
    harness_request_send(r->fd, &r->sb);
    harness_reply_recv_ok(r->fd, id, WAIT_MS, rep);
}

static void raw_list_limit(raw_t *r, const char *code, void (*pack)(raw_t *))
{
    uint64_t id = raw_begin(r, "room.list", 1);

    harness_pack_str(&r->pk, "limit");
    pack(r);
    raw_expect_error(r, id, code, "'limit'");
}

static void pack_zero(raw_t *r)
{
    msgpack_pack_uint64(&r->pk, 0);
}
static void pack_10001(raw_t *r)
{
    msgpack_pack_uint64(&r->pk, 10001);
}
static void pack_minus(raw_t *r)
{
    msgpack_pack_int64(&r->pk, -1);
}
static void pack_text(raw_t *r)
{
    harness_pack_str(&r->pk, "10");
}
static void pack_float(raw_t *r)
{
    msgpack_pack_double(&r->pk, 1.5);
}
static void pack_true(raw_t *r)
{
    msgpack_pack_true(&r->pk);
}
static void pack_array(raw_t *r)
{
    msgpack_pack_array(&r->pk, 1);
    harness_pack_str(&r->pk, "a");
}
static void pack_big(raw_t *r)
{
    msgpack_pack_uint64(&r->pk, UINT64_MAX);
}

/* --- tests ------------------------------------------------------------ */

/*
 * Every live entry exactly once, in byte order, whatever the page size;
 * deleted rooms left out; connections and rooms kept apart.
 */
static void test_list_order(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    const char *live[N_ODD];
    const char *conns[] = {"c2", "c1"};
    const size_t limits[] = {1, 2, 3, 7, 0, 10000};
    size_t n_live = N_ODD - N_ODD_DEL;
    char *want;
    char *got;
    int pages;

    /* Nothing yet: one empty page that is the last. */
    got = list_all(ms, ROOM, 0, &pages);
    assert_string_equal(got, "");
    assert_int_equal(pages, 1);
    free(got);

    write_odd(ms);
    memcpy(live, odd_rooms, n_live * sizeof(live[0]));
    want = expected_list(ms, ROOM, live, n_live);
    assert_string_equal(live[0], "B");
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        size_t per = limits[i] > 0 ? limits[i] : 1000;

        got = list_all(ms, ROOM, limits[i], &pages);
        assert_string_equal(got, want);

        /* A page that reaches the end says so: no empty page follows. */
        assert_int_equal(pages, (n_live + per - 1) / per);
        free(got);
    }
    free(want);

    want = expected_list(ms, CONN, conns, 2);
    got = list_all(ms, CONN, 1, &pages);
    assert_string_equal(got, want);
    assert_int_equal(pages, 2);
    free(got);
    free(want);

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* after names any id: absent, deleted, odd bytes, or past the last. */
static void test_list_after(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    meshsync_page_t p;

    write_odd(ms);
    expect_first_after(ms, ROOM, NULL, "B");
    expect_first_after(ms, ROOM, "", "B");
    expect_first_after(ms, ROOM, "A", "B");
    expect_first_after(ms, ROOM, "B", "a");
    expect_first_after(ms, ROOM, "a:a", "a:b:c");
    expect_first_after(ms, ROOM, "a:b", "a:b:c");
    expect_first_after(ms, ROOM, "gone", "lobby");
    expect_first_after(ms, ROOM, "lobby", "\xc3\xa9");
    expect_first_after(ms, ROOM, "\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac");
    expect_first_after(ms, ROOM, "\xe6\x97\xa5", "\xe6\x97\xa5\xe6\x9c\xac");
    expect_first_after(ms, ROOM, "\xf0\x9f\x98\x80", NULL);
    expect_first_after(ms, ROOM, "\xf4\x8f\xbf\xbf", NULL);
    expect_first_after(ms, CONN, "c1", "c2");
    expect_first_after(ms, CONN, "c2", NULL);

    /* An id longer than get allows is still a cursor. */
    {
        char long_id[600];

        memset(long_id, 'a', sizeof(long_id) - 1);
        long_id[sizeof(long_id) - 1] = '\0';
        expect_first_after(ms, ROOM, long_id, "lobby");
    }

    /* The msgpack format hands over the stored bytes. */
    HARNESS_CALL_OK(ms, list(ms, ROOM, "a:", 1, MESHSYNC_MSGPACK, &p));
    assert_int_equal(p.count, 1);
    assert_string_equal(p.items[0].id, "a:b:c");
    assert_int_equal(p.items[0].id_len, 5);
    assert_int_equal(p.items[0].len, 4);
    assert_memory_equal(p.items[0].data, "\x93\x01\x02\x03", 4);
    assert_string_equal(p.next, "a:b:c");
    meshsync_page_free(&p);
    assert_null(p.items);

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/*
 * Bad list and mget arguments get invalid_request (too_large for an id
 * past the limit) naming the field; the connection stays usable and
 * another client is served meanwhile.
 */
static void test_bad_arguments(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *other = harness_client_open(d);
    void (*bad_limits[])(raw_t *) = {pack_zero, pack_10001, pack_minus,
                                     pack_text, pack_float, pack_big};
    void (*bad_afters[])(raw_t *) = {pack_zero, pack_true, pack_array,
                                     pack_float};
    char long_id[258];
    harness_reply_t rep;
    meshsync_value_t v[2];
    const char *null_ids[] = {"a", NULL};
    raw_t r;
    uint64_t id;

    put(other, ROOM, "a", "1");
    raw_open(&r, d);
    for (size_t i = 0; i < sizeof(bad_limits) / sizeof(bad_limits[0]); i++)
        raw_list_limit(&r, "invalid_request", bad_limits[i]);
    for (size_t i = 0; i < sizeof(bad_afters) / sizeof(bad_afters[0]); i++) {
        id = raw_begin(&r, "conn.list", 1);
        harness_pack_str(&r.pk, "after");
        bad_afters[i](&r);
        raw_expect_error(&r, id, "invalid_request", "'after'");
    }

    /* The bounds themselves, and after nil, are fine. */
    id = raw_begin(&r, "room.list", 2);
    harness_pack_str(&r.pk, "limit");
    msgpack_pack_uint64(&r.pk, 10000);
    harness_pack_str(&r.pk, "after");
    msgpack_pack_nil(&r.pk);
    raw_expect_ok(&r, id, &rep);
    assert_int_equal(harness_map_get(&rep.u.data, "items")->via.array.size, 1);
    assert_int_equal(harness_map_get(&rep.u.data, "next")->type,
                     MSGPACK_OBJECT_NIL);
    assert_true(harness_map_get(&rep.u.data, "stale")->type ==
                MSGPACK_OBJECT_BOOLEAN);
    assert_null(harness_map_get(&rep.u.data, "behind"));
    harness_reply_free(&rep);
    HARNESS_CALL_OK(other, meshsync_ping(other));

    /* mget: the ids' array, each id, their number. */
    id = raw_begin(&r, "room.mget", 0);
    raw_expect_error(&r, id, "invalid_request", "'rooms'");
    id = raw_begin(&r, "conn.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 0);
    raw_expect_error(&r, id, "invalid_request", "'conns'");
    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    harness_pack_str(&r.pk, "a");
    raw_expect_error(&r, id, "invalid_request", "'rooms'");

    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 2);
    harness_pack_str(&r.pk, "a");
    msgpack_pack_uint64(&r.pk, 7);
    raw_expect_error(&r, id, "invalid_request", "rooms[1]");
    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 1);
    harness_pack_str(&r.pk, "");
    raw_expect_error(&r, id, "invalid_request", "rooms[0]");
    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 1);
    msgpack_pack_str(&r.pk, 3);
    msgpack_pack_str_body(&r.pk, "a\0b", 3);
    raw_expect_error(&r, id, "invalid_request", "rooms[0]");
    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 1);
    harness_pack_str(&r.pk, "\xff");
    raw_expect_error(&r, id, "invalid_request", "rooms[0]");
    memset(long_id, 'x', 257);
    long_id[257] = '\0';
    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 2);
    harness_pack_str(&r.pk, "a");
    harness_pack_str(&r.pk, long_id);
    raw_expect_error(&r, id, "too_large", "rooms[1]");

    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 1001);
    for (int i = 0; i < 1001; i++)
        harness_pack_str(&r.pk, "a");
    raw_expect_error(&r, id, "invalid_request", "1000");

    id = raw_begin(&r, "room.mget", 1);
    harness_pack_str(&r.pk, "rooms");
    msgpack_pack_array(&r.pk, 0);
    raw_expect_ok(&r, id, &rep);
    assert_int_equal(harness_map_get(&rep.u.data, "values")->via.array.size, 0);
    assert_int_equal(harness_map_get(&rep.u.data, "versions")->via.array.size,
                     0);
    harness_reply_free(&rep);

    /* Still usable, and nothing leaked into the other client's answers. */
    harness_ping_send(r.fd, 999);
    harness_reply_recv_ok(r.fd, 999, WAIT_MS, &rep);
    harness_reply_free(&rep);
    raw_close(&r);
    HARNESS_CALL_OK(other, meshsync_room_mget(other, (const char *[]){"a"}, 1,
                                              MESHSYNC_JSON, v));
    assert_string_equal(v[0].data, "1");
    meshsync_values_free(v, 1);

    /* The library refuses what it can see is wrong, before sending. */
    assert_int_equal(meshsync_room_mget(other, null_ids, 2, MESHSYNC_JSON, v),
                     -1);
    assert_string_equal(meshsync_errcode(other), "invalid_request");
    assert_null(v[0].data);
    assert_int_equal(
        meshsync_room_list(other, NULL, 0, (meshsync_format_t)9, NULL), -1);
    assert_string_equal(meshsync_errcode(other), "invalid_request");
    assert_int_equal(meshsync_room_list(other, NULL, 10001, MESHSYNC_JSON,
                                        &(meshsync_page_t){0}),
                     -1);
    assert_string_equal(meshsync_errcode(other), "invalid_request");
    HARNESS_CALL_OK(other, meshsync_ping(other));

    meshsync_free(other);
    harness_daemon_stop_clean(d);
}


/* A value of about len bytes of JSON text; free it. */
static char *big_value(size_t len, char fill)
{
    char *s = malloc(len + 1);

    assert_non_null(s);
    memset(s, fill, len);
    memcpy(s, "{\"blob\":\"", 9);
    memcpy(s + len - 2, "\"}", 2);
    s[len] = '\0';
    return s;
}


/* Pages end at about 1 MiB, far below the limit, and lose nothing. */
static void test_list_page_size(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    char *value = big_value(60000, 'v');
    msgpack_unpacked u;
    char *body;
    size_t len;
    char *after = NULL;
    size_t total = 0;
    int pages = 0;
    raw_t r;
    uint64_t id;

    for (int i = 0; i < 40; i++) {
        char room[16];

        snprintf(room, sizeof(room), "big%02d", i);
        put(ms, ROOM, room, value);
    }

    /* The frame itself: under 1 MiB and a little. */
    raw_open(&r, d);
    id = raw_begin(&r, "room.list", 1);
    harness_pack_str(&r.pk, "limit");
    msgpack_pack_uint64(&r.pk, 10000);
    harness_request_send(r.fd, &r.sb);
    assert_int_equal(harness_frame_recv(r.fd, &body, &len, WAIT_MS), 1);
    assert_true(len > 900 * 1024 && len <= 1024 * 1024 + 1024);
    harness_unpack_map(body, len, &u);
    assert_int_equal(harness_reply_id(&u.data), id);
    assert_int_equal(harness_map_get(&u.data, "next")->type,
                     MSGPACK_OBJECT_STR);
    msgpack_unpacked_destroy(&u);
    free(body);
    raw_close(&r);

    do {
        meshsync_page_t p;
        size_t bytes = 0;

        assert_true(pages++ < 40);
        HARNESS_CALL_OK(ms, list(ms, ROOM, after, 10000, MESHSYNC_JSON, &p));
        assert_true(p.count >= 1 && p.count <= 17);
        for (size_t i = 0; i < p.count; i++) {
            char room[16];

            snprintf(room, sizeof(room), "big%02zu", total + i);
            assert_string_equal(p.items[i].id, room);
            assert_string_equal(p.items[i].data, value);
            bytes += p.items[i].len;
        }
        assert_true(bytes <= 1024 * 1024);
        total += p.count;
        free(after);
        after = p.next;
        p.next = NULL;
        meshsync_page_free(&p);
    } while (after != NULL);
    assert_int_equal(total, 40);
    assert_true(pages >= 3);

    free(value);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* mget answers in request order: missing, deleted, repeated, other kind. */
static void test_mget(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    const char *rooms[] = {"\xc3\xa9", "nope", "a", "gone", "a", "c1"};
    const char *want[] = {"{\"k\":\"v\"}", "null", "1", "null", "1", "null"};
    const char *conns[] = {"c1", "a", "c2"};
    const char **many = calloc(1000, sizeof(*many));
    meshsync_value_t *v = calloc(1001, sizeof(*v));
    char(*names)[8] = calloc(1000, sizeof(*names));
    uint64_t va, vgone, vc1;

    assert_non_null(many);
    assert_non_null(v);
    assert_non_null(names);
    va = put(ms, ROOM, "a", "1");
    put(ms, ROOM, "\xc3\xa9", "{\"k\":\"v\"}");
    put(ms, ROOM, "gone", "2");
    vgone = del(ms, ROOM, "gone");
    vc1 = put(ms, CONN, "c1", "{\"role\":\"user\"}");

    HARNESS_CALL_OK(ms, mget(ms, ROOM, rooms, 6, MESHSYNC_JSON, v));
    for (int i = 0; i < 6; i++) {
        assert_string_equal(v[i].data, want[i]);
        assert_int_equal(v[i].stale, 0);
    }
    assert_int_equal(v[1].version, 0);
    assert_int_equal(v[2].version, va);
    assert_int_equal(v[3].version, vgone);
    assert_int_equal(v[4].version, va);
    assert_int_equal(v[5].version, 0);
    meshsync_values_free(v, 6);
    assert_null(v[0].data);

    HARNESS_CALL_OK(ms, mget(ms, CONN, conns, 3, MESHSYNC_JSON, v));
    assert_string_equal(v[0].data, "{\"role\":\"user\"}");
    assert_int_equal(v[0].version, vc1);
    assert_string_equal(v[1].data, "null");
    assert_string_equal(v[2].data, "null");
    meshsync_values_free(v, 3);

    /* msgpack: the stored bytes, nil for none. */
    HARNESS_CALL_OK(ms, mget(ms, ROOM, rooms + 1, 2, MESHSYNC_MSGPACK, v));
    assert_int_equal(v[0].len, 1);
    assert_memory_equal(v[0].data, "\xc0", 1);
    assert_int_equal(v[1].len, 1);
    assert_memory_equal(v[1].data, "\x01", 1);
    meshsync_values_free(v, 2);

    HARNESS_CALL_OK(ms, mget(ms, ROOM, NULL, 0, MESHSYNC_JSON, NULL));

    /* 1000 ids is the most; 1001 is refused and the handle goes on. */
    for (int i = 0; i < 1000; i++) {
        snprintf(names[i], sizeof(names[i]), "r%03d", i);
        many[i] = i == 500 ? "a" : names[i];
    }
    HARNESS_CALL_OK(ms, mget(ms, ROOM, many, 1000, MESHSYNC_JSON, v));
    for (int i = 0; i < 1000; i++)
        assert_string_equal(v[i].data, i == 500 ? "1" : "null");
    meshsync_values_free(v, 1000);
    {
        const char **more = calloc(1001, sizeof(*more));

        assert_non_null(more);
        memcpy(more, many, 1000 * sizeof(*more));
        more[1000] = "a";
        assert_int_equal(mget(ms, ROOM, more, 1001, MESHSYNC_JSON, v), -1);
        assert_string_equal(meshsync_errcode(ms), "invalid_request");
        assert_null(v[0].data);
        free(more);
    }
    HARNESS_CALL_OK(ms, meshsync_ping(ms));

    free(names);
    free(v);
    free(many);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* A reply that would pass about 8 MiB is refused whole; smaller ones go. */
static void test_mget_too_large(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    meshsync_t *other = harness_client_open(d);
    char *value = big_value(60000, 'w');
    const char *ids[150];
    meshsync_value_t v[150];

    put(ms, ROOM, "big", value);
    for (int i = 0; i < 150; i++)
        ids[i] = "big";

    /* 100 x 60 kB = 6 MB: answered. */
    HARNESS_CALL_OK(ms, mget(ms, ROOM, ids, 100, MESHSYNC_JSON, v));
    for (int i = 0; i < 100; i++)
        assert_string_equal(v[i].data, value);
    meshsync_values_free(v, 100);

    /* 150 x 60 kB = 9 MB: too_large, and nothing else arrives. */
    assert_int_equal(mget(ms, ROOM, ids, 150, MESHSYNC_JSON, v), -1);
    assert_string_equal(meshsync_errcode(ms), "too_large");
    assert_null(v[0].data);
    HARNESS_CALL_OK(ms, meshsync_ping(ms));
    HARNESS_CALL_OK(other, meshsync_ping(other));

    free(value);
    meshsync_free(other);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* With Redis gone, bulk reads come from the cache, marked stale. */
static void test_stale(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    const char *ids[] = {"a", "b"};
    meshsync_value_t v[2];
    meshsync_page_t p;
    harness_run_t run;
    uint64_t va;

    va = put(ms, ROOM, "a", "{\"x\":1}");
    HARNESS_CALL_OK(ms, list(ms, ROOM, NULL, 0, MESHSYNC_JSON, &p));
    assert_int_equal(p.stale, 0);
    assert_int_equal(p.behind, 0);
    meshsync_page_free(&p);

    harness_redis_stop(h);
    if (!harness_daemon_wait_log(d, "state=down", HARNESS_TIMEOUT_MS))
        fail_msg("no state=down; log:\n%s", harness_daemon_log(d));

    HARNESS_CALL_OK(ms, list(ms, ROOM, NULL, 0, MESHSYNC_JSON, &p));
    assert_int_equal(p.count, 1);
    assert_string_equal(p.items[0].data, "{\"x\":1}");
    assert_int_equal(p.items[0].version, va);
    assert_null(p.next);
    assert_int_equal(p.stale, 1);
    assert_int_equal(p.behind, -1);
    meshsync_page_free(&p);

    HARNESS_CALL_OK(ms, mget(ms, ROOM, ids, 2, MESHSYNC_JSON, v));
    assert_string_equal(v[0].data, "{\"x\":1}");
    assert_string_equal(v[1].data, "null");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(v[i].stale, 1);
        assert_int_equal(v[i].behind, -1);
    }
    meshsync_values_free(v, 2);

    harness_cli_run(
        (const char *[]){"--socket", d->socket, "-v", "room", "list", NULL},
        NULL, NULL, 0, &run);
    assert_int_equal(run.status, 0);
    {
        char want[128];

        snprintf(want, sizeof(want),
                 "{\"id\":\"a\",\"value\":{\"x\":1},\"version\":%" PRIu64
                 ",\"stale\":true}\n",
                 va);
        assert_string_equal(run.out, want);
    }
    harness_run_free(&run);

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* Runs the CLI against d; checks status and, unless NULL, stdout. */
static void cli(const harness_daemon_t *d, const char *const *words, int status,
                const char *out)
{
    const char *args[16] = {"--socket", d->socket};
    harness_run_t r;
    int n = 2;

    for (int i = 0; words[i] != NULL; i++) {
        assert_true(n < 15);
        args[n++] = words[i];
    }
    args[n] = NULL;
    harness_cli_run(args, NULL, NULL, 0, &r);
    if (r.status != status)
        fail_msg("meshsync %s...: status %d, want %d; stderr: %s", words[0],
                 r.status, status, r.err);
    if (out != NULL)
        assert_string_equal(r.out, out);
    harness_run_free(&r);
}


/* list and mget in the CLI: a JSON line per entry; usage errors. */
static void test_cli(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    char rooms[512];
    char some[256];
    char conns[128];
    uint64_t v[3];
    harness_run_t r;

    v[0] = put(ms, ROOM, "lobby", "{\"topic\":\"General\"}");
    v[1] = put(ms, ROOM, "a:1", "[1,\"\xc3\xa9\"]");
    v[2] = put(ms, ROOM, "\"q\"", "null");
    del(ms, ROOM, "\"q\"");
    put(ms, ROOM, "x", "1");
    del(ms, ROOM, "x");
    snprintf(rooms, sizeof(rooms),
             "{\"id\":\"a:1\",\"value\":[1,\"\xc3\xa9\"],\"version\":%" PRIu64
             "}\n"
             "{\"id\":\"lobby\",\"value\":{\"topic\":\"General\"},"
             "\"version\":%" PRIu64 "}\n",
             v[1], v[0]);
    cli(d, (const char *[]){"room", "list", NULL}, 0, rooms);
    cli(d, (const char *[]){"room", "list", "--limit", "1", NULL}, 0, rooms);
    cli(d, (const char *[]){"--limit=10000", "room", "list", NULL}, 0, rooms);
    cli(d, (const char *[]){"conn", "list", NULL}, 0, "");

    v[2] = put(ms, CONN, "c\"1", "{\"role\":\"user\"}");
    snprintf(conns, sizeof(conns),
             "{\"id\":\"c\\\"1\",\"value\":{\"role\":\"user\"},"
             "\"version\":%" PRIu64 "}\n",
             v[2]);
    cli(d, (const char *[]){"conn", "list", NULL}, 0, conns);

    snprintf(some, sizeof(some),
             "{\"id\":\"lobby\",\"value\":{\"topic\":\"General\"},"
             "\"version\":%" PRIu64 "}\n"
             "{\"id\":\"nope\",\"value\":null,\"version\":0}\n"
             "{\"id\":\"lobby\",\"value\":{\"topic\":\"General\"},"
             "\"version\":%" PRIu64 "}\n",
             v[0], v[0]);
    cli(d, (const char *[]){"room", "mget", "lobby", "nope", "lobby", NULL}, 0,
        some);
    cli(d, (const char *[]){"conn", "mget", "nope", NULL}, 0,
        "{\"id\":\"nope\",\"value\":null,\"version\":0}\n");

    /* Usage errors: exit 2, nothing asked. */
    cli(d, (const char *[]){"room", "mget", NULL}, 2, "");
    cli(d, (const char *[]){"room", "list", "extra", NULL}, 2, "");
    cli(d, (const char *[]){"room", "list", "--limit", "0", NULL}, 2, "");
    cli(d, (const char *[]){"room", "list", "--limit", "x", NULL}, 2, "");
    cli(d, (const char *[]){"room", "get", "lobby", "--limit", "5", NULL}, 2,
        "");
    cli(d, (const char *[]){"room", "frob", NULL}, 2, "");

    /* A limit the sidecar refuses: its error, exit 1. */
    harness_cli_run((const char *[]){"--socket", d->socket, "room", "list",
                                     "--limit", "10001", NULL},
                    NULL, NULL, 0, &r);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "invalid_request"));
    assert_non_null(strstr(r.err, "'limit'"));
    harness_run_free(&r);

    harness_cli_run((const char *[]){"--help", NULL}, NULL, NULL, 0, &r);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "room list"));
    assert_non_null(strstr(r.out, "conn mget CONN..."));
    assert_non_null(strstr(r.out, "--limit N"));
    harness_run_free(&r);

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/*
 * An id a Mesh server wrote that is not UTF-8 cannot be JSON: the CLI
 * prints its invalid bytes as U+FFFD, warns once, and lists the rest.
 */
static void test_cli_id_not_utf8(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *d;
    harness_run_t r;
    const char *want = "{\"id\":\"b\xef\xbf\xbd\",\"value\":{\"a\":1},";

    freeReplyObject(harness_command(c, "HSET mesh:connection-meta %b %s",
                                    "b\xff", (size_t)2, "{\"a\":1}"));
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta ok %s", "{\"a\":2}"));
    freeReplyObject(
        harness_command(c, "SADD mesh:room:lobby %b ok", "b\xff", (size_t)2));
    d = harness_daemon_start(h, "a", NULL, NULL);

    for (int i = 0; i < 2; i++) {
        const char *const list[] = {"--socket", d->socket, "conn", "list",
                                    NULL};
        const char *const members[] = {"--socket", d->socket, "room",
                                       "members",  "lobby",   NULL};

        harness_cli_run(i == 0 ? list : members, NULL, NULL, 0, &r);
        if (r.status != 0)
            fail_msg("status %d; stderr: %s", r.status, r.err);
        assert_memory_equal(r.out, want, strlen(want));
        assert_non_null(strstr(r.out, "\n{\"id\":\"ok\",\"value\":{\"a\":2},"));
        assert_non_null(strstr(r.err, "not valid UTF-8"));
        harness_run_free(&r);
    }
    harness_daemon_stop_clean(d);
}


/* --- scale ------------------------------------------------------------ */

#define SCALE_N     100000
#define SCALE_BATCH 1000

/* Peak RSS may grow this much over 100k entries' worth of bulk reads. */
#define SCALE_RSS_GROWTH_KB (16 * 1024)

/*
 * Under ASan, freed blocks wait in a quarantine (256 MB by default) that
 * RSS counts: the daemon's is kept small, so that RSS says what the
 * daemon holds.
 */
#define ASAN_QUARANTINE_MB 1

/*
 * Stores entries as write.lua would (Mesh's hash, and the version with
 * the digest of the text in meshsync's), versions from ARGV[1] + 1 on.
 */
static const char scale_script[] =
    "local v = tonumber(ARGV[1]) "
    "for i = 2, #ARGV, 2 do "
    "  v = v + 1 "
    "  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) "
    "  redis.call('HSET', KEYS[2], ARGV[i], "
    "             v .. ':' .. string.sub(redis.sha1hex(ARGV[i + 1]), 1, 16)) "
    "end "
    "return v";

static void scale_id(int i, char *out, size_t size)
{
    snprintf(out, size, "c%06d", i);
}

/* About 200 bytes of JSON, different for every i. */
static void scale_value(int i, char *out, size_t size)
{
    char session[161];

    for (int j = 0; j < 160; j++)
        session[j] = (char)('a' + (i * 7 + j * 13) % 26);
    session[160] = '\0';
    snprintf(out, size,
             "{\"userId\":\"user%06d\",\"role\":\"member\",\"n\":%d,"
             "\"session\":\"%s\"}",
             i, i, session);
}

/* Writes SCALE_N connections with one pipelined EVAL per batch. */
static void scale_load(harness_t *h)
{
    redisContext *c = harness_redis(h);
    size_t argc = 6 + 2 * SCALE_BATCH;
    const char **argv = calloc(argc, sizeof(*argv));
    size_t *lens = calloc(argc, sizeof(*lens));
    char(*ids)[16] = calloc(SCALE_BATCH, sizeof(*ids));
    char(*values)[256] = calloc(SCALE_BATCH, sizeof(*values));
    char first[24];
    redisReply *rep;

    assert_non_null(argv);
    assert_non_null(lens);
    assert_non_null(ids);
    assert_non_null(values);
    argv[0] = "EVAL";
    argv[1] = scale_script;
    argv[2] = "2";
    argv[3] = "mesh:connection-meta";
    argv[4] = "mesh:meshsync:versions:conn";
    argv[5] = first;
    for (int b = 0; b < SCALE_N / SCALE_BATCH; b++) {
        snprintf(first, sizeof(first), "%d", b * SCALE_BATCH);
        for (int k = 0; k < SCALE_BATCH; k++) {
            scale_id(b * SCALE_BATCH + k, ids[k], sizeof(ids[k]));
            scale_value(b * SCALE_BATCH + k, values[k], sizeof(values[k]));
            argv[6 + 2 * k] = ids[k];
            argv[7 + 2 * k] = values[k];
        }
        for (size_t i = 0; i < argc; i++)
            lens[i] = strlen(argv[i]);
        assert_int_equal(redisAppendCommandArgv(c, (int)argc, argv, lens),
                         REDIS_OK);
    }
    for (int b = 0; b < SCALE_N / SCALE_BATCH; b++) {
        assert_int_equal(redisGetReply(c, (void **)&rep), REDIS_OK);
        if (rep->type != REDIS_REPLY_INTEGER)
            fail_msg("load script: %s", rep->str != NULL ? rep->str : "?");
        assert_int_equal(rep->integer, (long long)(b + 1) * SCALE_BATCH);
        freeReplyObject(rep);
    }
    freeReplyObject(harness_command(c, "SET mesh:meshsync:seq %d", SCALE_N));
    assert_int_equal(harness_redis_int(c, "HLEN mesh:connection-meta"),
                     SCALE_N);
    free(values);
    free(ids);
    free(lens);
    free(argv);
}

/* A "Vm...:" line of /proc/<pid>/status, in kB. */
static long proc_kb(pid_t pid, const char *field)
{
    char path[64];
    char line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, field, strlen(field)) == 0)
            kb = strtol(line + strlen(field), NULL, 10);
    }
    fclose(f);
    assert_true(kb > 0);
    return kb;
}

/* Pages through every connection; checks each once, in order. */
static int scale_page_all(meshsync_t *ms, size_t limit)
{
    char *after = NULL;
    char want_id[16];
    char want[256];
    int seen = 0;
    int pages = 0;

    do {
        meshsync_page_t p;

        assert_true(pages++ <= SCALE_N);
        HARNESS_CALL_OK(
            ms, meshsync_conn_list(ms, after, limit, MESHSYNC_JSON, &p));
        for (size_t i = 0; i < p.count; i++, seen++) {
            scale_id(seen, want_id, sizeof(want_id));
            scale_value(seen, want, sizeof(want));
            assert_string_equal(p.items[i].id, want_id);
            assert_string_equal(p.items[i].data, want);
            assert_int_equal(p.items[i].version, (uint64_t)seen + 1);
        }
        free(after);
        after = p.next;
        p.next = NULL;
        meshsync_page_free(&p);
    } while (after != NULL);
    assert_int_equal(seen, SCALE_N);
    return pages;
}

/* 100 mgets of 1000 ids, spread over all the connections. */
static void scale_mget_all(meshsync_t *ms)
{
    const char **ids = calloc(SCALE_BATCH, sizeof(*ids));
    char(*names)[16] = calloc(SCALE_BATCH, sizeof(*names));
    meshsync_value_t *v = calloc(SCALE_BATCH, sizeof(*v));
    char want[256];

    assert_non_null(ids);
    assert_non_null(names);
    assert_non_null(v);
    for (int call = 0; call < SCALE_N / SCALE_BATCH; call++) {
        for (int k = 0; k < SCALE_BATCH; k++) {
            int i = k * (SCALE_N / SCALE_BATCH) + call;

            scale_id(i, names[k], sizeof(names[k]));
            ids[k] = names[k];
        }
        HARNESS_CALL_OK(
            ms, meshsync_conn_mget(ms, ids, SCALE_BATCH, MESHSYNC_JSON, v));
        for (int k = 0; k < SCALE_BATCH; k++) {
            int i = k * (SCALE_N / SCALE_BATCH) + call;

            scale_value(i, want, sizeof(want));
            assert_string_equal(v[k].data, want);
            assert_int_equal(v[k].version, (uint64_t)i + 1);
        }
        meshsync_values_free(v, SCALE_BATCH);
    }
    free(v);
    free(names);
    free(ids);
}

/* The daemon's environment: NULL, or ASan's options with a small quarantine. */
static const char *const *scale_env(void)
{
#ifdef __SANITIZE_ADDRESS__
    static char opts[512];
    static const char *env[] = {opts, NULL};
    const char *old = getenv("ASAN_OPTIONS");

    snprintf(opts, sizeof(opts), "ASAN_OPTIONS=%s%squarantine_size_mb=%d",
             old != NULL ? old : "", old != NULL && old[0] ? ":" : "",
             ASAN_QUARANTINE_MB);
    return env;
#else
    return NULL;
#endif
}

/*
 * 100,000 connections of about 200 bytes, written straight into Redis
 * and loaded by the daemon at start: paged through twice (the default
 * limit, and the largest, whose pages end at 1 MiB) and read by 100 mgets
 * of 1000, all correct, while the daemon's peak RSS grows by less than
 * SCALE_RSS_GROWTH_KB.
 */
static void test_scale(void **state)
{
    harness_t *h = *state;
    const char *args[] = {"--scrub-interval-ms", "0", NULL};
    harness_daemon_t *d;
    meshsync_t *ms;
    long hwm_before, hwm_after, rss_before, rss_after;
    int64_t t0, t_page, t_page_max, t_mget;
    int pages, pages_max;

    t0 = harness_now_ms();
    scale_load(h);
    d = harness_daemon_spawn(h, "a", args, scale_env());
    if (!harness_daemon_wait_log(d, "msg=\"ready\"", 120000))
        fail_msg("daemon not ready; log:\n%s", harness_daemon_log(d));
    fprintf(stderr, "# scale: %d entries written and loaded in %lld ms\n",
            SCALE_N, (long long)(harness_now_ms() - t0));
    ms = harness_client_open(d);
    meshsync_set_timeout(ms, 60000);
    HARNESS_CALL_OK(ms, meshsync_ping(ms));
    hwm_before = proc_kb(d->pid, "VmHWM:");
    rss_before = proc_kb(d->pid, "VmRSS:");

    t0 = harness_now_ms();
    pages = scale_page_all(ms, 0);
    t_page = harness_now_ms() - t0;
    t0 = harness_now_ms();
    pages_max = scale_page_all(ms, 10000);
    t_page_max = harness_now_ms() - t0;
    t0 = harness_now_ms();
    scale_mget_all(ms);
    t_mget = harness_now_ms() - t0;

    hwm_after = proc_kb(d->pid, "VmHWM:");
    rss_after = proc_kb(d->pid, "VmRSS:");
    fprintf(stderr,
            "# scale: paged %d entries in %lld ms (%d pages of 1000), "
            "in %lld ms (%d pages, limit 10000); 100 mgets of 1000 in "
            "%lld ms\n"
            "# scale: daemon VmHWM %ld kB before, %ld kB after (+%ld kB); "
            "VmRSS %ld kB before, %ld kB after\n",
            SCALE_N, (long long)t_page, pages, (long long)t_page_max, pages_max,
            (long long)t_mget, hwm_before, hwm_after, hwm_after - hwm_before,
            rss_before, rss_after);
    assert_int_equal(pages, SCALE_N / 1000);
    assert_true(pages_max > SCALE_N / 10000);
    assert_true(hwm_after - hwm_before < SCALE_RSS_GROWTH_KB);

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_list_order, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_list_after, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_list_page_size,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_mget, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_mget_too_large,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_stale, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_cli_id_not_utf8,
                                        harness_setup_redis, harness_teardown),
        cmocka_unit_test_setup_teardown(test_cli, harness_setup_redis,
                                        harness_teardown),
        cmocka_unit_test_setup_teardown(test_scale, harness_setup_redis,
                                        harness_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
