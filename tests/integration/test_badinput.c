/*
 * test_badinput.c - meshsyncd fed what no client library would send:
 * oversized, empty, truncated and non-msgpack frames; requests that are not
 * maps; bad ids, ops, strategies, connection and room ids; values JSON
 * cannot hold or that break a limit. Each gets its documented error code
 * and leaves the connection usable (but for an oversized frame), while a
 * second client keeps being served. At the end, Redis holds only the valid
 * writes and the sequence counts only them.
 *
 * One daemon for the whole group; each test opens its own raw socket.
 */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "meshsync.h"

#define WAIT_MS 5000
/* Expected id for a reply that must carry id: nil (tests never use it). */
#define NO_ID     (UINT64_MAX - 1)
#define MAX_VALID 16

typedef struct world_s {
    harness_t *h;
    harness_daemon_t *d;
    meshsync_t *other; /* the client that must keep being served */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint64_t next_id;
    int writes; /* valid writes made, each one version */
    const char *rooms[MAX_VALID];
    int nrooms;
    const char *conns[MAX_VALID];
    int nconns;
} world_t;

static char long_room[257];
static char long_conn[257];

/* --- helpers ---------------------------------------------------------- */

static int raw_connect(const world_t *w)
{
    int fd = harness_unix_connect(w->d->socket);

    assert_true(fd >= 0);
    return fd;
}

/* Starts {id, op, nmore more pairs} in w->sb; returns the id. */
static uint64_t begin(world_t *w, const char *op, size_t nmore)
{
    uint64_t id = w->next_id++;

    harness_request_begin(&w->pk, &w->sb, id, op, nmore);
    return id;
}

/* Starts a room.set of room whose value the caller packs next. */
static uint64_t begin_set(world_t *w, const char *room)
{
    uint64_t id = begin(w, "room.set", 2);

    harness_pack_str(&w->pk, "room");
    harness_pack_str(&w->pk, room);
    harness_pack_str(&w->pk, "value");
    return id;
}

/* The second client: a ping and a get, both answered correctly. */
static void other_served(world_t *w)
{
    meshsync_value_t v;

    HARNESS_CALL_OK(w->other, meshsync_ping(w->other));
    HARNESS_CALL_OK(w->other,
                    meshsync_room_get(w->other, "keep", MESHSYNC_JSON, &v));
    assert_string_equal(v.data, "{\"k\":1}");
    meshsync_value_free(&v);
}

static void check_id(const msgpack_object *reply, uint64_t id)
{
    const msgpack_object *o = harness_map_get(reply, "id");

    if (id != NO_ID)
        assert_int_equal(harness_reply_id(reply), id);
    else if (o == NULL || o->type != MSGPACK_OBJECT_NIL)
        fail_msg("reply id is not nil");
}

/* Reads an error reply: its id (or nil for NO_ID) and its code. */
static void expect_error(int fd, uint64_t id, const char *code)
{
    const msgpack_object *ok, *err, *c, *m;
    harness_reply_t r;

    harness_reply_recv(fd, WAIT_MS, &r);
    ok = harness_map_get(&r.u.data, "ok");
    err = harness_map_get(&r.u.data, "error");
    c = harness_map_get(err, "code");
    m = harness_map_get(err, "message");
    assert_true(ok != NULL && ok->type == MSGPACK_OBJECT_BOOLEAN &&
                !ok->via.boolean);
    if (!harness_obj_is_str(c, code))
        fail_msg("error code %.*s, want %s",
                 c && c->type == MSGPACK_OBJECT_STR ? (int)c->via.str.size : 6,
                 c && c->type == MSGPACK_OBJECT_STR ? c->via.str.ptr : "(none)",
                 code);
    assert_true(m != NULL && m->type == MSGPACK_OBJECT_STR &&
                m->via.str.size > 0);
    check_id(&r.u.data, id);
    harness_reply_free(&r);
}

static void expect_ok(int fd, uint64_t id)
{
    harness_reply_t r;

    harness_reply_recv_ok(fd, id, WAIT_MS, &r);
    harness_reply_free(&r);
}

/* The connection still answers a ping, and the other client is served. */
static void still_usable(world_t *w, int fd)
{
    uint64_t id = w->next_id++;

    harness_ping_send(fd, id);
    expect_ok(fd, id);
    other_served(w);
}

/* Sends body as one frame; expects the error, then a usable connection. */
static void bytes_refused(world_t *w, int fd, const void *body, size_t len,
                          uint64_t id, const char *code)
{
    assert_int_equal(harness_frame_send(fd, body, len), 0);
    expect_error(fd, id, code);
    still_usable(w, fd);
}

/* The same for the request built in w->sb. */
static void refused(world_t *w, int fd, uint64_t id, const char *code)
{
    bytes_refused(w, fd, w->sb.data, w->sb.size, id, code);
}

/* Sends the request in w->sb, which must succeed: one valid write. */
static void accepted_write(world_t *w, int fd, uint64_t id)
{
    harness_request_send(fd, &w->sb);
    expect_ok(fd, id);
    w->writes++;
}

static int group_setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));
    uint64_t v;

    assert_non_null(w);
    w->h = harness_new();
    harness_redis_start(w->h, NULL);
    w->d = harness_daemon_start(w->h, "a", NULL, NULL);
    w->other = harness_client_open(w->d);
    assert_int_equal(meshsync_room_set(w->other, "keep", MESHSYNC_JSON,
                                       "{\"k\":1}", 7, MESHSYNC_REPLACE, &v),
                     0);
    w->writes = 1;
    w->rooms[w->nrooms++] = "keep";
    w->next_id = 1;
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
    memset(long_room, 'r', sizeof(long_room) - 1);
    memset(long_conn, 'c', sizeof(long_conn) - 1);
    *state = w;
    return 0;
}

static int group_teardown(void **state)
{
    world_t *w = *state;

    meshsync_free(w->other);
    msgpack_sbuffer_destroy(&w->sb);
    harness_free(w->h);
    free(w);
    return 0;
}

/* --- frames ----------------------------------------------------------- */

/* A room.set frame body of exactly len bytes, its value one string. */
static void pack_sized_set(world_t *w, const char *room, size_t len)
{
    size_t head;
    char *fill;

    begin_set(w, room);
    head = w->sb.size + 5; /* a str32 header */
    assert_true(len > head);
    fill = malloc(len - head);
    assert_non_null(fill);
    memset(fill, 'x', len - head);
    msgpack_pack_str(&w->pk, len - head);
    msgpack_pack_str_body(&w->pk, fill, len - head);
    free(fill);
    assert_int_equal(w->sb.size, len);
}

static void test_oversized_frames(void **state)
{
    world_t *w = *state;
    const unsigned char huge[] = {0xff, 0xff, 0xff, 0xff, 0x80};
    int fd = raw_connect(w);

    /* Declared 4 GiB: refused at the header, then the connection ends. */
    assert_int_equal(harness_send_raw(fd, huge, sizeof(huge)), 0);
    expect_error(fd, NO_ID, "too_large");
    assert_true(harness_wait_closed(fd, WAIT_MS));
    close(fd);
    other_served(w);

    /* 1 MiB + 1 bytes actually sent: the peer may hang up mid-send. */
    fd = raw_connect(w);
    pack_sized_set(w, "bad-frame", 1024 * 1024 + 1);
    (void)harness_frame_send(fd, w->sb.data, w->sb.size);
    expect_error(fd, NO_ID, "too_large");
    assert_true(harness_wait_closed(fd, WAIT_MS));
    close(fd);
    other_served(w);

    /* Exactly 1 MiB is a frame; its value is over the JSON limit. */
    fd = raw_connect(w);
    pack_sized_set(w, "bad-1mib", 1024 * 1024);
    refused(w, fd, w->next_id - 1, "too_large");
    close(fd);
}

static void test_not_msgpack(void **state)
{
    world_t *w = *state;
    static const struct {
        const char *bytes;
        size_t len;
    } bad[] = {
        {"\xc1", 1},                 /* the reserved type byte */
        {"\x82\xa2id\x01\xa2op", 7}, /* truncated map */
        {"\xd9", 1},                 /* str8 without its length */
        {"\xdf\xff\xff\xff\xff", 5}, /* a map of 4 billion pairs */
        {"\x81\xa2id\x01\x00", 6},   /* trailing byte after the map */
        {"\xc0\xc0", 2},             /* two objects */
    };
    int fd = raw_connect(w);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        bytes_refused(w, fd, bad[i].bytes, bad[i].len, NO_ID,
                      "invalid_request");

    /* A zero-length frame. */
    bytes_refused(w, fd, "", 0, NO_ID, "invalid_request");

    /* A valid ping with a byte after it. */
    begin(w, "ping", 0);
    msgpack_pack_nil(&w->pk);
    refused(w, fd, NO_ID, "invalid_request");

    /* A value declaring more elements than the frame holds. */
    begin_set(w, "bad-count");
    msgpack_sbuffer_write(&w->sb, "\xdd\x00\x01\x00\x00\x01", 6);
    refused(w, fd, NO_ID, "invalid_request");
    close(fd);
}

static void test_not_a_map(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);

    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_array(&w->pk, 2);
    harness_pack_str(&w->pk, "id");
    harness_pack_str(&w->pk, "ping");
    refused(w, fd, NO_ID, "invalid_request");

    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_int(&w->pk, 42);
    refused(w, fd, NO_ID, "invalid_request");

    msgpack_sbuffer_clear(&w->sb);
    harness_pack_str(&w->pk, "ping");
    refused(w, fd, NO_ID, "invalid_request");

    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_nil(&w->pk);
    refused(w, fd, NO_ID, "invalid_request");
    close(fd);
}

/* {id: <packed by the caller>, op: "ping"} */
static void pack_ping_with_id(world_t *w)
{
    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_map(&w->pk, 2);
    harness_pack_str(&w->pk, "op");
    harness_pack_str(&w->pk, "ping");
    harness_pack_str(&w->pk, "id");
}

static void test_bad_request_id(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);

    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_map(&w->pk, 1);
    harness_pack_str(&w->pk, "op");
    harness_pack_str(&w->pk, "ping");
    refused(w, fd, NO_ID, "invalid_request");

    pack_ping_with_id(w);
    msgpack_pack_int(&w->pk, -1);
    refused(w, fd, NO_ID, "invalid_request");
    pack_ping_with_id(w);
    harness_pack_str(&w->pk, "7");
    refused(w, fd, NO_ID, "invalid_request");
    pack_ping_with_id(w);
    msgpack_pack_double(&w->pk, 7.0);
    refused(w, fd, NO_ID, "invalid_request");
    pack_ping_with_id(w);
    msgpack_pack_float(&w->pk, 7.0f);
    refused(w, fd, NO_ID, "invalid_request");
    pack_ping_with_id(w);
    msgpack_pack_nil(&w->pk);
    refused(w, fd, NO_ID, "invalid_request");

    /* The largest id is an id like any other. */
    pack_ping_with_id(w);
    msgpack_pack_uint64(&w->pk, UINT64_MAX);
    harness_request_send(fd, &w->sb);
    expect_ok(fd, UINT64_MAX);

    /* id 0 too. */
    pack_ping_with_id(w);
    msgpack_pack_uint64(&w->pk, 0);
    harness_request_send(fd, &w->sb);
    expect_ok(fd, 0);
    close(fd);
}

static void test_bad_op(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);
    uint64_t id;

    /* No op. */
    id = w->next_id++;
    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_map(&w->pk, 1);
    harness_pack_str(&w->pk, "id");
    msgpack_pack_uint64(&w->pk, id);
    refused(w, fd, id, "invalid_request");

    /* op not a string. */
    id = w->next_id++;
    msgpack_sbuffer_clear(&w->sb);
    msgpack_pack_map(&w->pk, 2);
    harness_pack_str(&w->pk, "id");
    msgpack_pack_uint64(&w->pk, id);
    harness_pack_str(&w->pk, "op");
    msgpack_pack_int(&w->pk, 1);
    refused(w, fd, id, "invalid_request");

    id = begin(w, "conn.delete", 0);
    refused(w, fd, id, "unknown_op");
    id = begin(w, "PING", 0);
    refused(w, fd, id, "unknown_op");
    id = begin(w, "", 0);
    refused(w, fd, id, "unknown_op");
    close(fd);
}

static void test_bad_strategy_and_value(void **state)
{
    world_t *w = *state;
    const char *bad[] = {"squash", "Merge", "deepmerge", ""};
    int fd = raw_connect(w);
    uint64_t id;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        id = begin(w, "conn.set", 3);
        harness_pack_str(&w->pk, "conn");
        harness_pack_str(&w->pk, "bad-strategy");
        harness_pack_str(&w->pk, "strategy");
        harness_pack_str(&w->pk, bad[i]);
        harness_pack_str(&w->pk, "value");
        msgpack_pack_int(&w->pk, 1);
        refused(w, fd, id, "invalid_request");
    }
    id = begin(w, "room.set", 3);
    harness_pack_str(&w->pk, "room");
    harness_pack_str(&w->pk, "bad-strategy");
    harness_pack_str(&w->pk, "strategy");
    msgpack_pack_int(&w->pk, 1);
    harness_pack_str(&w->pk, "value");
    msgpack_pack_int(&w->pk, 1);
    refused(w, fd, id, "invalid_request");

    /* set without a value. */
    id = begin(w, "conn.set", 1);
    harness_pack_str(&w->pk, "conn");
    harness_pack_str(&w->pk, "bad-novalue");
    refused(w, fd, id, "invalid_request");
    id = begin(w, "room.set", 2);
    harness_pack_str(&w->pk, "room");
    harness_pack_str(&w->pk, "bad-novalue");
    harness_pack_str(&w->pk, "strategy");
    harness_pack_str(&w->pk, "merge");
    refused(w, fd, id, "invalid_request");
    close(fd);
}

/* --- connection and room ids ------------------------------------------ */

typedef struct bad_name_s {
    const char *bytes;
    size_t len;
    const char *code;
} bad_name_t;

/* op with key = the name (or an int when bytes is NULL), plus a value. */
static uint64_t pack_named(world_t *w, const char *op, const char *key,
                           const bad_name_t *n, bool value)
{
    uint64_t id = begin(w, op, value ? 2 : 1);

    harness_pack_str(&w->pk, key);
    if (n->bytes == NULL) {
        msgpack_pack_int(&w->pk, 5);
    } else {
        msgpack_pack_str(&w->pk, n->len);
        msgpack_pack_str_body(&w->pk, n->bytes, n->len);
    }
    if (value) {
        harness_pack_str(&w->pk, "value");
        msgpack_pack_int(&w->pk, 1);
    }
    return id;
}

static void test_bad_names(void **state)
{
    static const struct {
        const char *op;
        const char *key;
        bool value;
    } ops[] = {
        {"conn.set", "conn", true},    {"room.set", "room", true},
        {"conn.get", "conn", false},   {"room.get", "room", false},
        {"conn.close", "conn", false}, {"room.delete", "room", false},
        {"hello", "conn", false},
    };
    world_t *w = *state;
    char over[258];
    const bad_name_t names[] = {
        {NULL, 0, "invalid_request"},
        {"", 0, "invalid_request"},
        {over, 257, "too_large"},
        {"bad-\xff\xfe", 6, "invalid_request"},
        {"bad-\xc0\x80", 6, "invalid_request"},     /* overlong NUL */
        {"bad-\xed\xa0\x80", 7, "invalid_request"}, /* a surrogate */
        {"bad-\xe2\x82", 6, "invalid_request"},     /* cut short */
        {"bad-a\0b", 7, "invalid_request"},
    };
    int fd = raw_connect(w);
    uint64_t id;

    memset(over, 'b', sizeof(over));
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        for (size_t j = 0; j < sizeof(names) / sizeof(names[0]); j++) {
            id = pack_named(w, ops[i].op, ops[i].key, &names[j], ops[i].value);
            refused(w, fd, id, names[j].code);
        }
    }

    /* 256 bytes is still a name; so is ':' and multi-byte UTF-8. */
    id = begin_set(w, long_room);
    msgpack_pack_int(&w->pk, 1);
    accepted_write(w, fd, id);
    w->rooms[w->nrooms++] = long_room;
    id = begin(w, "conn.set", 2);
    harness_pack_str(&w->pk, "conn");
    harness_pack_str(&w->pk, long_conn);
    harness_pack_str(&w->pk, "value");
    msgpack_pack_int(&w->pk, 1);
    accepted_write(w, fd, id);
    w->conns[w->nconns++] = long_conn;
    id = begin_set(w, "r:\xc3\xa9\xf0\x9f\x98\x80");
    msgpack_pack_int(&w->pk, 2);
    accepted_write(w, fd, id);
    w->rooms[w->nrooms++] = "r:\xc3\xa9\xf0\x9f\x98\x80";
    close(fd);
}

static void test_conn_without_hello(void **state)
{
    static const char *ops[] = {"conn.get", "conn.set", "conn.close"};
    world_t *w = *state;
    int fd = raw_connect(w);
    uint64_t id;

    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        bool set = strcmp(ops[i], "conn.set") == 0;

        id = begin(w, ops[i], set ? 1 : 0);
        if (set) {
            harness_pack_str(&w->pk, "value");
            msgpack_pack_int(&w->pk, 1);
        }
        refused(w, fd, id, "invalid_request");
    }

    /* A failed hello binds nothing either. */
    id = begin(w, "hello", 1);
    harness_pack_str(&w->pk, "conn");
    harness_pack_str(&w->pk, "");
    refused(w, fd, id, "invalid_request");
    id = begin(w, "conn.get", 0);
    refused(w, fd, id, "invalid_request");
    close(fd);
}

/* --- values ----------------------------------------------------------- */

/* Arrays nested depth deep, the innermost empty. */
static void pack_nested(msgpack_packer *pk, int depth)
{
    for (int i = 1; i < depth; i++)
        msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 0);
}

static void test_bad_values(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);
    uint64_t id;

    id = begin_set(w, "bad-bin");
    msgpack_pack_bin(&w->pk, 3);
    msgpack_pack_bin_body(&w->pk, "abc", 3);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-ext");
    msgpack_pack_ext(&w->pk, 2, 7);
    msgpack_pack_ext_body(&w->pk, "ab", 2);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-timestamp");
    msgpack_pack_ext(&w->pk, 4, -1);
    msgpack_pack_ext_body(&w->pk, "\x00\x00\x00\x01", 4);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-intkey");
    msgpack_pack_map(&w->pk, 1);
    msgpack_pack_int(&w->pk, 1);
    harness_pack_str(&w->pk, "x");
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-deepintkey");
    msgpack_pack_map(&w->pk, 1);
    harness_pack_str(&w->pk, "a");
    msgpack_pack_map(&w->pk, 1);
    msgpack_pack_nil(&w->pk);
    msgpack_pack_int(&w->pk, 2);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-dupkey");
    msgpack_pack_map(&w->pk, 2);
    harness_pack_str(&w->pk, "a");
    msgpack_pack_int(&w->pk, 1);
    harness_pack_str(&w->pk, "a");
    msgpack_pack_int(&w->pk, 2);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-nulkey");
    msgpack_pack_map(&w->pk, 1);
    msgpack_pack_str(&w->pk, 3);
    msgpack_pack_str_body(&w->pk, "a\0b", 3);
    msgpack_pack_int(&w->pk, 1);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-utf8");
    msgpack_pack_array(&w->pk, 1);
    msgpack_pack_str(&w->pk, 2);
    msgpack_pack_str_body(&w->pk, "\xc3\x28", 2);
    refused(w, fd, id, "invalid_request");
    close(fd);
}

static void test_bad_numbers(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);
    uint64_t id;

    id = begin_set(w, "bad-nan64");
    msgpack_pack_double(&w->pk, NAN);
    refused(w, fd, id, "invalid_request");
    id = begin_set(w, "bad-nan32");
    msgpack_pack_float(&w->pk, NAN);
    refused(w, fd, id, "invalid_request");
    id = begin_set(w, "bad-inf64");
    msgpack_pack_map(&w->pk, 1);
    harness_pack_str(&w->pk, "x");
    msgpack_pack_double(&w->pk, INFINITY);
    refused(w, fd, id, "invalid_request");
    id = begin_set(w, "bad-inf32");
    msgpack_pack_array(&w->pk, 1);
    msgpack_pack_float(&w->pk, -INFINITY);
    refused(w, fd, id, "invalid_request");

    id = begin_set(w, "bad-uint");
    msgpack_pack_uint64(&w->pk, (uint64_t)INT64_MAX + 1);
    refused(w, fd, id, "invalid_request");
    id = begin_set(w, "bad-uintmax");
    msgpack_pack_map(&w->pk, 1);
    harness_pack_str(&w->pk, "n");
    msgpack_pack_uint64(&w->pk, UINT64_MAX);
    refused(w, fd, id, "invalid_request");
    close(fd);
}

/*
 * 31 levels are allowed, 32 are not. The frame is then 33 deep, more than
 * msgpack-c can unpack, but the request has a valid id to answer with.
 */
static void test_depth_limit(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);
    uint64_t id;

    id = begin_set(w, "depth31");
    pack_nested(&w->pk, 31);
    accepted_write(w, fd, id);
    w->rooms[w->nrooms++] = "depth31";
    id = begin_set(w, "bad-depth32");
    pack_nested(&w->pk, 32);
    refused(w, fd, id, "too_large");
    close(fd);
}

static void test_json_limit(void **state)
{
    world_t *w = *state;
    int fd = raw_connect(w);
    size_t n = 65536 - 2; /* a string of n bytes is 64 KiB of JSON */
    char *text = malloc(n + 4);
    uint64_t id;

    /* A string whose JSON is exactly 64 KiB, and one byte more. */
    assert_non_null(text);
    memset(text, 'j', n + 3);
    id = begin_set(w, "json64k");
    msgpack_pack_str(&w->pk, n);
    msgpack_pack_str_body(&w->pk, text, n);
    accepted_write(w, fd, id);
    w->rooms[w->nrooms++] = "json64k";
    id = begin_set(w, "bad-json64k");
    msgpack_pack_str(&w->pk, n + 1);
    msgpack_pack_str_body(&w->pk, text, n + 1);
    refused(w, fd, id, "too_large");

    /* Through the library: refused by the daemon, the handle kept. */
    text[0] = '"';
    text[n + 2] = '"';
    text[n + 3] = '\0';
    assert_int_equal(meshsync_room_set(w->other, "bad-json64k", MESHSYNC_JSON,
                                       text, n + 3, MESHSYNC_REPLACE, NULL),
                     -1);
    assert_string_equal(meshsync_errcode(w->other), "too_large");
    other_served(w);
    free(text);
    close(fd);
}

/*
 * A daemon with a lower depth limit refuses a value the library lets
 * through; the error is the request's, so the handle stays usable.
 */
static void test_depth_limit_through_library(void **state)
{
    world_t *w = *state;
    harness_daemon_t *d = harness_daemon_start(
        w->h, "shallow", (const char *const[]){"--max-depth", "4", NULL}, NULL);
    meshsync_t *ms = harness_client_open(d);
    const char *deep = "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":1}}}}}";

    assert_int_equal(meshsync_room_set(ms, "bad-shallow", MESHSYNC_JSON, deep,
                                       strlen(deep), MESHSYNC_REPLACE, NULL),
                     -1);
    if (strcmp(meshsync_errcode(ms), "too_large") != 0)
        fail_msg("5 levels over --max-depth 4: %s: %s", meshsync_errcode(ms),
                 meshsync_errmsg(ms));
    assert_int_equal(meshsync_ping(ms), 0);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}

/* --- nothing refused reached Redis ------------------------------------ */

static void test_no_partial_writes(void **state)
{
    world_t *w = *state;
    redisContext *c = harness_redis(w->h);
    redisReply *r;
    char key[512];

    /* Mesh's keys and meshsync's: exactly the valid writes. */
    for (int i = 0; i < w->nrooms; i++) {
        snprintf(key, sizeof(key), "mesh:roommeta:%s", w->rooms[i]);
        assert_int_equal(harness_redis_int(c, "EXISTS %s", key), 1);
    }
    for (int i = 0; i < w->nconns; i++)
        assert_int_equal(harness_redis_int(c, "HEXISTS mesh:connection-meta %s",
                                           w->conns[i]),
                         1);
    r = harness_command(c, "KEYS mesh:roommeta:*");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, w->nrooms);
    freeReplyObject(r);
    assert_int_equal(harness_redis_int(c, "HLEN mesh:connection-meta"),
                     w->nconns);
    assert_int_equal(harness_redis_int(c, "HLEN mesh:meshsync:versions:room"),
                     w->nrooms);
    assert_int_equal(harness_redis_int(c, "HLEN mesh:meshsync:versions:conn"),
                     w->nconns);
    /*
     * connection-meta, two versions hashes, seq, the log, the epoch, the
     * scrub's lease, the registry's instances set and heartbeat, and the
     * rooms.
     */
    assert_int_equal(harness_redis_int(c, "DBSIZE"), 9 + w->nrooms);
    assert_int_equal(harness_redis_int(c, "XLEN mesh:meshsync:log"), w->writes);

    /* The sequence counts the valid writes only. */
    assert_int_equal(harness_redis_int(c, "GET mesh:meshsync:seq"), w->writes);

    other_served(w);
    harness_daemon_stop_clean(w->d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oversized_frames),
        cmocka_unit_test(test_not_msgpack),
        cmocka_unit_test(test_not_a_map),
        cmocka_unit_test(test_bad_request_id),
        cmocka_unit_test(test_bad_op),
        cmocka_unit_test(test_bad_strategy_and_value),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_conn_without_hello),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_bad_numbers),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_json_limit),
        cmocka_unit_test(test_depth_limit_through_library),
        cmocka_unit_test(test_no_partial_writes),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
