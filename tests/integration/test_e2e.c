/*
 * test_e2e.c - meshsyncd end to end: the examples of Mesh's metadata page
 * through libmeshsync, checked in the daemon's answers and in Redis (Mesh's
 * own keys); reads through a second sidecar with minVersion; values Mesh
 * wrote before the sidecar started; SCRIPT FLUSH; integers past 2^53; the
 * meshsync CLI; SIGTERM. Each test starts its own redis-server and daemons.
 */
#include "harness.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "meshsync.h"

#define WAIT_MS     5000
#define ANY_VERSION UINT64_MAX

typedef enum { CONN = 0, ROOM = 1 } kind_t;

/* --- helpers ---------------------------------------------------------- */

/* Fails unless got and want are equal JSON values. */
static void assert_json(const char *got, const char *want)
{
    json_t *a = json_loads(got, JSON_DECODE_ANY, NULL);
    json_t *b = json_loads(want, JSON_DECODE_ANY, NULL);
    int same = a != NULL && b != NULL && json_equal(a, b);

    json_decref(a);
    json_decref(b);
    if (!same)
        fail_msg("got %s, want %s", got, want);
}

static uint64_t set_json(meshsync_t *ms, kind_t kind, const char *id,
                         const char *json, meshsync_strategy_t s)
{
    uint64_t version = 0;

    if (kind == ROOM)
        HARNESS_CALL_OK(ms, meshsync_room_set(ms, id, MESHSYNC_JSON, json,
                                              strlen(json), s, &version));
    else
        HARNESS_CALL_OK(ms, meshsync_conn_set(ms, id, MESHSYNC_JSON, json,
                                              strlen(json), s, &version));
    assert_true(version > 0);
    return version;
}

/* Reads an entry in format into *v, waiting for min when it is not 0. */
static void get_min(meshsync_t *ms, kind_t kind, const char *id, uint64_t min,
                    meshsync_format_t format, meshsync_value_t *v)
{
    if (kind == ROOM)
        HARNESS_CALL_OK(ms,
                        meshsync_room_get_min(ms, id, min, WAIT_MS, format, v));
    else
        HARNESS_CALL_OK(ms,
                        meshsync_conn_get_min(ms, id, min, WAIT_MS, format, v));
}

/*
 * Reads an entry (waiting for min when it is not 0) and checks its value,
 * its version unless ANY_VERSION, and that the answer is not stale.
 */
static void expect_get(meshsync_t *ms, kind_t kind, const char *id,
                       uint64_t min, const char *want, uint64_t version)
{
    meshsync_value_t v;

    get_min(ms, kind, id, min, MESHSYNC_JSON, &v);
    assert_json(v.data, want);
    if (version != ANY_VERSION)
        assert_int_equal(v.version, version);
    assert_int_equal(v.stale, 0);
    meshsync_value_free(&v);
}

/* Mesh's key and field for an entry. */
static void mesh_key(kind_t kind, const char *id, char *key, size_t size,
                     const char **field)
{
    if (kind == ROOM) {
        snprintf(key, size, "mesh:roommeta:%s", id);
        *field = "data";
    } else {
        snprintf(key, size, "mesh:connection-meta");
        *field = id;
    }
}

/* The exact JSON text Redis holds for an entry, or absence (want NULL). */
static void expect_redis(harness_t *h, kind_t kind, const char *id,
                         const char *want)
{
    const char *field;
    char key[512];
    char *got;

    mesh_key(kind, id, key, sizeof(key), &field);
    got = harness_redis_hget(h, key, field);
    if (want == NULL && got != NULL)
        fail_msg("%s %s still holds %s", key, field, got);
    if (want != NULL && (got == NULL || strcmp(got, want) != 0))
        fail_msg("%s %s holds %s, want %s", key, field,
                 got != NULL ? got : "(none)", want);
    free(got);

    /* A deleted room leaves no key behind at all. */
    if (want == NULL && kind == ROOM)
        assert_int_equal(harness_redis_int(harness_redis(h), "EXISTS %s", key),
                         0);
}

/* The version meshsync recorded for an entry in Redis (0 when none). */
static uint64_t redis_version(harness_t *h, kind_t kind, const char *id)
{
    return (uint64_t)harness_redis_int(harness_redis(h),
                                       "HGET mesh:meshsync:versions:%s %s",
                                       kind == ROOM ? "room" : "conn", id);
}

/* --- Mesh's examples -------------------------------------------------- */

static void test_conn_examples(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    meshsync_t *own = harness_client_open(d);
    const char *full = "{\"userId\":\"user123\",\"role\":\"moderator\","
                       "\"preferences\":{\"language\":\"en\","
                       "\"theme\":\"dark\"}}";
    uint64_t v1, v2, v3, v4, vc;
    meshsync_value_t v;

    v1 = set_json(ms, CONN, "conn123",
                  "{\"userId\":\"user123\",\"role\":\"admin\"}",
                  MESHSYNC_REPLACE);
    expect_get(ms, CONN, "conn123", 0,
               "{\"userId\":\"user123\",\"role\":\"admin\"}", v1);
    expect_redis(h, CONN, "conn123",
                 "{\"userId\":\"user123\",\"role\":\"admin\"}");

    /* merge: role changes, userId stays. */
    v2 = set_json(ms, CONN, "conn123", "{\"role\":\"moderator\"}",
                  MESHSYNC_MERGE);
    assert_true(v2 > v1);
    expect_get(ms, CONN, "conn123", 0,
               "{\"userId\":\"user123\",\"role\":\"moderator\"}", v2);
    expect_redis(h, CONN, "conn123",
                 "{\"userId\":\"user123\",\"role\":\"moderator\"}");

    /* deepMerge into existing preferences keeps their other keys. */
    v3 = set_json(ms, CONN, "conn123",
                  "{\"preferences\":{\"language\":\"en\","
                  "\"theme\":\"light\"}}",
                  MESHSYNC_MERGE);
    v4 = set_json(ms, CONN, "conn123", "{\"preferences\":{\"theme\":\"dark\"}}",
                  MESHSYNC_DEEP_MERGE);
    assert_true(v3 > v2 && v4 > v3);
    expect_get(ms, CONN, "conn123", 0, full, v4);
    expect_redis(h, CONN, "conn123", full);
    assert_int_equal(redis_version(h, CONN, "conn123"), v4);

    /* Own metadata: hello, then get without an id. */
    HARNESS_CALL_OK(own, meshsync_hello(own, "conn123"));
    HARNESS_CALL_OK(own, meshsync_conn_get(own, NULL, MESHSYNC_JSON, &v));
    assert_json(v.data, full);
    assert_int_equal(v.version, v4);
    meshsync_value_free(&v);

    /* Closing the bound connection removes its metadata everywhere. */
    HARNESS_CALL_OK(own, meshsync_conn_close(own, NULL, &vc));
    assert_true(vc > v4);
    expect_get(ms, CONN, "conn123", 0, "null", vc);
    expect_redis(h, CONN, "conn123", NULL);
    assert_int_equal(redis_version(h, CONN, "conn123"), 0);

    meshsync_free(own);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}

static void test_room_examples(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    const char *topic = "{\"topic\":\"Updated Topic\",\"createdBy\":"
                        "\"user123\"}";
    const char *deep = "{\"topic\":\"Updated Topic\",\"createdBy\":"
                       "\"user123\",\"settings\":{\"maxUsers\":100,"
                       "\"private\":false}}";
    uint64_t v[8];

    v[0] = set_json(ms, ROOM, "lobby",
                    "{\"topic\":\"General Discussion\","
                    "\"createdBy\":\"user123\"}",
                    MESHSYNC_REPLACE);
    expect_redis(h, ROOM, "lobby",
                 "{\"topic\":\"General Discussion\","
                 "\"createdBy\":\"user123\"}");

    /* merge: the topic changes, createdBy stays. */
    v[1] = set_json(ms, ROOM, "lobby", "{\"topic\":\"Updated Topic\"}",
                    MESHSYNC_MERGE);
    expect_get(ms, ROOM, "lobby", 0, topic, v[1]);
    expect_redis(h, ROOM, "lobby", topic);

    /* deepMerge into an existing settings object. */
    v[2] = set_json(ms, ROOM, "lobby",
                    "{\"settings\":{\"maxUsers\":50,\"private\":false}}",
                    MESHSYNC_MERGE);
    v[3] = set_json(ms, ROOM, "lobby", "{\"settings\":{\"maxUsers\":100}}",
                    MESHSYNC_DEEP_MERGE);
    expect_get(ms, ROOM, "lobby", 0, deep, v[3]);
    expect_redis(h, ROOM, "lobby", deep);
    assert_int_equal(redis_version(h, ROOM, "lobby"), v[3]);

    /* Setting null clears it, with any strategy. */
    v[4] = set_json(ms, ROOM, "lobby", "null", MESHSYNC_REPLACE);
    expect_get(ms, ROOM, "lobby", 0, "null", v[4]);
    expect_redis(h, ROOM, "lobby", NULL);
    v[5] =
        set_json(ms, ROOM, "lobby", "{\"topic\":\"again\"}", MESHSYNC_REPLACE);
    v[6] = set_json(ms, ROOM, "lobby", "null", MESHSYNC_DEEP_MERGE);
    expect_get(ms, ROOM, "lobby", 0, "null", v[6]);
    expect_redis(h, ROOM, "lobby", NULL);

    /* room.delete removes it, and its version field. */
    set_json(ms, ROOM, "lobby", "{\"topic\":\"last\"}", MESHSYNC_REPLACE);
    HARNESS_CALL_OK(ms, meshsync_room_delete(ms, "lobby", &v[7]));
    expect_get(ms, ROOM, "lobby", 0, "null", v[7]);
    expect_redis(h, ROOM, "lobby", NULL);
    assert_int_equal(redis_version(h, ROOM, "lobby"), 0);

    for (int i = 1; i < 8; i++)
        assert_true(v[i] > v[i - 1]);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}

/* --- two sidecars ----------------------------------------------------- */

/* Sends a raw room.get with minVersion; its reply comes later. */
static void send_wait_get(int fd, uint64_t id, const char *room, uint64_t min)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    harness_request_begin(&pk, &sb, id, "room.get", 3);
    harness_pack_str(&pk, "room");
    harness_pack_str(&pk, room);
    harness_pack_str(&pk, "minVersion");
    msgpack_pack_uint64(&pk, min);
    harness_pack_str(&pk, "timeout");
    msgpack_pack_uint64(&pk, 30000);
    harness_request_send(fd, &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void test_two_sidecars(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *db = harness_daemon_start(h, "b", NULL, NULL);
    meshsync_t *a = harness_client_open(da);
    meshsync_t *b = harness_client_open(db);
    uint64_t v1, v2, vd, vw;
    meshsync_value_t v;
    harness_reply_t r;
    int fd;

    /* A write through A, read back through B with its version. */
    v1 = set_json(a, ROOM, "xroom", "{\"topic\":\"one\",\"n\":1}",
                  MESHSYNC_REPLACE);
    expect_get(b, ROOM, "xroom", v1, "{\"topic\":\"one\",\"n\":1}", v1);
    v2 = set_json(b, ROOM, "xroom", "{\"n\":2}", MESHSYNC_MERGE);
    assert_true(v2 > v1);
    expect_get(a, ROOM, "xroom", v2, "{\"topic\":\"one\",\"n\":2}", v2);

    v1 = set_json(a, CONN, "xconn", "{\"userId\":\"u\"}", MESHSYNC_REPLACE);
    expect_get(b, CONN, "xconn", v1, "{\"userId\":\"u\"}", v1);
    HARNESS_CALL_OK(a, meshsync_conn_close(a, "xconn", &vd));
    expect_get(b, CONN, "xconn", vd, "null", vd);
    HARNESS_CALL_OK(a, meshsync_room_delete(a, "xroom", &vd));
    expect_get(b, ROOM, "xroom", vd, "null", vd);

    /* A version that never comes: timeout, and the handle stays usable. */
    assert_int_equal(
        meshsync_room_get_min(b, "xroom", vd + 1000, 50, MESHSYNC_JSON, &v),
        -1);
    assert_string_equal(meshsync_errcode(b), "timeout");
    assert_null(v.data);
    HARNESS_CALL_OK(b, meshsync_ping(b));

    /* A wait longer than the handle's timeout: the library waits it out. */
    meshsync_set_timeout(b, 1000);
    assert_int_equal(
        meshsync_room_get_min(b, "xroom", vd + 1000, 1500, MESHSYNC_JSON, &v),
        -1);
    assert_string_equal(meshsync_errcode(b), "timeout");
    HARNESS_CALL_OK(b, meshsync_ping(b));
    assert_int_equal(
        meshsync_room_get_min(b, "xroom", 1, 60001, MESHSYNC_JSON, &v), -1);
    assert_string_equal(meshsync_errcode(b), "invalid_request");

    /*
     * A read parked on B before the write exists: B answers the ping
     * after it, so the get is waiting when A writes.
     */
    fd = harness_unix_connect(db->socket);
    assert_true(fd >= 0);
    send_wait_get(fd, 7, "later", vd + 1);
    harness_ping_send(fd, 8);
    harness_reply_recv_ok(fd, 8, WAIT_MS, &r);
    harness_reply_free(&r);
    vw = set_json(a, ROOM, "later", "{\"late\":true}", MESHSYNC_REPLACE);
    harness_reply_recv_ok(fd, 7, WAIT_MS, &r);
    assert_int_equal(harness_reply_version(&r.u.data), vw);
    assert_non_null(harness_map_get(&r.u.data, "value"));
    assert_int_equal(harness_map_get(&r.u.data, "value")->type,
                     MSGPACK_OBJECT_MAP);
    harness_reply_free(&r);
    close(fd);

    meshsync_free(a);
    meshsync_free(b);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(db);
}

/* --- Redis written by others ------------------------------------------ */

static void test_preloaded_values(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *d;
    meshsync_t *ms;
    uint64_t v;

    /* What a Mesh server writes: no version field, no change message. */
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta pre-conn %s",
                                    "{\"userId\":\"pre\",\"n\":1}"));
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:pre-room data %s",
                                    "{\"topic\":\"pre\",\"s\":{\"a\":1}}"));

    /* The scrub versions them soon after start: any version will do. */
    d = harness_daemon_start(h, "a", NULL, NULL);
    ms = harness_client_open(d);
    expect_get(ms, CONN, "pre-conn", 0, "{\"userId\":\"pre\",\"n\":1}",
               ANY_VERSION);
    expect_get(ms, ROOM, "pre-room", 0, "{\"topic\":\"pre\",\"s\":{\"a\":1}}",
               ANY_VERSION);

    /* Merges start from what Mesh wrote. */
    v = set_json(ms, CONN, "pre-conn", "{\"n\":2}", MESHSYNC_MERGE);
    expect_get(ms, CONN, "pre-conn", 0, "{\"userId\":\"pre\",\"n\":2}", v);
    expect_redis(h, CONN, "pre-conn", "{\"userId\":\"pre\",\"n\":2}");
    v = set_json(ms, ROOM, "pre-room", "{\"s\":{\"b\":2}}",
                 MESHSYNC_DEEP_MERGE);
    expect_get(ms, ROOM, "pre-room", 0,
               "{\"topic\":\"pre\",\"s\":{\"a\":1,\"b\":2}}", v);
    expect_redis(h, ROOM, "pre-room",
                 "{\"topic\":\"pre\",\"s\":{\"a\":1,\"b\":2}}");

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}

static void test_script_flush(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    redisReply *r;
    uint64_t v1, v2;

    v1 = set_json(ms, ROOM, "flushed", "{\"a\":1,\"s\":{\"x\":1}}",
                  MESHSYNC_REPLACE);
    r = harness_command(harness_redis(h), "SCRIPT FLUSH");
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);

    v2 = set_json(ms, ROOM, "flushed", "{\"b\":2,\"s\":{\"y\":2}}",
                  MESHSYNC_DEEP_MERGE);
    assert_true(v2 > v1);
    expect_get(ms, ROOM, "flushed", 0,
               "{\"a\":1,\"s\":{\"x\":1,\"y\":2},\"b\":2}", v2);
    expect_redis(h, ROOM, "flushed",
                 "{\"a\":1,\"s\":{\"x\":1,\"y\":2},\"b\":2}");

    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}

/* --- exact integers --------------------------------------------------- */

#define BIG_JSON                                                               \
    "{\"big\":9007199254740993,\"max\":9223372036854775807,"                   \
    "\"min\":-9223372036854775808,\"list\":[9007199254740995]}"

/* The JSON text a get returns, compared byte for byte. */
static void expect_text(meshsync_t *ms, kind_t kind, const char *id,
                        uint64_t min, const char *want)
{
    meshsync_value_t v;

    get_min(ms, kind, id, min, MESHSYNC_JSON, &v);
    assert_string_equal(v.data, want);
    assert_int_equal(v.len, strlen(want));
    meshsync_value_free(&v);
}

/* The msgpack form keeps 2^53 + 1 an integer. */
static void expect_big_msgpack(meshsync_t *ms, uint64_t min)
{
    const msgpack_object *big;
    meshsync_value_t v;
    msgpack_unpacked u;
    size_t off = 0;

    get_min(ms, CONN, "big", min, MESHSYNC_MSGPACK, &v);
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, v.data, v.len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    big = harness_map_get(&u.data, "big");
    assert_non_null(big);
    assert_int_equal(big->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(big->via.u64 == 9007199254740993ULL);
    big = harness_map_get(&u.data, "min");
    assert_true(big != NULL && big->type == MSGPACK_OBJECT_NEGATIVE_INTEGER &&
                big->via.i64 == INT64_MIN);
    msgpack_unpacked_destroy(&u);
    meshsync_value_free(&v);
}

static void test_big_integers(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *db = harness_daemon_start(h, "b", NULL, NULL);
    meshsync_t *a = harness_client_open(da);
    meshsync_t *b = harness_client_open(db);
    uint64_t vc, vr;

    vc = set_json(a, CONN, "big", BIG_JSON, MESHSYNC_REPLACE);
    vr = set_json(a, ROOM, "big", BIG_JSON, MESHSYNC_REPLACE);
    expect_redis(h, CONN, "big", BIG_JSON);
    expect_redis(h, ROOM, "big", BIG_JSON);

    expect_text(a, CONN, "big", 0, BIG_JSON);
    expect_text(a, ROOM, "big", 0, BIG_JSON);
    expect_text(b, CONN, "big", vc, BIG_JSON);
    expect_text(b, ROOM, "big", vr, BIG_JSON);
    expect_big_msgpack(a, 0);
    expect_big_msgpack(b, vc);

    /* A merge through B keeps the other big numbers exact. */
    vc =
        set_json(b, CONN, "big", "{\"more\":9007199254740997}", MESHSYNC_MERGE);
    expect_text(a, CONN, "big", vc,
                "{\"big\":9007199254740993,\"max\":9223372036854775807,"
                "\"min\":-9223372036854775808,\"list\":[9007199254740995],"
                "\"more\":9007199254740997}");

    meshsync_free(a);
    meshsync_free(b);
    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(db);
}

/* --- the CLI ---------------------------------------------------------- */

/* Runs the CLI with --socket sock and args; checks status and stdout. */
static void cli(const char *sock, const char *const *args, const char *in,
                int status, const char *out, harness_run_t *r)
{
    const char *argv[16];
    size_t n = 0;

    argv[n++] = "--socket";
    argv[n++] = sock;
    for (; *args != NULL && n < 15; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    harness_cli_run(argv, NULL, in, in ? strlen(in) : 0, r);
    if (r->status != status || (out != NULL && strcmp(r->out, out) != 0))
        fail_msg("meshsync %s %s: status %d, stdout '%s', stderr '%s'; "
                 "want %d '%s'",
                 argv[2], argv[3] ? argv[3] : "", r->status, r->out, r->err,
                 status, out ? out : "(any)");
}

/* The N of a {"version":N} line. */
static uint64_t cli_version(const harness_run_t *r)
{
    uint64_t v = 0;

    if (sscanf(r->out, "{\"version\":%" SCNu64 "}\n", &v) != 1 || v == 0)
        fail_msg("not a version line: '%s'", r->out);
    return v;
}

static void test_cli_basics(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    const char *s = d->socket;
    char want[256], vbuf[32];
    harness_run_t r;
    uint64_t v;

    cli(s, (const char *[]){"ping", NULL}, NULL, 0, "pong\n", &r);
    harness_run_free(&r);

    cli(s, (const char *[]){"room", "set", "lobby", "{\"topic\":\"x\"}", NULL},
        NULL, 0, NULL, &r);
    cli_version(&r);
    harness_run_free(&r);
    cli(s,
        (const char *[]){"room", "set", "lobby", "{\"createdBy\":\"u\"}",
                         "--strategy", "merge", NULL},
        NULL, 0, NULL, &r);
    v = cli_version(&r);
    harness_run_free(&r);
    cli(s, (const char *[]){"room", "get", "lobby", NULL}, NULL, 0,
        "{\"topic\":\"x\",\"createdBy\":\"u\"}\n", &r);
    harness_run_free(&r);
    snprintf(want, sizeof(want),
             "{\"value\":{\"topic\":\"x\",\"createdBy\":\"u\"},"
             "\"version\":%" PRIu64 ",\"stale\":false}\n",
             v);
    cli(s, (const char *[]){"-v", "room", "get", "lobby", NULL}, NULL, 0, want,
        &r);
    harness_run_free(&r);

    /* The value from stdin; conn close; room delete. */
    cli(s, (const char *[]){"conn", "set", "c1", "-", NULL},
        "{\"userId\":\"u1\"}", 0, NULL, &r);
    v = cli_version(&r);
    harness_run_free(&r);
    snprintf(vbuf, sizeof(vbuf), "%" PRIu64, v);
    cli(s, (const char *[]){"conn", "get", "c1", "--min-version", vbuf, NULL},
        NULL, 0, "{\"userId\":\"u1\"}\n", &r);
    harness_run_free(&r);

    /* --as binds the session, as an app reading its own metadata does. */
    cli(s,
        (const char *[]){"--as", "c1", "conn", "set", "{\"role\":\"a\"}",
                         "--strategy", "merge", NULL},
        NULL, 0, NULL, &r);
    harness_run_free(&r);
    cli(s, (const char *[]){"--as", "c1", "conn", "get", NULL}, NULL, 0,
        "{\"userId\":\"u1\",\"role\":\"a\"}\n", &r);
    harness_run_free(&r);
    cli(s, (const char *[]){"--as", "c1", "conn", "close", NULL}, NULL, 0, NULL,
        &r);
    assert_true(cli_version(&r) > v);
    harness_run_free(&r);
    cli(s, (const char *[]){"conn", "get", "c1", NULL}, NULL, 0, "null\n", &r);
    harness_run_free(&r);
    cli(s, (const char *[]){"room", "delete", "lobby", NULL}, NULL, 0, NULL,
        &r);
    harness_run_free(&r);
    cli(s, (const char *[]){"room", "get", "lobby", NULL}, NULL, 0, "null\n",
        &r);
    harness_run_free(&r);
    expect_redis(h, ROOM, "lobby", NULL);
    expect_redis(h, CONN, "c1", NULL);
    harness_daemon_stop_clean(d);
}

static void test_cli_errors(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *da = harness_daemon_start(h, "a", NULL, NULL);
    harness_daemon_t *db = harness_daemon_start(h, "b", NULL, NULL);
    char room[300], vbuf[32], later[32], none[HARNESS_PATH_MAX];
    harness_run_t r;
    uint64_t v;

    /* Written through A, read through B once B has that version. */
    cli(da->socket, (const char *[]){"room", "set", "r", "[1,2]", NULL}, NULL,
        0, NULL, &r);
    v = cli_version(&r);
    harness_run_free(&r);
    snprintf(vbuf, sizeof(vbuf), "%" PRIu64, v);
    snprintf(later, sizeof(later), "%" PRIu64, v + 100);
    cli(db->socket,
        (const char *[]){"room", "get", "r", "--min-version", vbuf, "--wait-ms",
                         "5000", NULL},
        NULL, 0, "[1,2]\n", &r);
    harness_run_free(&r);

    /* Request errors exit 1 and name the code; the wait adds to --timeout. */
    cli(db->socket,
        (const char *[]){"room", "get", "r", "--min-version", later,
                         "--wait-ms=300", "--timeout", "100", NULL},
        NULL, 1, "", &r);
    assert_non_null(strstr(r.err, "meshsync: timeout:"));
    harness_run_free(&r);
    memset(room, 'x', sizeof(room) - 1);
    room[sizeof(room) - 1] = '\0';
    cli(da->socket, (const char *[]){"room", "get", room, NULL}, NULL, 1, "",
        &r);
    assert_non_null(strstr(r.err, "meshsync: too_large:"));
    harness_run_free(&r);
    cli(da->socket, (const char *[]){"room", "set", "r", "{bad", NULL}, NULL, 1,
        "", &r);
    assert_non_null(strstr(r.err, "meshsync: invalid_request:"));
    harness_run_free(&r);

    /* Usage errors exit 2. */
    cli(da->socket,
        (const char *[]){"room", "get", "r", "--wait-ms", "5", NULL}, NULL, 2,
        "", &r);
    harness_run_free(&r);
    cli(da->socket,
        (const char *[]){"room", "set", "r", "1", "--min-version", "3", NULL},
        NULL, 2, "", &r);
    harness_run_free(&r);
    cli(da->socket,
        (const char *[]){"room", "get", "r", "--wait-ms", "60001",
                         "--min-version", "1", NULL},
        NULL, 2, "", &r);
    harness_run_free(&r);
    cli(da->socket, (const char *[]){"--help", NULL}, NULL, 0, NULL, &r);
    assert_non_null(strstr(r.out, "--min-version N"));
    assert_non_null(strstr(r.out, "--wait-ms MS"));
    harness_run_free(&r);

    /* Nobody listens there: 3. */
    harness_path(h, "nobody.sock", none, sizeof(none));
    cli(none, (const char *[]){"ping", NULL}, NULL, 3, "", &r);
    assert_non_null(strstr(r.err, "meshsync: io:"));
    harness_run_free(&r);
    cli(none, (const char *[]){"room", "get", "r", NULL}, NULL, 3, "", &r);
    harness_run_free(&r);

    harness_daemon_stop_clean(da);
    harness_daemon_stop_clean(db);
}

/* --- reads from Redis ------------------------------------------------- */

/*
 * Sends room.get for room with the extra options (consistency, minVersion
 * with a 200 ms wait) and returns the reply; the caller frees it.
 */
static void get_raw(int fd, uint64_t id, const char *room,
                    const char *consistency, uint64_t min_version,
                    harness_reply_t *r)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    size_t n = 1 + (consistency != NULL) + 2 * (min_version != 0);

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    harness_request_begin(&pk, &sb, id, "room.get", n);
    harness_pack_str(&pk, "room");
    harness_pack_str(&pk, room);
    if (consistency != NULL) {
        harness_pack_str(&pk, "consistency");
        harness_pack_str(&pk, consistency);
    }
    if (min_version != 0) {
        harness_pack_str(&pk, "minVersion");
        msgpack_pack_uint64(&pk, min_version);
        harness_pack_str(&pk, "timeout");
        msgpack_pack_uint64(&pk, 200);
    }
    harness_request_send(fd, &sb);
    msgpack_sbuffer_destroy(&sb);
    harness_reply_recv(fd, HARNESS_TIMEOUT_MS, r);
}


/* The reply's error code as a string ("" when ok). */
static const char *reply_code(const harness_reply_t *r)
{
    const msgpack_object *c = harness_reply_error_code(&r->u.data);
    static char code[32];

    if (c == NULL || c->via.str.size >= sizeof(code))
        return "";
    memcpy(code, c->via.str.ptr, c->via.str.size);
    code[c->via.str.size] = '\0';
    return code;
}


/*
 * A write straight into Redis, versioned but not published (as if its
 * change message were lost): the cache does not have it. A strong read
 * gets it from Redis; a minVersion read for it waits, then falls back to
 * Redis; a minVersion beyond Redis's fails with timeout.
 */
static void test_reads_from_redis(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    redisContext *c = harness_redis(h);
    int fd = harness_unix_connect(d->socket);
    const msgpack_object *v;
    harness_reply_t r;

    freeReplyObject(
        harness_command(c, "HSET mesh:roommeta:hidden data %s", "{\"x\":1}"));
    freeReplyObject(
        harness_command(c, "HSET mesh:meshsync:versions:room hidden 7"));

    get_raw(fd, 1, "hidden", NULL, 0, &r);
    harness_reply_check_ok(&r.u.data);
    assert_int_equal(harness_map_get(&r.u.data, "value")->type,
                     MSGPACK_OBJECT_NIL);
    harness_reply_free(&r);

    get_raw(fd, 2, "hidden", "strong", 0, &r);
    harness_reply_check_ok(&r.u.data);
    assert_int_equal(harness_reply_version(&r.u.data), 7);
    v = harness_map_get(&r.u.data, "value");
    assert_int_equal(v->type, MSGPACK_OBJECT_MAP);
    assert_true(harness_obj_is_str(&v->via.map.ptr[0].key, "x"));
    harness_reply_free(&r);

    get_raw(fd, 3, "hidden", NULL, 7, &r);
    harness_reply_check_ok(&r.u.data);
    assert_int_equal(harness_reply_version(&r.u.data), 7);
    harness_reply_free(&r);

    get_raw(fd, 4, "hidden", NULL, 8, &r);
    assert_string_equal(reply_code(&r), "timeout");
    harness_reply_free(&r);

    /* Redis holds 7, a strong read wanting 8 finds it short: timeout. */
    get_raw(fd, 40, "hidden", "strong", 8, &r);
    assert_string_equal(reply_code(&r), "timeout");
    harness_reply_free(&r);

    get_raw(fd, 5, "hidden", "eventual", 0, &r);
    assert_string_equal(reply_code(&r), "invalid_request");
    harness_reply_free(&r);

    /* Deleted at 9 (unseen by the cache): absent as of the sequence. */
    freeReplyObject(harness_command(c, "DEL mesh:roommeta:hidden"));
    freeReplyObject(
        harness_command(c, "HDEL mesh:meshsync:versions:room hidden"));
    freeReplyObject(harness_command(c, "SET mesh:meshsync:seq 9"));
    get_raw(fd, 41, "hidden", NULL, 9, &r);
    harness_reply_check_ok(&r.u.data);
    assert_int_equal(harness_map_get(&r.u.data, "value")->type,
                     MSGPACK_OBJECT_NIL);
    assert_int_equal(harness_reply_version(&r.u.data), 9);
    harness_reply_free(&r);

    /* The same through the library and the CLI. */
    {
        meshsync_t *ms = harness_client_open(d);
        meshsync_value_t got;
        harness_run_t run;

        meshsync_set_strong(ms, 1);
        HARNESS_CALL_OK(ms,
                        meshsync_room_get(ms, "hidden", MESHSYNC_JSON, &got));
        assert_string_equal(got.data, "null");
        assert_int_equal(got.version, 9);
        meshsync_value_free(&got);
        meshsync_free(ms);
        freeReplyObject(harness_command(c, "HSET mesh:roommeta:hidden data 5"));
        cli(d->socket,
            (const char *[]){"room", "get", "hidden", "--strong", NULL}, NULL,
            0, "5\n", &run);
        harness_run_free(&run);
        cli(d->socket, (const char *[]){"room", "get", "hidden", NULL}, NULL, 0,
            "null\n", &run);
        harness_run_free(&run);
    }

    /* Without Redis a strong read cannot be made. */
    harness_redis_stop(h);
    get_raw(fd, 6, "hidden", "strong", 0, &r);
    assert_string_equal(reply_code(&r), "unavailable");
    harness_reply_free(&r);
    close(fd);
    harness_daemon_stop_clean(d);
}


/* --- health ----------------------------------------------------------- */

/*
 * Live and caught up: ready, no lag, the sequence of the last write; the
 * CLI exits 0. Redis gone: down, not ready, lag unknown; the CLI exits 1.
 */
static void test_health(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    meshsync_value_t val;
    uint64_t v = 0;
    harness_run_t r;
    char out[128];
    json_t *rep;

    HARNESS_CALL_OK(ms, meshsync_room_set(ms, "lobby", MESHSYNC_JSON, "{}", 2,
                                          MESHSYNC_REPLACE, &v));
    rep = harness_health(ms);
    assert_string_equal(json_string_value(json_object_get(rep, "state")),
                        "live");
    assert_true(json_is_true(json_object_get(rep, "ready")));
    assert_int_equal(json_integer_value(json_object_get(rep, "seq")), v);
    assert_int_equal(json_integer_value(json_object_get(rep, "redisSeq")), v);
    assert_int_equal(json_integer_value(json_object_get(rep, "lag")), 0);
    assert_int_equal(json_integer_value(json_object_get(rep, "rooms")), 1);
    json_decref(rep);
    cli(d->socket, (const char *[]){"health", NULL}, NULL, 0, NULL, &r);
    harness_run_free(&r);

    harness_redis_stop(h);
    if (!harness_daemon_wait_log(d, "state=down", HARNESS_TIMEOUT_MS))
        fail_msg("no state=down; log:\n%s", harness_daemon_log(d));
    rep = harness_health(ms);
    assert_string_equal(json_string_value(json_object_get(rep, "state")),
                        "down");
    assert_true(json_is_false(json_object_get(rep, "ready")));
    assert_true(json_is_null(json_object_get(rep, "lag")));
    json_decref(rep);
    cli(d->socket, (const char *[]){"health", NULL}, NULL, 1, NULL, &r);
    harness_run_free(&r);

    /* Reads go on from the cache: stale, behind by nobody knows what. */
    HARNESS_CALL_OK(ms, meshsync_room_get(ms, "lobby", MESHSYNC_JSON, &val));
    assert_string_equal(val.data, "{}");
    assert_int_equal(val.version, v);
    assert_int_equal(val.stale, 1);
    assert_int_equal(val.behind, -1);
    meshsync_value_free(&val);
    snprintf(out, sizeof(out),
             "{\"value\":{},\"version\":%" PRIu64 ",\"stale\":true}\n", v);
    cli(d->socket, (const char *[]){"-v", "room", "get", "lobby", NULL}, NULL,
        0, out, &r);
    harness_run_free(&r);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/*
 * Writes made straight into Redis reach the cache through keyspace
 * notifications, well before the periodic scan (30 s by default) could
 * find them. The hand delete is followed at once by a meshsync delete of
 * a connection that never existed: that causes no notification, so it
 * must not be taken as the explanation of the hand delete's.
 */
static void test_outside_writes(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *d;
    meshsync_t *ms;
    uint64_t v, gone;
    json_t *rep;

    freeReplyObject(
        harness_command(c, "CONFIG SET notify-keyspace-events Kgh"));
    d = harness_daemon_start(h, "a", NULL, NULL);
    ms = harness_client_open(d);
    /* The first scan follows the lease and the notifications check. */
    if (!harness_daemon_wait_log(d, "scrub done", HARNESS_TIMEOUT_MS) ||
        strstr(harness_daemon_log(d), "scrub lease taken") == NULL ||
        strstr(harness_daemon_log(d), "keyspace notifications on") == NULL)
        fail_msg("no scrub lease or notifications; log:\n%s",
                 harness_daemon_log(d));

    v = set_json(ms, CONN, "A", "{\"a\":1}", MESHSYNC_REPLACE);
    freeReplyObject(harness_command(c, "HDEL mesh:connection-meta A"));
    gone = set_json(ms, CONN, "B", "null", MESHSYNC_REPLACE);
    assert_int_equal(gone, v + 1);

    /* The scrub versions the hand delete: the next version. */
    expect_get(ms, CONN, "A", v + 2, "null", v + 2);

    freeReplyObject(
        harness_command(c, "HSET mesh:roommeta:R data %s", "{\"x\":[1]}"));
    expect_get(ms, ROOM, "R", v + 3, "{\"x\":[1]}", v + 3);
    freeReplyObject(harness_command(c, "DEL mesh:roommeta:R"));
    expect_get(ms, ROOM, "R", v + 4, "null", v + 4);

    rep = harness_health(ms);
    assert_true(json_is_true(json_object_get(rep, "scrubber")));
    assert_true(json_is_true(json_object_get(rep, "keyspaceEvents")));
    assert_int_equal(json_integer_value(json_object_get(rep, "adopted")), 3);
    json_decref(rep);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* A lease key Redis cannot use is reported, and taken once it can. */
static void test_scrub_lease_error(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *d;
    meshsync_t *ms;
    json_t *rep;

    freeReplyObject(harness_command(c, "HSET mesh:meshsync:scrubber x y"));
    d = harness_daemon_start(h, "a", NULL, NULL);
    ms = harness_client_open(d);
    /* It may come before "ready", which the client's opening waited for. */
    if (strstr(harness_daemon_log(d), "scrub lease unavailable") == NULL &&
        !harness_daemon_wait_log(d, "scrub lease unavailable",
                                 HARNESS_TIMEOUT_MS))
        fail_msg("no lease error logged; log:\n%s", harness_daemon_log(d));
    rep = harness_health(ms);
    assert_true(json_is_false(json_object_get(rep, "scrubber")));
    json_decref(rep);

    freeReplyObject(harness_command(c, "DEL mesh:meshsync:scrubber"));
    if (!harness_daemon_wait_log(d, "scrub lease taken", HARNESS_TIMEOUT_MS))
        fail_msg("no lease taken; log:\n%s", harness_daemon_log(d));
    rep = harness_health(ms);
    assert_true(json_is_true(json_object_get(rep, "scrubber")));
    json_decref(rep);
    meshsync_free(ms);
    harness_daemon_stop_clean(d);
}


/* --- stopping --------------------------------------------------------- */

static void test_sigterm(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *d = harness_daemon_start(h, "a", NULL, NULL);
    meshsync_t *ms = harness_client_open(d);
    harness_reply_t r;
    int status;
    int fd;

    set_json(ms, ROOM, "r", "1", MESHSYNC_REPLACE);

    /* A read still waiting for its version must not hold the exit up. */
    fd = harness_unix_connect(d->socket);
    assert_true(fd >= 0);
    send_wait_get(fd, 1, "r", 1000000);
    harness_ping_send(fd, 2);
    harness_reply_recv_ok(fd, 2, WAIT_MS, &r);
    harness_reply_free(&r);

    status = harness_daemon_signal(d, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(access(d->socket, F_OK), -1);
    assert_int_equal(errno, ENOENT);
    harness_daemon_expect_log_clean(d);

    /* Its clients see the connection end. */
    assert_true(harness_wait_closed(fd, WAIT_MS));
    assert_int_equal(meshsync_ping(ms), -1);
    assert_string_equal(meshsync_errcode(ms), "io");
    close(fd);
    meshsync_free(ms);
}

/* Each test with its own harness and redis-server. */
#define TEST(f)                                                                \
    cmocka_unit_test_setup_teardown(f, harness_setup_redis, harness_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_conn_examples),    TEST(test_room_examples),
        TEST(test_two_sidecars),     TEST(test_preloaded_values),
        TEST(test_script_flush),     TEST(test_big_integers),
        TEST(test_cli_basics),       TEST(test_cli_errors),
        TEST(test_reads_from_redis), TEST(test_health),
        TEST(test_outside_writes),   TEST(test_scrub_lease_error),
        TEST(test_sigterm),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
