/*
 * test_scripts.c - schema/write.lua, load.lua and scrub.lua against a real
 * redis-server (run with EVAL from a synchronous hiredis context), and
 * sidecar/redis.c's links on a libuv loop: connecting, scripts and the
 * NOSCRIPT fallback, messages, reconnecting after kills and restarts,
 * pending commands and closing.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "redis.h"

#define CHANNEL "mesh:meshsync:changes"
#define WAIT_MS 5000

static char *script_write;
static char *script_load;
static char *script_scrub;


/* --- helpers for the scripts ------------------------------------------ */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL)
        fail_msg("%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}


static redisReply *eval_argv(redisContext *c, int argc, const char **argv)
{
    size_t lens[32];
    redisReply *rep;

    assert_true(argc <= 32);
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    rep = redisCommandArgv(c, argc, argv, lens);
    assert_non_null(rep);
    return rep;
}


/*
 * Calls write.lua as writer (a sidecar's instance id) for an entry of kind
 * "conn" or "room" under prefix; turns last 100 ms.
 */
static redisReply *write_entry_as(redisContext *c, const char *writer,
                                  const char *prefix, const char *kind,
                                  const char *id, const char *check,
                                  const char *expected, const char *op,
                                  const char *json)
{
    char value_key[512], versions[256], seq[256], channel[256], turn[512];
    char log[256];
    bool conn = strcmp(kind, "conn") == 0;

    if (conn)
        snprintf(value_key, sizeof(value_key), "%s:connection-meta", prefix);
    else
        snprintf(value_key, sizeof(value_key), "%s:roommeta:%s", prefix, id);
    snprintf(versions, sizeof(versions), "%s:meshsync:versions:%s", prefix,
             kind);
    snprintf(seq, sizeof(seq), "%s:meshsync:seq", prefix);
    snprintf(channel, sizeof(channel), "%s:meshsync:changes", prefix);
    snprintf(turn, sizeof(turn), "%s:meshsync:turn:%s:%s", prefix, kind, id);
    snprintf(log, sizeof(log), "%s:meshsync:log", prefix);

    const char *argv[] = {"EVAL",
                          script_write,
                          "5",
                          value_key,
                          versions,
                          seq,
                          turn,
                          log,
                          conn ? id : "data",
                          id,
                          channel,
                          kind,
                          check,
                          expected ? expected : "",
                          op,
                          json ? json : "",
                          writer,
                          "100",
                          "1000"};
    return eval_argv(c, 19, argv);
}


static redisReply *write_entry(redisContext *c, const char *prefix,
                               const char *kind, const char *id,
                               const char *check, const char *expected,
                               const char *op, const char *json)
{
    return write_entry_as(c, "w1", prefix, kind, id, check, expected, op, json);
}


static redisReply *set_conn(redisContext *c, const char *id, const char *json)
{
    return write_entry(c, "mesh", "conn", id, "any", NULL, "set", json);
}


static void expect_written(redisReply *rep, long long version)
{
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 2);
    assert_int_equal(rep->element[0]->integer, 1);
    assert_int_equal(rep->element[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->element[1]->integer, version);
    freeReplyObject(rep);
}


/* A refused check: {0, current JSON or nil, current version, reason}. */
static void expect_refused_for(redisReply *rep, const char *current,
                               long long version, const char *reason)
{
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 4);
    assert_int_equal(rep->element[0]->integer, 0);
    if (current == NULL) {
        assert_int_equal(rep->element[1]->type, REDIS_REPLY_NIL);
    } else {
        assert_int_equal(rep->element[1]->type, REDIS_REPLY_STRING);
        assert_string_equal(rep->element[1]->str, current);
    }
    assert_int_equal(rep->element[2]->integer, version);
    assert_int_equal(rep->element[3]->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->element[3]->str, reason);
    freeReplyObject(rep);
}


static void expect_refused(redisReply *rep, const char *current,
                           long long version)
{
    expect_refused_for(rep, current, version, "changed");
}


/* The first 16 hex digits of the SHA-1 of text, as Redis computes them. */
static void digest_of(redisContext *c, const char *text, char out[17])
{
    redisReply *rep = harness_command(c, "EVAL %s 0 %s",
                                      "return redis.sha1hex(ARGV[1])", text);

    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, 40);
    memcpy(out, rep->str, 16);
    out[16] = '\0';
    freeReplyObject(rep);
}


/*
 * Checks id's field in the versions hash key: "<version>:<digest>", the
 * digest being that of json, the text written.
 */
static void expect_version(redisContext *c, const char *key, const char *id,
                           long long version, const char *json)
{
    char want[64], digest[17];
    redisReply *rep = harness_command(c, "HGET %s %s", key, id);

    digest_of(c, json, digest);
    snprintf(want, sizeof(want), "%lld:%s", version, digest);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, want);
    assert_int_equal(strtoll(rep->str, NULL, 10), version);
    freeReplyObject(rep);
}


/* Checks a string reply (NULL: nil) of a command. */
static void expect_str(redisContext *c, const char *want, const char *fmt, ...)
{
    redisReply *rep;
    va_list ap;

    va_start(ap, fmt);
    rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(rep);
    if (want == NULL) {
        assert_int_equal(rep->type, REDIS_REPLY_NIL);
    } else {
        assert_int_equal(rep->type, REDIS_REPLY_STRING);
        assert_string_equal(rep->str, want);
    }
    freeReplyObject(rep);
}


static redisContext *subscriber(harness_t *h)
{
    redisContext *s = harness_redis_connect(h);
    struct timeval tv = {WAIT_MS / 1000, 0};
    redisReply *rep;

    assert_int_equal(redisSetTimeout(s, tv), REDIS_OK);
    rep = harness_command(s, "SUBSCRIBE %s", CHANNEL);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    freeReplyObject(rep);
    return s;
}


/* Reads the next message on the subscriber (bounded by its timeout). */
static redisReply *next_message(redisContext *s)
{
    void *r = NULL;

    assert_int_equal(redisGetReply(s, &r), REDIS_OK);
    assert_non_null(r);
    assert_int_equal(((redisReply *)r)->elements, 3);
    assert_string_equal(((redisReply *)r)->element[0]->str, "message");
    return r;
}


/*
 * Checks a change payload: msgpack [version, kind, id, json|false,
 * existed]; existed is checked unless it is -1.
 */
static void expect_payload_existed(const redisReply *p, long long version,
                                   const char *kind, const char *id,
                                   const char *json, int existed)
{
    msgpack_unpacked u;
    size_t off = 0;
    msgpack_object *a;

    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, p->str, p->len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, p->len);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(u.data.via.array.size, 5);
    a = u.data.via.array.ptr;
    assert_int_equal(a[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(a[0].via.u64, (uint64_t)version);
    assert_true(harness_obj_is_str(&a[1], kind));
    assert_true(harness_obj_is_str(&a[2], id));
    if (json == NULL) {
        assert_int_equal(a[3].type, MSGPACK_OBJECT_BOOLEAN);
        assert_false(a[3].via.boolean);
    } else {
        assert_true(harness_obj_is_str(&a[3], json));
    }
    assert_int_equal(a[4].type, MSGPACK_OBJECT_BOOLEAN);
    if (existed >= 0)
        assert_int_equal(a[4].via.boolean, existed);
    msgpack_unpacked_destroy(&u);
}


static void expect_payload(const redisReply *p, long long version,
                           const char *kind, const char *id, const char *json)
{
    expect_payload_existed(p, version, kind, id, json, -1);
}


/* The next message on subscriber s is that change. */
static void expect_change_existed(redisContext *s, long long version,
                                  const char *kind, const char *id,
                                  const char *json, int existed)
{
    redisReply *msg = next_message(s);

    expect_payload_existed(msg->element[2], version, kind, id, json, existed);
    freeReplyObject(msg);
}


static void expect_change(redisContext *s, long long version, const char *kind,
                          const char *id, const char *json)
{
    expect_change_existed(s, version, kind, id, json, -1);
}


/* Publishes a marker and checks that it is the next message: proves
 * that nothing was published in between, without waiting for silence. */
static void expect_no_change(harness_t *h, redisContext *s)
{
    redisReply *msg;

    freeReplyObject(
        harness_command(harness_redis(h), "PUBLISH %s marker", CHANNEL));
    msg = next_message(s);
    assert_string_equal(msg->element[2]->str, "marker");
    freeReplyObject(msg);
}


static int setup_redis(void **state)
{
    harness_t *h = harness_new();

    harness_redis_start(h, NULL);
    *state = h;
    return 0;
}


static int teardown_redis(void **state)
{
    harness_free(*state);
    return 0;
}


/* --- write.lua -------------------------------------------------------- */

static void test_write_set_conn(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);

    expect_written(set_conn(c, "c1", "{\"a\":1}"), 1);
    expect_str(c, "{\"a\":1}", "HGET mesh:connection-meta c1");
    expect_version(c, "mesh:meshsync:versions:conn", "c1", 1, "{\"a\":1}");
    expect_str(c, "1", "GET mesh:meshsync:seq");
    expect_change(s, 1, "conn", "c1", "{\"a\":1}");

    /* A second write takes the next version; ':' is ordinary in ids. */
    expect_written(set_conn(c, "c:2", "[1,2]"), 2);
    expect_str(c, "[1,2]", "HGET mesh:connection-meta c:2");
    expect_version(c, "mesh:meshsync:versions:conn", "c:2", 2, "[1,2]");
    expect_str(c, "2", "GET mesh:meshsync:seq");
    expect_change(s, 2, "conn", "c:2", "[1,2]");
    redisFree(s);
}


static void test_write_set_room(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);

    expect_written(write_entry(c, "mesh", "room", "lobby", "any", NULL, "set",
                               "{\"topic\":\"x\"}"),
                   1);
    expect_str(c, "{\"topic\":\"x\"}", "HGET mesh:roommeta:lobby data");
    expect_version(c, "mesh:meshsync:versions:room", "lobby", 1,
                   "{\"topic\":\"x\"}");
    expect_str(c, NULL, "HGET mesh:meshsync:versions:conn lobby");
    expect_str(c, "1", "GET mesh:meshsync:seq");
    expect_change(s, 1, "room", "lobby", "{\"topic\":\"x\"}");
    redisFree(s);
}


static void test_write_del(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);

    expect_written(set_conn(c, "c1", "1"), 1);
    expect_change_existed(s, 1, "conn", "c1", "1", false);
    expect_written(
        write_entry(c, "mesh", "conn", "c1", "any", NULL, "del", NULL), 2);
    expect_str(c, NULL, "HGET mesh:connection-meta c1");
    expect_str(c, NULL, "HGET mesh:meshsync:versions:conn c1");
    expect_str(c, "2", "GET mesh:meshsync:seq");
    expect_change_existed(s, 2, "conn", "c1", NULL, true);

    /* A delete of nothing still publishes, saying nothing was there. */
    expect_written(
        write_entry(c, "mesh", "conn", "c1", "any", NULL, "del", NULL), 3);
    expect_change_existed(s, 3, "conn", "c1", NULL, false);

    expect_written(
        write_entry(c, "mesh", "room", "r", "any", NULL, "set", "{}"), 4);
    expect_change_existed(s, 4, "room", "r", "{}", false);
    expect_written(
        write_entry(c, "mesh", "room", "r", "any", NULL, "set", "[]"), 5);
    expect_change_existed(s, 5, "room", "r", "[]", true);
    expect_written(
        write_entry(c, "mesh", "room", "r", "any", NULL, "del", NULL), 6);
    expect_str(c, NULL, "HGET mesh:roommeta:r data");
    expect_change_existed(s, 6, "room", "r", NULL, true);
    redisFree(s);
}


static void test_write_absent(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);

    expect_written(write_entry(c, "mesh", "conn", "c1", "absent", NULL, "set",
                               "{\"v\":1}"),
                   1);
    expect_change(s, 1, "conn", "c1", "{\"v\":1}");

    /* Present now: refused with the current value, nothing written. */
    expect_refused(write_entry(c, "mesh", "conn", "c1", "absent", NULL, "set",
                               "{\"v\":2}"),
                   "{\"v\":1}", 1);
    expect_str(c, "{\"v\":1}", "HGET mesh:connection-meta c1");
    expect_str(c, "1", "GET mesh:meshsync:seq");
    expect_no_change(h, s);

    /* A value written by hand has no version: refused with version 0. */
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:r data 7"));
    expect_refused(
        write_entry(c, "mesh", "room", "r", "absent", NULL, "set", "8"), "7",
        0);
    expect_str(c, "7", "HGET mesh:roommeta:r data");
    expect_str(c, "1", "GET mesh:meshsync:seq");
    expect_no_change(h, s);
    redisFree(s);
}


static void test_write_equal(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);

    /* Nothing stored: an expected value does not match. */
    expect_refused(
        write_entry(c, "mesh", "conn", "c1", "equal", "{}", "set", "{\"a\":1}"),
        NULL, 0);
    expect_str(c, NULL, "HGET mesh:connection-meta c1");
    expect_str(c, NULL, "GET mesh:meshsync:seq");
    expect_no_change(h, s);

    expect_written(set_conn(c, "c1", "{\"a\":1}"), 1);
    expect_change(s, 1, "conn", "c1", "{\"a\":1}");

    /* Same JSON meaning, other text: the check is on the exact text. */
    expect_refused(write_entry(c, "mesh", "conn", "c1", "equal", "{\"a\": 1}",
                               "set", "{\"a\":2}"),
                   "{\"a\":1}", 1);
    expect_str(c, "{\"a\":1}", "HGET mesh:connection-meta c1");
    expect_str(c, "1", "GET mesh:meshsync:seq");
    expect_no_change(h, s);

    expect_written(write_entry(c, "mesh", "conn", "c1", "equal", "{\"a\":1}",
                               "set", "{\"a\":2}"),
                   2);
    expect_str(c, "{\"a\":2}", "HGET mesh:connection-meta c1");
    expect_version(c, "mesh:meshsync:versions:conn", "c1", 2, "{\"a\":2}");
    expect_change(s, 2, "conn", "c1", "{\"a\":2}");

    /* A checked delete. */
    expect_written(
        write_entry(c, "mesh", "conn", "c1", "equal", "{\"a\":2}", "del", NULL),
        3);
    expect_str(c, NULL, "HGET mesh:connection-meta c1");
    expect_change(s, 3, "conn", "c1", NULL);
    redisFree(s);
}


/*
 * Turns: the writer that lost a race takes the entry's turn, and other
 * checked writes wait for it; unchecked writes ignore it.
 */
static void test_write_turn(void **state)
{
    redisContext *c = harness_redis(*state);
    redisReply *rep;

    expect_written(write_entry_as(c, "w1", "mesh", "conn", "c1", "any", NULL,
                                  "set", "{\"a\":1}"),
                   1);

    /* w1 merged from a stale value: refused, and w1 now has the turn. */
    expect_refused_for(write_entry_as(c, "w1", "mesh", "conn", "c1", "equal",
                                      "{}", "set", "{\"b\":1}"),
                       "{\"a\":1}", 1, "changed");
    expect_str(c, "w1", "GET mesh:meshsync:turn:conn:c1");
    rep = harness_command(c, "PTTL mesh:meshsync:turn:conn:c1");
    assert_true(rep->integer > 0 && rep->integer <= 100);
    freeReplyObject(rep);

    /* w2's check would pass, but w1 goes first: nothing written. */
    expect_refused_for(write_entry_as(c, "w2", "mesh", "conn", "c1", "equal",
                                      "{\"a\":1}", "set", "{\"c\":1}"),
                       "{\"a\":1}", 1, "turn");
    expect_str(c, "1", "GET mesh:meshsync:seq");

    /* w1 writes and gives the turn up; then w2 may write. */
    expect_written(write_entry_as(c, "w1", "mesh", "conn", "c1", "equal",
                                  "{\"a\":1}", "set", "{\"a\":1,\"b\":1}"),
                   2);
    expect_str(c, NULL, "GET mesh:meshsync:turn:conn:c1");
    expect_written(write_entry_as(c, "w2", "mesh", "conn", "c1", "equal",
                                  "{\"a\":1,\"b\":1}", "set", "{\"c\":1}"),
                   3);

    /* A replace never waits for a turn. */
    expect_refused_for(write_entry_as(c, "w1", "mesh", "conn", "c1", "absent",
                                      NULL, "set", "{}"),
                       "{\"c\":1}", 3, "changed");
    expect_written(write_entry_as(c, "w2", "mesh", "conn", "c1", "any", NULL,
                                  "set", "{\"d\":1}"),
                   4);
    expect_str(c, "w1", "GET mesh:meshsync:turn:conn:c1");
}


/*
 * Every write is also appended to the change log with ID <version>-0 and
 * the published bytes; a log left over from before a sequence reset is
 * replaced rather than making the write fail.
 */
static void test_write_log(void **state)
{
    redisContext *c = harness_redis(*state);
    redisReply *rep;

    expect_written(set_conn(c, "c1", "{\"a\":1}"), 1);
    expect_written(
        write_entry(c, "mesh", "room", "r", "any", NULL, "set", "[1]"), 2);
    expect_written(
        write_entry(c, "mesh", "conn", "c1", "any", NULL, "del", NULL), 3);
    rep = harness_command(c, "XRANGE mesh:meshsync:log - +");
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 3);
    assert_string_equal(rep->element[0]->element[0]->str, "1-0");
    assert_string_equal(rep->element[2]->element[0]->str, "3-0");
    assert_string_equal(rep->element[1]->element[1]->element[0]->str, "c");
    expect_payload(rep->element[1]->element[1]->element[1], 2, "room", "r",
                   "[1]");
    expect_payload(rep->element[2]->element[1]->element[1], 3, "conn", "c1",
                   NULL);
    freeReplyObject(rep);

    /* The sequence starts over; the old log goes with the next write. */
    freeReplyObject(harness_command(c, "DEL mesh:meshsync:seq"));
    expect_written(set_conn(c, "c2", "{}"), 1);
    rep = harness_command(c, "XRANGE mesh:meshsync:log - +");
    assert_int_equal(rep->elements, 1);
    assert_string_equal(rep->element[0]->element[0]->str, "1-0");
    freeReplyObject(rep);
}


/* --- load.lua --------------------------------------------------------- */

typedef struct entry_s {
    char *id;
    char *json;
    long long version;
} entry_t;

typedef struct entries_s {
    entry_t *e;
    size_t n;
    size_t cap;
    int batches;
    long long seq;
    char epoch[32]; /* the last batch's, "" when Redis has none */
} entries_t;


/* Escapes Redis glob characters, so that the prefix matches only itself. */
static void glob_escape(const char *in, char *out, size_t size)
{
    size_t n = 0;

    for (; *in != '\0'; in++) {
        assert_true(n + 3 < size);
        if (strchr("*?[]\\", *in) != NULL)
            out[n++] = '\\';
        out[n++] = *in;
    }
    out[n] = '\0';
}


static redisReply *load_batch(redisContext *c, const char *prefix,
                              const char *what, const char *cursor,
                              const char *count)
{
    char k1[256], k2[256], k3[256], k4[256], k5[256], rooms[256], pattern[512];

    snprintf(k1, sizeof(k1), "%s:connection-meta", prefix);
    snprintf(k2, sizeof(k2), "%s:meshsync:versions:conn", prefix);
    snprintf(k3, sizeof(k3), "%s:meshsync:versions:room", prefix);
    snprintf(k4, sizeof(k4), "%s:meshsync:seq", prefix);
    snprintf(k5, sizeof(k5), "%s:meshsync:epoch", prefix);
    snprintf(rooms, sizeof(rooms), "%s:roommeta:", prefix);
    glob_escape(rooms, pattern, sizeof(pattern) - 1);
    strcat(pattern, "*");

    const char *argv[] = {"EVAL", script_load, "5",    k1,    k2,    k3,     k4,
                          k5,     what,        cursor, count, rooms, pattern};
    return eval_argv(c, 13, argv);
}


/* Runs load.lua from cursor 0 until the cursor comes back to 0. */
static void load_all(redisContext *c, const char *prefix, const char *what,
                     const char *count, entries_t *out)
{
    char cursor[64] = "0";

    memset(out, 0, sizeof(*out));
    for (int i = 0; i < 100000; i++) {
        redisReply *rep = load_batch(c, prefix, what, cursor, count);
        redisReply *flat;

        assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
        assert_int_equal(rep->elements, 4);
        assert_int_equal(rep->element[0]->type, REDIS_REPLY_STRING);
        assert_int_equal(rep->element[1]->type, REDIS_REPLY_INTEGER);
        assert_int_equal(rep->element[3]->type, REDIS_REPLY_STRING);
        out->seq = rep->element[1]->integer;
        snprintf(out->epoch, sizeof(out->epoch), "%s", rep->element[3]->str);
        flat = rep->element[2];
        assert_int_equal(flat->elements % 3, 0);
        for (size_t j = 0; j < flat->elements; j += 3) {
            if (out->n == out->cap) {
                out->cap = out->cap ? out->cap * 2 : 64;
                out->e = realloc(out->e, out->cap * sizeof(entry_t));
                assert_non_null(out->e);
            }
            assert_int_equal(flat->element[j + 2]->type, REDIS_REPLY_INTEGER);
            out->e[out->n].id = strdup(flat->element[j]->str);
            out->e[out->n].json = strdup(flat->element[j + 1]->str);
            out->e[out->n].version = flat->element[j + 2]->integer;
            out->n++;
        }
        out->batches++;
        snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
        freeReplyObject(rep);
        if (strcmp(cursor, "0") == 0)
            return;
    }
    fail_msg("load.lua cursor never came back to 0");
}


static void entries_free(entries_t *es)
{
    for (size_t i = 0; i < es->n; i++) {
        free(es->e[i].id);
        free(es->e[i].json);
    }
    free(es->e);
}


/* Checks that id was loaded (at least once) with json and version. */
static void expect_entry(const entries_t *es, const char *id, const char *json,
                         long long version)
{
    for (size_t i = 0; i < es->n; i++) {
        if (strcmp(es->e[i].id, id) == 0) {
            assert_string_equal(es->e[i].json, json);
            assert_int_equal(es->e[i].version, version);
            return;
        }
    }
    fail_msg("entry %s not loaded", id);
}


/* Number of distinct ids loaded. */
static size_t distinct(const entries_t *es)
{
    size_t n = 0;

    for (size_t i = 0; i < es->n; i++) {
        size_t j = 0;

        while (j < i && strcmp(es->e[j].id, es->e[i].id) != 0)
            j++;
        n += j == i;
    }
    return n;
}


static void test_load_conns(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    entries_t es;

    expect_written(set_conn(c, "c1", "{\"a\":1}"), 1);
    expect_written(set_conn(c, "c2", "2"), 2);
    expect_written(set_conn(c, "c1", "{\"a\":3}"), 3);
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta hand 9"));
    expect_written(
        write_entry(c, "mesh", "room", "r1", "any", NULL, "set", "{}"), 4);

    load_all(c, "mesh", "conn", "100", &es);
    assert_int_equal(es.seq, 4);
    assert_int_equal(es.n, 3);
    expect_entry(&es, "c1", "{\"a\":3}", 3);
    expect_entry(&es, "c2", "2", 2);
    expect_entry(&es, "hand", "9", 0);

    /* The epoch comes with every batch, made (from TIME) if missing. */
    {
        redisReply *e = harness_command(c, "GET mesh:meshsync:epoch");

        assert_int_equal(e->type, REDIS_REPLY_STRING);
        assert_string_equal(e->str, es.epoch);
        assert_true(strlen(es.epoch) >= 16 &&
                    strspn(es.epoch, "0123456789") == strlen(es.epoch));
        freeReplyObject(e);
    }
    entries_free(&es);
    freeReplyObject(harness_command(c, "SET mesh:meshsync:epoch 1234"));
    load_all(c, "mesh", "conn", "1", &es);
    assert_string_equal(es.epoch, "1234");
    entries_free(&es);

    /* An empty hash is one empty batch. */
    load_all(c, "other", "conn", "100", &es);
    assert_int_equal(es.n, 0);
    assert_int_equal(es.seq, 0);
    entries_free(&es);
}


static void test_load_rooms(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    entries_t es;

    expect_written(
        write_entry(c, "mesh", "room", "r1", "any", NULL, "set", "{\"n\":1}"),
        1);
    expect_written(
        write_entry(c, "mesh", "room", "a:b", "any", NULL, "set", "[]"), 2);
    expect_written(set_conn(c, "c1", "1"), 3);
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:hand data 5"));

    /* Not rooms: a hash without data, and a key of another type. */
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:nodata x 1"));
    freeReplyObject(harness_command(c, "SET mesh:roommeta:str 1"));

    load_all(c, "mesh", "room", "100", &es);
    assert_int_equal(es.seq, 3);
    assert_int_equal(distinct(&es), 3);
    expect_entry(&es, "r1", "{\"n\":1}", 1);
    expect_entry(&es, "a:b", "[]", 2);
    expect_entry(&es, "hand", "5", 0);
    entries_free(&es);
}


static void test_load_glob_names(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    static const char *prefixes[] = {"m*sh", "m?sh", "m[e]sh", "mesh", "m\\sh"};
    static const char *rooms[] = {"r*", "r?", "r[1]", "r\\", "r"};
    entries_t es;
    long long v = 0;
    char json[64];

    for (size_t p = 0; p < 5; p++) {
        for (size_t r = 0; r < 5; r++) {
            snprintf(json, sizeof(json), "\"%zu/%zu\"", p, r);
            expect_written(write_entry(c, prefixes[p], "room", rooms[r], "any",
                                       NULL, "set", json),
                           1 + (long long)r);
        }
    }

    /* Each prefix finds its own five rooms, names intact, and no more. */
    for (size_t p = 0; p < 5; p++) {
        load_all(c, prefixes[p], "room", "3", &es);
        assert_int_equal(distinct(&es), 5);
        for (size_t r = 0; r < 5; r++) {
            snprintf(json, sizeof(json), "\"%zu/%zu\"", p, r);
            expect_entry(&es, rooms[r], json, 1 + (long long)r);
        }
        for (size_t i = 0; i < es.n; i++) {
            v = atoll(es.e[i].json + 1);
            assert_int_equal(v, (long long)p);
        }
        entries_free(&es);
    }
}


static void test_load_many_conns(void **state)
{
    enum { N = 5000 };
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    static int seen[N];
    entries_t es;

    /* Every third one is versioned; the rest were written by hand. */
    for (int i = 0; i < N; i++) {
        redisAppendCommand(c, "HSET mesh:connection-meta conn-%d {\"i\":%d}", i,
                           i);
        if (i % 3 == 0)
            redisAppendCommand(c,
                               "HSET mesh:meshsync:versions:conn "
                               "conn-%d %d",
                               i, i + 1);
    }
    for (int i = 0; i < N + (N + 2) / 3; i++) {
        void *r;

        assert_int_equal(redisGetReply(c, &r), REDIS_OK);
        freeReplyObject(r);
    }

    load_all(c, "mesh", "conn", "100", &es);
    assert_true(es.batches > 10);
    memset(seen, 0, sizeof(seen));
    for (size_t k = 0; k < es.n; k++) {
        char json[64];
        int i;

        assert_int_equal(sscanf(es.e[k].id, "conn-%d", &i), 1);
        assert_true(i >= 0 && i < N);
        snprintf(json, sizeof(json), "{\"i\":%d}", i);
        assert_string_equal(es.e[k].json, json);
        assert_int_equal(es.e[k].version, i % 3 == 0 ? i + 1 : 0);
        seen[i]++;
    }
    for (int i = 0; i < N; i++) {
        if (seen[i] == 0)
            fail_msg("conn-%d never loaded", i);
    }
    entries_free(&es);
}


static void test_load_many_rooms(void **state)
{
    enum { N = 2000 };
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    static int seen[N];
    entries_t es;

    for (int i = 0; i < N; i++)
        redisAppendCommand(c, "HSET mesh:roommeta:room-%d data %d", i, i);
    for (int i = 0; i < N; i++) {
        void *r;

        assert_int_equal(redisGetReply(c, &r), REDIS_OK);
        freeReplyObject(r);
    }

    load_all(c, "mesh", "room", "100", &es);
    assert_true(es.batches > 10);
    memset(seen, 0, sizeof(seen));
    for (size_t k = 0; k < es.n; k++) {
        int i;

        assert_int_equal(sscanf(es.e[k].id, "room-%d", &i), 1);
        assert_true(i >= 0 && i < N);
        assert_int_equal(atoi(es.e[k].json), i);
        seen[i]++;
    }
    for (int i = 0; i < N; i++) {
        if (seen[i] == 0)
            fail_msg("room-%d never loaded", i);
    }
    entries_free(&es);
}


/* --- scrub.lua -------------------------------------------------------- */

typedef struct found_s {
    char *kind;
    char *id;
    char *json; /* NULL: reported absent (false) */
} found_t;

typedef struct founds_s {
    found_t *f;
    size_t n;
    size_t cap;
    int batches;
} founds_t;


/*
 * Calls scrub.lua's step under prefix with a4 and a5 as ARGV[4] and
 * ARGV[5] (holder and ms for "lease", cursor and COUNT for the scans),
 * then the nrooms room names.
 */
static redisReply *scrub_step(redisContext *c, const char *prefix,
                              const char *step, const char *a4, const char *a5,
                              int nrooms, const char *const *rooms)
{
    char k1[256], k2[256], k3[256], k4[256], roomp[256], pattern[512];
    const char *argv[32] = {"EVAL", script_scrub, "4",   k1,      k2, k3,
                            k4,     step,         roomp, pattern, a4, a5};

    assert_true(nrooms >= 0 && 12 + nrooms <= 32);
    snprintf(k1, sizeof(k1), "%s:connection-meta", prefix);
    snprintf(k2, sizeof(k2), "%s:meshsync:versions:conn", prefix);
    snprintf(k3, sizeof(k3), "%s:meshsync:versions:room", prefix);
    snprintf(k4, sizeof(k4), "%s:meshsync:scrubber", prefix);
    snprintf(roomp, sizeof(roomp), "%s:roommeta:", prefix);
    glob_escape(roomp, pattern, sizeof(pattern) - 1);
    strcat(pattern, "*");
    for (int i = 0; i < nrooms; i++)
        argv[12 + i] = rooms[i];
    return eval_argv(c, 12 + nrooms, argv);
}


/*
 * Runs the "lease" or "release" step on prefix "mesh"'s lease for holder;
 * returns what scrub.lua says (1 or 0).
 */
static long long scrub_lease_step(redisContext *c, const char *step,
                                  const char *holder, const char *ms)
{
    redisReply *rep = scrub_step(c, "mesh", step, holder, ms, 0, NULL);
    long long got;

    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    got = rep->integer;
    freeReplyObject(rep);
    return got;
}


static long long scrub_lease(redisContext *c, const char *holder,
                             const char *ms)
{
    return scrub_lease_step(c, "lease", holder, ms);
}


static long long scrub_release(redisContext *c, const char *holder)
{
    return scrub_lease_step(c, "release", holder, "1000");
}


static void founds_add(founds_t *fs, const redisReply *kind,
                       const redisReply *id, const redisReply *json)
{
    found_t *f;

    assert_int_equal(kind->type, REDIS_REPLY_STRING);
    assert_true(strcmp(kind->str, "conn") == 0 ||
                strcmp(kind->str, "room") == 0);
    assert_int_equal(id->type, REDIS_REPLY_STRING);
    assert_true(json->type == REDIS_REPLY_STRING ||
                json->type == REDIS_REPLY_NIL);
    if (fs->n == fs->cap) {
        fs->cap = fs->cap ? fs->cap * 2 : 64;
        fs->f = realloc(fs->f, fs->cap * sizeof(found_t));
        assert_non_null(fs->f);
    }
    f = &fs->f[fs->n++];
    f->kind = strdup(kind->str);
    f->id = strdup(id->str);
    f->json = json->type == REDIS_REPLY_STRING ? strdup(json->str) : NULL;
}


/*
 * Adds a step's {cursor, {kind, id, JSON text or false, ...}} to fs and
 * copies the cursor into cursor.
 */
static void founds_take(founds_t *fs, redisReply *rep, char *cursor,
                        size_t size)
{
    redisReply *flat;

    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 2);
    assert_int_equal(rep->element[0]->type, REDIS_REPLY_STRING);
    flat = rep->element[1];
    assert_int_equal(flat->type, REDIS_REPLY_ARRAY);
    assert_int_equal(flat->elements % 3, 0);
    for (size_t j = 0; j < flat->elements; j += 3)
        founds_add(fs, flat->element[j], flat->element[j + 1],
                   flat->element[j + 2]);
    fs->batches++;
    snprintf(cursor, size, "%s", rep->element[0]->str);
    freeReplyObject(rep);
}


/* Runs a scan step from cursor 0 until the cursor comes back to 0. */
static void scrub_all(redisContext *c, const char *prefix, const char *step,
                      const char *count, founds_t *out)
{
    char cursor[64] = "0";

    memset(out, 0, sizeof(*out));
    for (int i = 0; i < 100000; i++) {
        founds_take(out, scrub_step(c, prefix, step, cursor, count, 0, NULL),
                    cursor, sizeof(cursor));
        if (strcmp(cursor, "0") == 0)
            return;
    }
    fail_msg("scrub.lua's %s cursor never came back to 0", step);
}


/* Runs the "rooms" step on the named rooms: one call, cursor "0". */
static void scrub_rooms(redisContext *c, const char *prefix, int nrooms,
                        const char *const *rooms, founds_t *out)
{
    char cursor[64];

    memset(out, 0, sizeof(*out));
    founds_take(out, scrub_step(c, prefix, "rooms", "0", "0", nrooms, rooms),
                cursor, sizeof(cursor));
    assert_string_equal(cursor, "0");
}


static void founds_free(founds_t *fs)
{
    for (size_t i = 0; i < fs->n; i++) {
        free(fs->f[i].kind);
        free(fs->f[i].id);
        free(fs->f[i].json);
    }
    free(fs->f);
}


static const found_t *found_find(const founds_t *fs, const char *kind,
                                 const char *id)
{
    for (size_t i = 0; i < fs->n; i++) {
        if (strcmp(fs->f[i].kind, kind) == 0 && strcmp(fs->f[i].id, id) == 0)
            return &fs->f[i];
    }
    return NULL;
}


/* id was reported (every time) with json, NULL meaning false. */
static void expect_found(const founds_t *fs, const char *kind, const char *id,
                         const char *json)
{
    if (found_find(fs, kind, id) == NULL)
        fail_msg("%s %s not reported", kind, id);
    for (size_t i = 0; i < fs->n; i++) {
        const found_t *f = &fs->f[i];

        if (strcmp(f->kind, kind) != 0 || strcmp(f->id, id) != 0)
            continue;
        if (json == NULL)
            assert_null(f->json);
        else if (f->json == NULL)
            fail_msg("%s %s reported absent, not as %s", kind, id, json);
        else
            assert_string_equal(f->json, json);
    }
}


static void expect_not_found(const founds_t *fs, const char *kind,
                             const char *id)
{
    if (found_find(fs, kind, id) != NULL)
        fail_msg("%s %s reported", kind, id);
}


/* Number of distinct (kind, id) reported. */
static size_t founds_distinct(const founds_t *fs)
{
    size_t n = 0;

    for (size_t i = 0; i < fs->n; i++)
        n += found_find(fs, fs->f[i].kind, fs->f[i].id) == &fs->f[i];
    return n;
}


/* Waits (bounded) until key is gone; Redis expires keys lazily on access. */
static void await_gone(redisContext *c, const char *key)
{
    int64_t deadline = harness_now_ms() + WAIT_MS;

    for (int i = 0; i < 1000000 && harness_now_ms() < deadline; i++) {
        if (harness_redis_int(c, "EXISTS %s", key) == 0)
            return;
    }
    fail_msg("%s never expired", key);
}


static void test_scrub_lease(void **state)
{
    redisContext *c = harness_redis(*state);
    long long ttl;

    /* Free: taken, for the time asked. */
    assert_int_equal(scrub_lease(c, "w1", "1000"), 1);
    expect_str(c, "w1", "GET mesh:meshsync:scrubber");
    ttl = harness_redis_int(c, "PTTL mesh:meshsync:scrubber");
    assert_true(ttl > 0 && ttl <= 1000);

    /* The holder renews: the TTL starts over with the new length. */
    assert_int_equal(scrub_lease(c, "w1", "60000"), 1);
    expect_str(c, "w1", "GET mesh:meshsync:scrubber");
    ttl = harness_redis_int(c, "PTTL mesh:meshsync:scrubber");
    assert_true(ttl > 1000 && ttl <= 60000);

    /* Another sidecar is refused and changes nothing. */
    assert_int_equal(scrub_lease(c, "w2", "1000"), 0);
    expect_str(c, "w1", "GET mesh:meshsync:scrubber");
    ttl = harness_redis_int(c, "PTTL mesh:meshsync:scrubber");
    assert_true(ttl > 1000 && ttl <= 60000);

    /* Once it expires, the other one gets it. */
    assert_int_equal(harness_redis_int(c, "PEXPIRE mesh:meshsync:scrubber 1"),
                     1);
    await_gone(c, "mesh:meshsync:scrubber");
    assert_int_equal(scrub_lease(c, "w2", "1000"), 1);
    expect_str(c, "w2", "GET mesh:meshsync:scrubber");
    assert_int_equal(scrub_lease(c, "w1", "1000"), 0);
    expect_str(c, "w2", "GET mesh:meshsync:scrubber");

    /* Only the holder gives it back; then it is free for anyone. */
    assert_int_equal(scrub_release(c, "w1"), 0);
    expect_str(c, "w2", "GET mesh:meshsync:scrubber");
    assert_int_equal(scrub_release(c, "w2"), 1);
    expect_str(c, NULL, "GET mesh:meshsync:scrubber");
    assert_int_equal(scrub_release(c, "w2"), 0);
    assert_int_equal(scrub_lease(c, "w1", "1000"), 1);
    expect_str(c, "w1", "GET mesh:meshsync:scrubber");
}


static void test_scrub_conns(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);
    founds_t fs;

    /* Written by meshsync: not reported, whatever the text. */
    expect_written(set_conn(c, "ok", "{\"a\":1}"), 1);
    expect_written(set_conn(c, "ok:2", ""), 2);
    expect_written(set_conn(c, "same", "{\"s\":1}"), 3);
    expect_written(set_conn(c, "changed", "{\"r\":\"a\"}"), 4);
    expect_written(set_conn(c, "gone", "{}"), 5);
    for (int v = 1; v <= 5; v++)
        freeReplyObject(next_message(s));
    freeReplyObject(harness_command(c, "HDEL mesh:connection-meta gone"));

    /* Written by hand: no version, other text of the same length (the
     * digest tells them apart), a legacy bare version, the same text. */
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta hand %s", "{\"h\":1}"));
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta changed %s",
                                    "{\"r\":\"b\"}"));
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta old 5"));
    freeReplyObject(
        harness_command(c, "HSET mesh:meshsync:versions:conn old 7"));
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta same %s", "{\"s\":1}"));

    scrub_all(c, "mesh", "conn", "100", &fs);
    assert_int_equal(founds_distinct(&fs), 3);
    expect_found(&fs, "conn", "hand", "{\"h\":1}");
    expect_found(&fs, "conn", "changed", "{\"r\":\"b\"}");
    expect_found(&fs, "conn", "old", "5");
    expect_not_found(&fs, "conn", "ok");
    expect_not_found(&fs, "conn", "ok:2");
    expect_not_found(&fs, "conn", "same");
    expect_not_found(&fs, "conn", "gone");
    founds_free(&fs);

    /* A scan only reads: nothing written, nothing published. */
    expect_str(c, "5", "GET mesh:meshsync:seq");
    expect_str(c, NULL, "HGET mesh:meshsync:versions:conn hand");
    expect_no_change(h, s);

    /* Nothing there: one empty batch. */
    scrub_all(c, "other", "conn", "100", &fs);
    assert_int_equal(fs.n, 0);
    assert_int_equal(fs.batches, 1);
    founds_free(&fs);
    redisFree(s);
}


/* Room steps under a prefix that is itself a glob pattern. */
#define GP "p[1]*"

static void test_scrub_rooms(void **state)
{
    redisContext *c = harness_redis(*state);
    founds_t fs;

    expect_written(
        write_entry(c, GP, "room", "ok", "any", NULL, "set", "{\"a\":1}"), 1);
    expect_written(write_entry(c, GP, "room", "r*", "any", NULL, "set", "[]"),
                   2);
    expect_written(write_entry(c, GP, "room", "changed", "any", NULL, "set",
                               "{\"r\":\"a\"}"),
                   3);
    expect_written(write_entry(c, GP, "room", "gone", "any", NULL, "set", "1"),
                   4);
    freeReplyObject(harness_command(c, "DEL " GP ":roommeta:gone"));

    freeReplyObject(
        harness_command(c, "HSET " GP ":roommeta:hand data %s", "{\"h\":1}"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:changed data %s",
                                    "{\"r\":\"b\"}"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:old data 5"));
    freeReplyObject(
        harness_command(c, "HSET " GP ":meshsync:versions:room old 7"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:a:b data 6"));

    /* Not rooms: a hash without data, a key of another type. */
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:nodata x 1"));
    freeReplyObject(harness_command(c, "SET " GP ":roommeta:str 1"));

    /* Matched by the prefix as an unescaped pattern, but not ours. */
    freeReplyObject(harness_command(c, "HSET p1:roommeta:x data 1"));
    freeReplyObject(harness_command(c, "HSET p1zz:roommeta:y data 1"));
    freeReplyObject(harness_command(c, "HSET p[1]x:roommeta:z data 1"));

    scrub_all(c, GP, "room", "3", &fs);
    assert_true(fs.batches > 1);
    assert_int_equal(founds_distinct(&fs), 4);
    expect_found(&fs, "room", "hand", "{\"h\":1}");
    expect_found(&fs, "room", "changed", "{\"r\":\"b\"}");
    expect_found(&fs, "room", "old", "5");
    expect_found(&fs, "room", "a:b", "6");
    expect_not_found(&fs, "room", "ok");
    expect_not_found(&fs, "room", "r*");
    expect_not_found(&fs, "room", "gone");
    founds_free(&fs);

    /* The other prefixes find their own. */
    scrub_all(c, "p1", "room", "100", &fs);
    assert_int_equal(founds_distinct(&fs), 1);
    expect_found(&fs, "room", "x", "1");
    founds_free(&fs);
    expect_str(c, "4", "GET " GP ":meshsync:seq");
}


static void test_scrub_versions(void **state)
{
    redisContext *c = harness_redis(*state);
    founds_t fs;

    expect_written(set_conn(c, "kept", "{}"), 1);
    expect_written(set_conn(c, "gone", "{}"), 2);
    expect_written(
        write_entry(c, "mesh", "room", "kept", "any", NULL, "set", "{}"), 3);
    expect_written(
        write_entry(c, "mesh", "room", "gone", "any", NULL, "set", "{}"), 4);
    expect_written(
        write_entry(c, "mesh", "room", "nodata", "any", NULL, "set", "{}"), 5);
    freeReplyObject(harness_command(c, "HDEL mesh:connection-meta gone"));
    freeReplyObject(harness_command(c, "DEL mesh:roommeta:gone"));

    /* The room's key stays (another field), its data goes. */
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:nodata x 1"));
    freeReplyObject(harness_command(c, "HDEL mesh:roommeta:nodata data"));

    /* Replaced by a key that is not a hash: no Mesh value, a delete. */
    expect_written(
        write_entry(c, "mesh", "room", "str", "any", NULL, "set", "{}"), 6);
    freeReplyObject(harness_command(c, "DEL mesh:roommeta:str"));
    freeReplyObject(harness_command(c, "SET mesh:roommeta:str 1"));

    /* Values without versions are the value scans' business. */
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta hand 1"));
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:hand data 1"));

    /* A legacy bare version whose value is gone. */
    freeReplyObject(
        harness_command(c, "HSET mesh:meshsync:versions:conn old 9"));

    scrub_all(c, "mesh", "connv", "100", &fs);
    assert_int_equal(founds_distinct(&fs), 2);
    expect_found(&fs, "conn", "gone", NULL);
    expect_found(&fs, "conn", "old", NULL);
    expect_not_found(&fs, "conn", "kept");
    expect_not_found(&fs, "conn", "hand");
    founds_free(&fs);

    scrub_all(c, "mesh", "roomv", "100", &fs);
    assert_int_equal(founds_distinct(&fs), 3);
    expect_found(&fs, "room", "gone", NULL);
    expect_found(&fs, "room", "nodata", NULL);
    expect_found(&fs, "room", "str", NULL);
    expect_not_found(&fs, "room", "kept");
    expect_not_found(&fs, "room", "hand");
    founds_free(&fs);

    /* Adopting that delete leaves the foreign key as it is. */
    expect_written(write_entry_as(c, "w", "mesh", "room", "str", "adopt", NULL,
                                  "del", NULL),
                   7);
    expect_str(c, "1", "GET mesh:roommeta:str");
    expect_str(c, NULL, "HGET mesh:meshsync:versions:room str");

    /* A connections "hash" that is not one: nothing to scan. */
    freeReplyObject(harness_command(c, "DEL mesh:connection-meta"));
    freeReplyObject(harness_command(c, "SET mesh:connection-meta x"));
    scrub_all(c, "mesh", "conn", "100", &fs);
    assert_int_equal(fs.n, 0);
    founds_free(&fs);
}


static void test_scrub_named_rooms(void **state)
{
    redisContext *c = harness_redis(*state);
    static const char *const some[] = {"hand", "ok", "gone", "none", "r*"};
    static const char *const other[] = {"hand2", "str", "nodata"};
    founds_t fs;

    expect_written(write_entry(c, GP, "room", "ok", "any", NULL, "set", "{}"),
                   1);
    expect_written(write_entry(c, GP, "room", "gone", "any", NULL, "set", "{}"),
                   2);
    expect_written(
        write_entry(c, GP, "room", "gone2", "any", NULL, "set", "{}"), 3);
    freeReplyObject(harness_command(c, "DEL " GP ":roommeta:gone"));
    freeReplyObject(harness_command(c, "DEL " GP ":roommeta:gone2"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:hand data 1"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:hand2 data 2"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:r data 3"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:r* data 4"));

    /* No values: a string (with a version: a delete to adopt), a hash
     * without data. */
    expect_written(write_entry(c, GP, "room", "str", "any", NULL, "set", "{}"),
                   4);
    freeReplyObject(harness_command(c, "SET " GP ":roommeta:str 1"));
    freeReplyObject(harness_command(c, "HSET " GP ":roommeta:nodata x 1"));

    /* Names are names, not patterns: "r*" is just that room. */
    scrub_rooms(c, GP, 5, some, &fs);
    assert_int_equal(fs.n, 3);
    expect_found(&fs, "room", "hand", "1");
    expect_found(&fs, "room", "gone", NULL);
    expect_found(&fs, "room", "r*", "4");
    expect_not_found(&fs, "room", "hand2");
    expect_not_found(&fs, "room", "gone2");
    expect_not_found(&fs, "room", "r");
    founds_free(&fs);

    scrub_rooms(c, GP, 3, other, &fs);
    assert_int_equal(fs.n, 2);
    expect_found(&fs, "room", "hand2", "2");
    expect_found(&fs, "room", "str", NULL);
    expect_not_found(&fs, "room", "nodata");
    founds_free(&fs);

    scrub_rooms(c, GP, 0, NULL, &fs);
    assert_int_equal(fs.n, 0);
    founds_free(&fs);
}


/* Every i in [0, n) was reported as <fmt>(i) at least once. */
static void expect_all_found(const founds_t *fs, const char *kind,
                             const char *fmt, int n)
{
    char *seen = calloc((size_t)n, 1);

    assert_non_null(seen);
    for (size_t k = 0; k < fs->n; k++) {
        char name[64];
        int i;

        assert_string_equal(fs->f[k].kind, kind);
        assert_int_equal(sscanf(fs->f[k].id, fmt, &i), 1);
        assert_true(i >= 0 && i < n);
        snprintf(name, sizeof(name), fmt, i);
        assert_string_equal(fs->f[k].id, name);
        seen[i] = 1;
    }
    for (int i = 0; i < n; i++) {
        char name[64];

        snprintf(name, sizeof(name), fmt, i);
        if (!seen[i])
            fail_msg("%s %s never reported", kind, name);
    }
    free(seen);
}


/* Pipelines n hand writes of fmt(i) = i (a conn, or a room's data). */
static void hand_write_many(redisContext *c, const char *fmt, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(redisAppendCommand(c, fmt, i, i), REDIS_OK);
    for (int i = 0; i < n; i++) {
        void *r = NULL;

        assert_int_equal(redisGetReply(c, &r), REDIS_OK);
        assert_int_equal(((redisReply *)r)->type, REDIS_REPLY_INTEGER);
        freeReplyObject(r);
    }
}


static void test_scrub_cursors(void **state)
{
    enum { N = 1200, V = 600 }; /* more than a listpack holds */
    redisContext *c = harness_redis(*state);
    char id[32];
    founds_t fs;

    hand_write_many(c, "HSET mesh:connection-meta hand-%d %d", N);
    hand_write_many(c, "HSET mesh:roommeta:hand-%d data %d", N);
    for (int i = 0; i < V; i++) {
        snprintf(id, sizeof(id), "v-%d", i);
        expect_written(set_conn(c, id, "{}"), i + 1);
    }
    expect_str(c, "hashtable", "OBJECT ENCODING mesh:connection-meta");

    scrub_all(c, "mesh", "conn", "100", &fs);
    assert_true(fs.batches > 5);
    expect_all_found(&fs, "conn", "hand-%d", N);
    for (size_t k = 0; k < fs.n; k++)
        assert_int_equal(atoi(fs.f[k].json), atoi(fs.f[k].id + 5));
    founds_free(&fs);

    scrub_all(c, "mesh", "room", "100", &fs);
    assert_true(fs.batches > 5);
    expect_all_found(&fs, "room", "hand-%d", N);
    founds_free(&fs);

    /* The versions left behind by values deleted by hand. */
    freeReplyObject(harness_command(c, "DEL mesh:connection-meta"));
    expect_str(c, "hashtable", "OBJECT ENCODING mesh:meshsync:versions:conn");
    scrub_all(c, "mesh", "connv", "50", &fs);
    assert_true(fs.batches > 2);
    expect_all_found(&fs, "conn", "v-%d", V);
    for (size_t k = 0; k < fs.n; k++)
        assert_null(fs.f[k].json);
    founds_free(&fs);
}


/* --- write.lua's adopt check ------------------------------------------ */

/* Adopts what the scrub found: expected is both ARGV[6] and ARGV[8]. */
static redisReply *adopt_as(redisContext *c, const char *writer,
                            const char *kind, const char *id, const char *json)
{
    return write_entry_as(c, writer, "mesh", kind, id, "adopt", json,
                          json != NULL ? "set" : "del", json);
}


static void test_write_adopt_set(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);
    redisReply *rep;
    founds_t fs;

    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta c1 %s", "{\"h\":1}"));

    /* Changed since the scrub saw it: refused, nothing written. */
    expect_refused(adopt_as(c, "w1", "conn", "c1", "{\"h\":0}"), "{\"h\":1}",
                   0);
    expect_str(c, NULL, "GET mesh:meshsync:seq");
    expect_str(c, NULL, "HGET mesh:meshsync:versions:conn c1");
    expect_str(c, "{\"h\":1}", "HGET mesh:connection-meta c1");
    expect_no_change(h, s);

    /* Unchanged: versioned, published and logged like any write. */
    expect_written(adopt_as(c, "w1", "conn", "c1", "{\"h\":1}"), 1);
    expect_str(c, "{\"h\":1}", "HGET mesh:connection-meta c1");
    expect_version(c, "mesh:meshsync:versions:conn", "c1", 1, "{\"h\":1}");
    expect_change(s, 1, "conn", "c1", "{\"h\":1}");
    rep = harness_command(c, "XRANGE mesh:meshsync:log - +");
    assert_int_equal(rep->elements, 1);
    assert_string_equal(rep->element[0]->element[0]->str, "1-0");
    expect_payload(rep->element[0]->element[1]->element[1], 1, "conn", "c1",
                   "{\"h\":1}");
    freeReplyObject(rep);
    scrub_all(c, "mesh", "conn", "100", &fs);
    assert_int_equal(fs.n, 0);
    founds_free(&fs);

    /* Changed by hand again, then a stale adoption: refused. */
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta c1 %s", "{\"h\":2}"));
    expect_refused(adopt_as(c, "w1", "conn", "c1", "{\"h\":1}"), "{\"h\":2}",
                   1);
    expect_str(c, "1", "GET mesh:meshsync:seq");
    expect_no_change(h, s);

    /* A room: the same. */
    freeReplyObject(harness_command(c, "HSET mesh:roommeta:r data [1]"));
    expect_written(adopt_as(c, "w1", "room", "r", "[1]"), 2);
    expect_version(c, "mesh:meshsync:versions:room", "r", 2, "[1]");
    expect_change(s, 2, "room", "r", "[1]");
    scrub_all(c, "mesh", "room", "100", &fs);
    assert_int_equal(fs.n, 0);
    founds_free(&fs);
    redisFree(s);
}


static void test_write_adopt_del(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h), *s = subscriber(h);
    founds_t fs;

    expect_written(set_conn(c, "c1", "{}"), 1);
    expect_written(set_conn(c, "c2", "{\"b\":1}"), 2);
    expect_written(
        write_entry(c, "mesh", "room", "r", "any", NULL, "set", "{}"), 3);
    expect_change(s, 1, "conn", "c1", "{}");
    expect_change(s, 2, "conn", "c2", "{\"b\":1}");
    expect_change(s, 3, "room", "r", "{}");
    freeReplyObject(harness_command(c, "HDEL mesh:connection-meta c1"));
    freeReplyObject(harness_command(c, "DEL mesh:roommeta:r"));

    /* Present: a delete is not adopted. */
    expect_refused(adopt_as(c, "w1", "conn", "c2", NULL), "{\"b\":1}", 2);
    expect_str(c, "{\"b\":1}", "HGET mesh:connection-meta c2");
    expect_str(c, "3", "GET mesh:meshsync:seq");
    expect_no_change(h, s);

    /* Absent: the delete is versioned and published; the version goes. */
    expect_written(adopt_as(c, "w1", "conn", "c1", NULL), 4);
    expect_str(c, NULL, "HGET mesh:meshsync:versions:conn c1");
    expect_change(s, 4, "conn", "c1", NULL);
    expect_written(adopt_as(c, "w1", "room", "r", NULL), 5);
    expect_str(c, NULL, "HGET mesh:meshsync:versions:room r");
    expect_change(s, 5, "room", "r", NULL);
    expect_str(c, "5", "GET mesh:meshsync:seq");

    scrub_all(c, "mesh", "connv", "100", &fs);
    assert_int_equal(fs.n, 0);
    founds_free(&fs);
    scrub_all(c, "mesh", "roomv", "100", &fs);
    assert_int_equal(fs.n, 0);
    founds_free(&fs);
    redisFree(s);
}


/* Adoptions neither wait for another writer's turn nor take one. */
static void test_write_adopt_turn(void **state)
{
    redisContext *c = harness_redis(*state);

    /* w1 loses a race on c1 and holds its turn. */
    expect_written(set_conn(c, "c1", "{\"a\":1}"), 1);
    expect_refused_for(write_entry_as(c, "w1", "mesh", "conn", "c1", "equal",
                                      "{}", "set", "{\"b\":1}"),
                       "{\"a\":1}", 1, "changed");
    expect_str(c, "w1", "GET mesh:meshsync:turn:conn:c1");

    /* A refused adoption says "changed", never "turn", and leaves the
     * turn alone. */
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta c1 %s", "{\"h\":1}"));
    expect_refused_for(adopt_as(c, "w2", "conn", "c1", "{\"x\":1}"),
                       "{\"h\":1}", 1, "changed");
    expect_str(c, "w1", "GET mesh:meshsync:turn:conn:c1");

    /* w2 adopts despite w1's turn, which stays w1's. */
    expect_written(adopt_as(c, "w2", "conn", "c1", "{\"h\":1}"), 2);
    expect_version(c, "mesh:meshsync:versions:conn", "c1", 2, "{\"h\":1}");
    expect_str(c, "w1", "GET mesh:meshsync:turn:conn:c1");

    /* A refused adoption takes no turn; neither does a written one. */
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta c2 1"));
    expect_refused_for(adopt_as(c, "w2", "conn", "c2", "2"), "1", 0, "changed");
    expect_str(c, NULL, "GET mesh:meshsync:turn:conn:c2");
    expect_written(adopt_as(c, "w2", "conn", "c2", "1"), 3);
    expect_str(c, NULL, "GET mesh:meshsync:turn:conn:c2");
    freeReplyObject(harness_command(c, "HSET mesh:connection-meta c3 1"));
    expect_refused_for(adopt_as(c, "w2", "conn", "c3", NULL), "1", 0,
                       "changed");
    expect_str(c, NULL, "GET mesh:meshsync:turn:conn:c3");
    freeReplyObject(harness_command(c, "HDEL mesh:connection-meta c3"));

    /* Never versioned: there is no delete to adopt. */
    expect_refused_for(adopt_as(c, "w2", "conn", "c3", NULL), NULL, 0,
                       "changed");
    freeReplyObject(
        harness_command(c, "HSET mesh:meshsync:versions:conn c3 %s", "3:ab"));
    expect_written(adopt_as(c, "w2", "conn", "c3", NULL), 4);
    expect_str(c, NULL, "GET mesh:meshsync:turn:conn:c3");

    /* Adopted already: adopting again writes nothing. */
    expect_refused_for(adopt_as(c, "w2", "conn", "c3", NULL), NULL, 0,
                       "changed");
    expect_refused_for(adopt_as(c, "w2", "conn", "c2", "1"), "1", 3, "changed");
}


/* --- redis.c on a loop ------------------------------------------------ */

#define MAX_EVENTS 64
#define MAX_REQS   32

typedef struct uvt_s uvt_t;

typedef struct rec_s {
    uvt_t *t;
    int calls;
    int err;
    int type;          /* reply type, -1 for NULL */
    long long ints[2]; /* first two integers of an array reply */
    char str[128];
    bool close;  /* ms_redis_close() from this callback */
    bool resend; /* try a command from this callback */
    int resend_rc;
} rec_t;

struct uvt_s {
    harness_t *h;
    uv_loop_t loop;
    uv_timer_t watchdog;
    bool expired;
    ms_redis_t *r;
    bool closed;    /* ms_redis_close() has been called */
    int late_calls; /* link callbacks after close: must stay 0 */
    bool states[MAX_EVENTS];
    int nstates;
    char msgs[MAX_EVENTS][128];
    size_t msg_lens[MAX_EVENTS];
    int nmsgs;
    rec_t recs[MAX_REQS];
    bool close_on_down; /* ms_redis_close() from on_state(false) */
    bool finished;      /* uvt_finish() closed the loop */
};


static void uvt_close(uvt_t *t)
{
    ms_redis_close(t->r);
    t->closed = true;
}


static void on_state(void *arg, bool live)
{
    uvt_t *t = arg;

    if (t->closed)
        t->late_calls++;
    if (t->nstates < MAX_EVENTS)
        t->states[t->nstates++] = live;
    if (!live && t->close_on_down && !t->closed)
        uvt_close(t);
}


static void on_message(void *arg, const char *channel, size_t channel_len,
                       const char *payload, size_t len)
{
    uvt_t *t = arg;

    (void)channel;
    (void)channel_len;
    if (t->closed)
        t->late_calls++;
    if (t->nmsgs < MAX_EVENTS && len <= sizeof(t->msgs[0])) {
        memcpy(t->msgs[t->nmsgs], payload, len);
        t->msg_lens[t->nmsgs++] = len;
    }
}


static void on_message_close(void *arg, const char *channel, size_t channel_len,
                             const char *payload, size_t len)
{
    on_message(arg, channel, channel_len, payload, len);
    uvt_close(arg);
}


static void reply_cb(void *arg, redisReply *reply, int err)
{
    rec_t *rec = arg;

    rec->calls++;
    rec->err = err;
    rec->type = reply ? reply->type : -1;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements && i < 2; i++)
            rec->ints[i] = reply->element[i]->integer;
    }
    if (reply != NULL && reply->str != NULL)
        snprintf(rec->str, sizeof(rec->str), "%s", reply->str);
    if (rec->resend) {
        const char *argv[] = {"PING"};
        size_t lens[] = {4};

        rec->resend_rc = ms_redis_command(rec->t->r, 1, argv, lens, reply_cb,
                                          &rec->t->recs[MAX_REQS - 1]);
    }
    if (rec->close)
        uvt_close(rec->t);
}


static void watchdog_cb(uv_timer_t *timer)
{
    uvt_t *t = timer->data;

    t->expired = true;
}


/* Runs the loop until pred holds, for at most timeout_ms: pred's value. */
static bool run_until(uvt_t *t, bool (*pred)(uvt_t *, int), int arg,
                      int timeout_ms)
{
    t->expired = false;
    uv_timer_start(&t->watchdog, watchdog_cb, (uint64_t)timeout_ms, 0);
    for (int i = 0; i < 1000000 && !pred(t, arg) && !t->expired; i++)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_timer_stop(&t->watchdog);
    return pred(t, arg);
}


/* pred: the n-th on_state event (counting from 1) has happened. */
static bool has_states(uvt_t *t, int n)
{
    return t->nstates >= n;
}


static bool has_msgs(uvt_t *t, int n)
{
    return t->nmsgs >= n;
}


/* pred: requests 0..n-1 have all been answered. */
static bool answered(uvt_t *t, int n)
{
    for (int i = 0; i < n; i++) {
        if (t->recs[i].calls == 0)
            return false;
    }
    return true;
}


/* pred: request i has been answered. */
static bool answered_one(uvt_t *t, int i)
{
    return t->recs[i].calls > 0;
}


static bool link_live(uvt_t *t, int want)
{
    return ms_redis_live(t->r) == (want != 0);
}


static ms_redis_t *uvt_redis(uvt_t *t, const char *url, const char *pass,
                             bool close_on_message)
{
    ms_redis_options_t opt = {.url = url,
                              .password = pass,
                              .channel = CHANNEL,
                              .backoff_min_ms = 5,
                              .backoff_max_ms = 100};
    ms_redis_callbacks_t cb = {.arg = t,
                               .on_state = on_state,
                               .on_message = close_on_message ? on_message_close
                                                              : on_message};
    ms_error_t err = {0};

    assert_int_equal(ms_redis_new(&t->loop, &opt, &cb, &t->r, &err), 0);
    return t->r;
}


static uvt_t *uvt_new(harness_t *h)
{
    uvt_t *t = calloc(1, sizeof(*t));

    assert_non_null(t);
    t->h = h;
    assert_int_equal(uv_loop_init(&t->loop), 0);
    uv_timer_init(&t->loop, &t->watchdog);
    t->watchdog.data = t;
    for (int i = 0; i < MAX_REQS; i++)
        t->recs[i].t = t;
    return t;
}


/* Closes everything and checks that the loop ends with no handle left. */
static void uvt_finish(uvt_t *t)
{
    if (!t->closed)
        uvt_close(t);
    uv_close((uv_handle_t *)&t->watchdog, NULL);
    for (int i = 0; i < 100 && uv_loop_alive(&t->loop); i++)
        uv_run(&t->loop, UV_RUN_NOWAIT);
    t->finished = true;
    assert_int_equal(uv_loop_close(&t->loop), 0);
    assert_int_equal(t->late_calls, 0);
    for (int i = 0; i < MAX_REQS; i++)
        assert_true(t->recs[i].calls <= 1);

    /* on_state reports changes only: up, down, up, ... */
    for (int i = 0; i < t->nstates; i++)
        assert_int_equal(t->states[i], i % 2 == 0);
}


static int setup_uvt(void **state)
{
    harness_t *h = harness_new();

    harness_redis_start(h, NULL);
    *state = uvt_new(h);
    return 0;
}


static int teardown_uvt(void **state)
{
    uvt_t *t = *state;

    /* After a failed test: close what is left, without asserting. */
    if (!t->finished) {
        if (!t->closed)
            ms_redis_close(t->r);
        uv_close((uv_handle_t *)&t->watchdog, NULL);
        for (int i = 0; i < 100 && uv_loop_alive(&t->loop); i++)
            uv_run(&t->loop, UV_RUN_NOWAIT);
        (void)uv_loop_close(&t->loop);
    }
    harness_free(t->h);
    free(t);
    return 0;
}


static int script_call(uvt_t *t, int i, const char *id, const char *json)
{
    char turn[256];
    const char *argv[] = {"mesh:connection-meta",
                          "mesh:meshsync:versions:conn",
                          "mesh:meshsync:seq",
                          turn,
                          "mesh:meshsync:log",
                          id,
                          id,
                          CHANNEL,
                          "conn",
                          "any",
                          "",
                          "set",
                          json,
                          "test",
                          "100",
                          "1000"};
    size_t lens[16];

    snprintf(turn, sizeof(turn), "mesh:meshsync:turn:conn:%s", id);
    for (int k = 0; k < 16; k++)
        lens[k] = strlen(argv[k]);
    return ms_redis_script(t->r, MS_SCRIPT_WRITE, 5, 16, argv, lens, reply_cb,
                           &t->recs[i]);
}


static int command(uvt_t *t, int i, const char *a0, const char *a1,
                   const char *a2)
{
    const char *argv[] = {a0, a1, a2};
    size_t lens[3] = {strlen(a0), a1 ? strlen(a1) : 0, a2 ? strlen(a2) : 0};
    int argc = a2 ? 3 : a1 ? 2 : 1;

    return ms_redis_command(t->r, argc, argv, lens, reply_cb, &t->recs[i]);
}


static void go_live(uvt_t *t)
{
    assert_true(run_until(t, link_live, 1, WAIT_MS));
    assert_int_equal(t->nstates, 1);
    assert_true(t->states[0]);
}


/* Checks a request's single answer. */
static void expect_rec(const rec_t *rec, int err, int type)
{
    assert_int_equal(rec->calls, 1);
    assert_int_equal(rec->err, err);
    assert_int_equal(rec->type, type);
}


/* Runs the loop until the command link has sent what it holds and Redis
 * shows a client blocked in BLPOP (an outside process: bounded polls). */
static void await_blocked(uvt_t *t)
{
    redisContext *c = harness_redis(t->h);

    for (int i = 0; i < 2000; i++) {
        redisReply *rep;
        bool blocked;

        uv_run(&t->loop, UV_RUN_NOWAIT);
        rep = harness_command(c, "CLIENT LIST TYPE normal");
        blocked = strstr(rep->str, "cmd=blpop") != NULL;
        freeReplyObject(rep);
        if (blocked)
            return;
    }
    fail_msg("the BLPOP never reached Redis");
}


static void test_link_script(void **state)
{
    uvt_t *t = *state;
    redisContext *c = harness_redis(t->h);
    const char *bad[] = {"k"};
    size_t bad_len[] = {1};

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    assert_false(ms_redis_live(t->r));
    go_live(t);

    assert_int_equal(script_call(t, 0, "c1", "{\"a\":1}"), 0);
    assert_int_equal(command(t, 1, "HGET", "mesh:connection-meta", "c1"), 0);
    assert_int_equal(ms_redis_script(t->r, MS_SCRIPT_WRITE, 5, 1, bad, bad_len,
                                     reply_cb, &t->recs[2]),
                     0);
    assert_true(run_until(t, answered, 3, WAIT_MS));
    expect_rec(&t->recs[0], 0, REDIS_REPLY_ARRAY);
    assert_int_equal(t->recs[0].ints[0], 1);
    assert_int_equal(t->recs[0].ints[1], 1);
    expect_rec(&t->recs[1], 0, REDIS_REPLY_STRING);
    assert_string_equal(t->recs[1].str, "{\"a\":1}");

    /* An error reply is a reply (err 0), not a failure of the link. */
    expect_rec(&t->recs[2], 0, REDIS_REPLY_ERROR);
    assert_true(ms_redis_live(t->r));
    expect_str(c, "{\"a\":1}", "HGET mesh:connection-meta c1");

    /* The script's own change message. */
    assert_true(run_until(t, has_msgs, 1, WAIT_MS));
    {
        msgpack_unpacked u;
        size_t off = 0;

        msgpack_unpacked_init(&u);
        assert_int_equal(
            msgpack_unpack_next(&u, t->msgs[0], t->msg_lens[0], &off),
            MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(u.data.via.array.ptr[0].via.u64, 1);
        assert_true(harness_obj_is_str(&u.data.via.array.ptr[2], "c1"));
        msgpack_unpacked_destroy(&u);
    }

    /* Payloads are binary: a NUL inside must come through. */
    freeReplyObject(
        harness_command(c, "PUBLISH %s %b", CHANNEL, "x\0y", (size_t)3));
    assert_true(run_until(t, has_msgs, 2, WAIT_MS));
    assert_int_equal(t->msg_lens[1], 3);
    assert_memory_equal(t->msgs[1], "x\0y", 3);
    uvt_finish(t);
}


static void test_link_noscript(void **state)
{
    uvt_t *t = *state;
    redisContext *c = harness_redis(t->h);
    redisReply *rep;
    char sha[64];

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    go_live(t);

    rep = harness_command(c, "SCRIPT LOAD %s", script_write);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    snprintf(sha, sizeof(sha), "%s", rep->str);
    freeReplyObject(rep);
    freeReplyObject(harness_command(c, "SCRIPT FLUSH"));

    /* Two calls in flight both get NOSCRIPT and both go again as EVAL. */
    assert_int_equal(script_call(t, 0, "c1", "1"), 0);
    assert_int_equal(script_call(t, 1, "c2", "2"), 0);
    assert_true(run_until(t, answered, 2, WAIT_MS));
    expect_rec(&t->recs[0], 0, REDIS_REPLY_ARRAY);
    expect_rec(&t->recs[1], 0, REDIS_REPLY_ARRAY);
    assert_int_equal(t->recs[0].ints[0], 1);
    assert_int_equal(t->recs[1].ints[0], 1);
    expect_str(c, "1", "HGET mesh:connection-meta c1");
    expect_str(c, "2", "HGET mesh:connection-meta c2");
    expect_str(c, "2", "GET mesh:meshsync:seq");

    /* EVAL put the script back in Redis's cache. */
    rep = harness_command(c, "SCRIPT EXISTS %s", sha);
    assert_int_equal(rep->element[0]->integer, 1);
    freeReplyObject(rep);
    uvt_finish(t);
}


static void test_link_kills(void **state)
{
    uvt_t *t = *state;
    redisContext *c = harness_redis(t->h);
    redisReply *rep;

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    go_live(t);

    rep = harness_command(c, "CLIENT KILL TYPE pubsub");
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    assert_true(run_until(t, has_states, 3, WAIT_MS));
    assert_false(t->states[1]);
    assert_true(t->states[2]);

    /* The harness's own context is spared (SKIPME): this is the cmd link. */
    rep = harness_command(c, "CLIENT KILL TYPE normal");
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    assert_true(run_until(t, has_states, 4, WAIT_MS));
    assert_false(t->states[3]);
    assert_false(ms_redis_live(t->r));
    assert_int_equal(command(t, 0, "PING", NULL, NULL), MS_EUNAVAIL);
    assert_int_equal(script_call(t, 0, "c1", "1"), MS_EUNAVAIL);

    assert_true(run_until(t, has_states, 5, WAIT_MS));
    assert_true(t->states[4]);
    assert_int_equal(script_call(t, 1, "c1", "1"), 0);
    assert_true(run_until(t, answered_one, 1, WAIT_MS));
    assert_int_equal(t->recs[0].calls, 0);
    expect_rec(&t->recs[1], 0, REDIS_REPLY_ARRAY);
    assert_int_equal(t->nstates, 5);
    uvt_finish(t);
}


static void test_link_pending_killed(void **state)
{
    uvt_t *t = *state;
    redisContext *c = harness_redis(t->h);
    redisReply *rep;

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    go_live(t);

    /* Blocked in Redis, and queued behind the block. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(command(t, i, "BLPOP", "nothing", "0"), 0);
    assert_int_equal(script_call(t, 4, "c1", "1"), 0);
    assert_int_equal(command(t, 5, "PING", NULL, NULL), 0);
    t->recs[0].resend = true;
    await_blocked(t);

    rep = harness_command(c, "CLIENT KILL TYPE normal");
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    assert_true(run_until(t, answered, 6, WAIT_MS));
    for (int i = 0; i < 6; i++)
        expect_rec(&t->recs[i], MS_EUNAVAIL, -1);

    /* A command from such a callback fails at once. */
    assert_int_equal(t->recs[0].resend_rc, MS_EUNAVAIL);
    assert_true(t->nstates >= 2);
    assert_false(t->states[1]);

    /* Commands still in hiredis's buffer when the link dies. */
    assert_true(run_until(t, has_states, 3, WAIT_MS));
    assert_int_equal(command(t, 10, "PING", NULL, NULL), 0);
    assert_int_equal(script_call(t, 11, "c2", "2"), 0);
    freeReplyObject(harness_command(c, "CLIENT KILL TYPE normal"));
    assert_true(run_until(t, has_states, 5, WAIT_MS));
    assert_int_equal(t->recs[10].calls, 1);
    assert_int_equal(t->recs[11].calls, 1);
    assert_true(t->recs[10].err == MS_EUNAVAIL || t->recs[10].err == 0);
    uvt_finish(t);
}


static void test_link_close_pending(void **state)
{
    uvt_t *t = *state;

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    go_live(t);
    for (int i = 0; i < 3; i++)
        assert_int_equal(command(t, i, "BLPOP", "nothing", "0"), 0);
    assert_int_equal(script_call(t, 3, "c1", "1"), 0);
    t->recs[0].resend = true;
    await_blocked(t);
    assert_int_equal(script_call(t, 4, "c1", "1"), 0);

    uvt_close(t);
    uvt_finish(t);
    for (int i = 0; i < 5; i++)
        expect_rec(&t->recs[i], MS_EUNAVAIL, -1);
    assert_int_equal(t->recs[0].resend_rc, MS_EUNAVAIL);
    assert_int_equal(t->nstates, 1);
}


static void test_link_close_in_reply(void **state)
{
    uvt_t *t = *state;

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    go_live(t);
    assert_int_equal(command(t, 0, "PING", NULL, NULL), 0);
    assert_int_equal(command(t, 1, "BLPOP", "nothing", "0"), 0);
    assert_int_equal(script_call(t, 2, "c1", "1"), 0);
    t->recs[0].close = true;
    assert_true(run_until(t, answered, 3, WAIT_MS));
    uvt_finish(t);
    expect_rec(&t->recs[0], 0, REDIS_REPLY_STATUS);
    expect_rec(&t->recs[1], MS_EUNAVAIL, -1);
    expect_rec(&t->recs[2], MS_EUNAVAIL, -1);
}


static void test_link_close_in_message(void **state)
{
    uvt_t *t = *state;
    redisContext *c = harness_redis(t->h);

    uvt_redis(t, harness_redis_url(t->h), NULL, true);
    go_live(t);
    assert_int_equal(command(t, 0, "BLPOP", "nothing", "0"), 0);
    await_blocked(t);
    freeReplyObject(harness_command(c, "PUBLISH %s a", CHANNEL));
    freeReplyObject(harness_command(c, "PUBLISH %s b", CHANNEL));
    assert_true(run_until(t, has_msgs, 1, WAIT_MS));
    uvt_finish(t);
    assert_int_equal(t->nmsgs, 1);
    expect_rec(&t->recs[0], MS_EUNAVAIL, -1);
}


static void test_link_close_in_state(void **state)
{
    uvt_t *t = *state;
    redisContext *c = harness_redis(t->h);

    uvt_redis(t, harness_redis_url(t->h), NULL, false);
    go_live(t);
    assert_int_equal(command(t, 0, "BLPOP", "nothing", "0"), 0);
    await_blocked(t);
    t->close_on_down = true;
    freeReplyObject(harness_command(c, "CLIENT KILL TYPE pubsub"));
    assert_true(run_until(t, has_states, 2, WAIT_MS));
    uvt_finish(t);
    assert_int_equal(t->nstates, 2);
    expect_rec(&t->recs[0], MS_EUNAVAIL, -1);
}


static bool never(uvt_t *t, int arg)
{
    (void)t;
    (void)arg;
    return false;
}


static int setup_uvt_bare(void **state)
{
    *state = uvt_new(harness_new());
    return 0;
}


/* Redis absent at start, stopped, and restarted on the same socket. */
static void test_link_restart(void **state)
{
    uvt_t *t = *state;
    char url[HARNESS_PATH_MAX + 16], sha[64];
    redisReply *rep;

    snprintf(url, sizeof(url), "unix://%s/redis.sock", harness_dir(t->h));
    uvt_redis(t, url, NULL, false);

    /* Let a few connects fail before the server appears. */
    assert_false(run_until(t, never, 0, 50));
    assert_int_equal(t->nstates, 0);
    assert_int_equal(command(t, 0, "PING", NULL, NULL), MS_EUNAVAIL);
    harness_redis_start(t->h, NULL);
    go_live(t);
    rep = harness_command(harness_redis(t->h), "SCRIPT LOAD %s", script_load);
    snprintf(sha, sizeof(sha), "%s", rep->str);
    freeReplyObject(rep);

    harness_redis_stop(t->h);
    assert_true(run_until(t, has_states, 2, WAIT_MS));
    assert_false(t->states[1]);
    assert_int_equal(command(t, 0, "PING", NULL, NULL), MS_EUNAVAIL);
    assert_false(run_until(t, never, 0, 50));

    /* A new server: the links come back with the scripts loaded. */
    harness_redis_start(t->h, NULL);
    assert_true(run_until(t, has_states, 3, WAIT_MS));
    assert_true(t->states[2]);
    rep = harness_command(harness_redis(t->h), "SCRIPT EXISTS %s", sha);
    assert_int_equal(rep->element[0]->integer, 1);
    freeReplyObject(rep);
    assert_int_equal(script_call(t, 1, "c1", "1"), 0);
    assert_true(run_until(t, answered_one, 1, WAIT_MS));
    expect_rec(&t->recs[1], 0, REDIS_REPLY_ARRAY);

    /* Closing while the links wait to reconnect. */
    harness_redis_kill(t->h);
    assert_true(run_until(t, has_states, 4, WAIT_MS));
    uvt_finish(t);
}


static void test_link_auth_db(void **state)
{
    uvt_t *t = *state, *t2 = calloc(1, sizeof(*t2));
    char url[HARNESS_PATH_MAX + 16];
    ms_redis_options_t opt = {.password = "wrong",
                              .channel = CHANNEL,
                              .backoff_min_ms = 5,
                              .backoff_max_ms = 20};
    ms_redis_callbacks_t cb = {
        .arg = t2, .on_state = on_state, .on_message = on_message};
    ms_redis_t *r2;
    redisContext *c;

    assert_non_null(t2);
    c = harness_redis_start(
        t->h, (const char *const[]){"--requirepass", "s3cret", NULL});
    freeReplyObject(harness_command(c, "AUTH s3cret"));
    snprintf(url, sizeof(url), "%s?db=3", harness_redis_url(t->h));
    opt.url = url;
    assert_int_equal(ms_redis_new(&t->loop, &opt, &cb, &r2, NULL), 0);

    uvt_redis(t, url, "s3cret", false);
    go_live(t);
    assert_int_equal(script_call(t, 0, "c1", "\"db3\""), 0);
    assert_true(run_until(t, answered, 1, WAIT_MS));
    expect_rec(&t->recs[0], 0, REDIS_REPLY_ARRAY);
    expect_str(c, NULL, "HGET mesh:connection-meta c1");
    freeReplyObject(harness_command(c, "SELECT 3"));
    expect_str(c, "\"db3\"", "HGET mesh:connection-meta c1");

    /* A wrong password keeps failing: never live (checked for a while). */
    assert_false(run_until(t, never, 0, 200));
    assert_int_equal(t2->nstates, 0);
    assert_false(ms_redis_live(r2));
    ms_redis_close(r2);
    uvt_finish(t);
    free(t2);
}


static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}


static void test_link_tcp(void **state)
{
    uvt_t *t = *state;
    char port[16], url[64];
    redisContext *c;

    snprintf(port, sizeof(port), "%d", free_port());
    c = harness_redis_start(
        t->h,
        (const char *const[]){"--port", port, "--bind", "127.0.0.1", NULL});
    snprintf(url, sizeof(url), "redis://127.0.0.1:%s/2", port);
    uvt_redis(t, url, NULL, false);
    go_live(t);
    assert_int_equal(script_call(t, 0, "c1", "\"tcp\""), 0);
    assert_true(run_until(t, answered, 1, WAIT_MS));
    expect_rec(&t->recs[0], 0, REDIS_REPLY_ARRAY);
    freeReplyObject(harness_command(c, "SELECT 2"));
    expect_str(c, "\"tcp\"", "HGET mesh:connection-meta c1");
    uvt_finish(t);
}


static void test_url_check(void **state)
{
    static const char *good[] = {"redis://localhost",
                                 "redis://localhost:6380",
                                 "redis://h:1/0",
                                 "redis://10.0.0.1:7000/15",
                                 "redis://[::1]:7000",
                                 "redis://[::1]",
                                 "redis://my-host.example.com/3",
                                 "redis://h/",
                                 "unix:///run/redis.sock",
                                 "unix:///tmp/r.sock?db=2"};
    static const char *bad[] = {"",
                                "localhost:6379",
                                "http://h",
                                "rediss://h",
                                "redis://",
                                "redis://:pw@h",
                                "redis://user:secret@h:1",
                                "redis://h:0",
                                "redis://h:65536",
                                "redis://h:x",
                                "redis://h:",
                                "redis://h/x",
                                "redis://h/1/2",
                                "redis://[::1",
                                "redis://[nothex]:1",
                                "redis://h?db=1",
                                "redis://h h",
                                "unix://",
                                "unix://rel/path",
                                "unix:///",
                                "unix:///p?db=",
                                "unix:///p?db=x",
                                "unix:///p?x=1"};
    ms_error_t err;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (ms_redis_url_check(good[i], &err) < 0)
            fail_msg("refused %s: %s", good[i], err.msg);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&err, 0, sizeof(err));
        if (ms_redis_url_check(bad[i], &err) != MS_EINVAL)
            fail_msg("accepted %s", bad[i]);
        assert_int_equal(err.code, MS_EINVAL);
        assert_true(strlen(err.msg) > 10);
        assert_null(strstr(err.msg, "secret"));
    }
    assert_int_equal(ms_redis_url_check(NULL, NULL), MS_EINVAL);
}


static void test_new_refuses(void **state)
{
    uv_loop_t loop;
    ms_redis_options_t opt = {.url = "redis://user:secret@h",
                              .channel = CHANNEL};
    ms_redis_callbacks_t cb = {0};
    ms_redis_t *r = NULL;
    ms_error_t err = {0};

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(ms_redis_new(&loop, &opt, &cb, &r, &err), MS_EINVAL);
    assert_null(r);
    assert_null(strstr(err.msg, "secret"));
    opt.url = "unix:///tmp/x.sock";
    opt.channel = NULL;
    assert_int_equal(ms_redis_new(&loop, &opt, &cb, &r, &err), MS_EINVAL);
    assert_null(r);
    assert_int_equal(uv_loop_close(&loop), 0);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_set_conn, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_set_room, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_del, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_absent, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_log, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_turn, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_equal, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_load_conns, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_load_rooms, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_load_glob_names, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_load_many_conns, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_load_many_rooms, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_scrub_lease, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_scrub_conns, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_scrub_rooms, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_scrub_versions, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_scrub_named_rooms, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_scrub_cursors, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_adopt_set, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_adopt_del, setup_redis,
                                        teardown_redis),
        cmocka_unit_test_setup_teardown(test_write_adopt_turn, setup_redis,
                                        teardown_redis),
        cmocka_unit_test(test_url_check),
        cmocka_unit_test(test_new_refuses),
        cmocka_unit_test_setup_teardown(test_link_script, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_noscript, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_kills, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_pending_killed, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_close_pending, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_close_in_reply, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_close_in_message, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_close_in_state, setup_uvt,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_restart, setup_uvt_bare,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_auth_db, setup_uvt_bare,
                                        teardown_uvt),
        cmocka_unit_test_setup_teardown(test_link_tcp, setup_uvt_bare,
                                        teardown_uvt),
    };
    int rc;

    script_write = read_text(SCHEMA_DIR "/write.lua");
    script_load = read_text(SCHEMA_DIR "/load.lua");
    script_scrub = read_text(SCHEMA_DIR "/scrub.lua");
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(script_write);
    free(script_load);
    free(script_scrub);
    return rc;
}
