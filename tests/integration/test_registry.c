/*
 * test_registry.c - Mesh's connection registry and instance liveness
 * through meshsyncd: conn.open and bound connections, conn.close that
 * also ends a connection's registration and rooms, the heartbeat, the
 * reaping of dead instances (a SIGKILLed sidecar, an entry a Mesh server
 * left), and what SIGTERM leaves behind.
 *
 * Each test has its own directory, redis-server and daemons (harness.h),
 * run with a short heartbeat so that deaths are noticed within a second
 * or two. Every wait is for a reply, a version, a log line or an exit,
 * bounded in time. Single-threaded.
 */
#include "harness.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "meshsync.h"

#define HEARTBEAT_MS "100"
#define TTL_MS       "500"
#define REAP_MS      "200"
#define WAIT_MS      10000

/* A sidecar with a fast heartbeat, and more flags if given. */
static harness_daemon_t *sidecar(harness_t *h, const char *name,
                                 const char *more, const char *value)
{
    const char *args[] = {"--instance-id",
                          name,
                          "--heartbeat-ms",
                          HEARTBEAT_MS,
                          "--heartbeat-ttl-ms",
                          TTL_MS,
                          "--reap-interval-ms",
                          REAP_MS,
                          more,
                          value,
                          NULL};

    return harness_daemon_start(h, name, args, NULL);
}


static uint64_t set_conn(meshsync_t *ms, const char *conn, const char *json)
{
    uint64_t v = 0;

    HARNESS_CALL_OK(ms, meshsync_conn_set(ms, conn, MESHSYNC_JSON, json,
                                          strlen(json), MESHSYNC_REPLACE, &v));
    return v;
}


/* Waits until ms's sidecar holds conn at min or later; checks the value. */
static void expect_conn(meshsync_t *ms, const char *conn, uint64_t min,
                        const char *want)
{
    meshsync_value_t v;

    HARNESS_CALL_OK(
        ms, meshsync_conn_get_min(ms, conn, min, WAIT_MS, MESHSYNC_JSON, &v));
    if (strcmp(v.data, want) != 0)
        fail_msg("%s: %s, want %s", conn, v.data, want);
    assert_true(v.version >= min);
    meshsync_value_free(&v);
}


/* conn is registered as owned by instance. */
static void expect_owner(harness_t *h, const char *conn, const char *instance)
{
    char *owner = harness_redis_hget(h, "mesh:connections", conn);

    if (owner == NULL || strcmp(owner, instance) != 0)
        fail_msg("%s owned by %s, want %s", conn, owner ? owner : "nobody",
                 instance);
    free(owner);
}


static long long rint_(harness_t *h, const char *fmt, const char *arg)
{
    return harness_redis_int(harness_redis(h), fmt, arg);
}


/* Nothing of conn is left in Mesh's registry, rooms or metadata. */
static void expect_conn_gone(harness_t *h, const char *conn, const char *room)
{
    char key[128];

    assert_int_equal(rint_(h, "HEXISTS mesh:connections %s", conn), 0);
    assert_int_equal(rint_(h, "HEXISTS mesh:connection-meta %s", conn), 0);
    snprintf(key, sizeof(key), "mesh:connection:%s:rooms", conn);
    assert_int_equal(rint_(h, "EXISTS %s", key), 0);
    if (room != NULL) {
        snprintf(key, sizeof(key), "mesh:room:%s", room);
        assert_int_equal(
            harness_redis_int(harness_redis(h), "SISMEMBER %s %s", key, conn),
            0);
    }
}


/* Puts conn in room the way a Mesh server does, with presence keys. */
static void join(harness_t *h, const char *conn, const char *room)
{
    redisContext *c = harness_redis(h);

    freeReplyObject(harness_command(c, "SADD mesh:room:%s %s", room, conn));
    freeReplyObject(
        harness_command(c, "SADD mesh:connection:%s:rooms %s", conn, room));
    freeReplyObject(
        harness_command(c, "SADD mesh:presence:room:%s %s", room, conn));
    freeReplyObject(
        harness_command(c, "SET mesh:presence:room:%s:conn:%s x", room, conn));
}


/* --- conn.open, conn.close -------------------------------------------- */

static void test_open_close(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *a = sidecar(h, "A", NULL, NULL);
    harness_daemon_t *b = sidecar(h, "B", NULL, NULL);
    meshsync_t *ma = harness_client_open(a);
    meshsync_t *mb = harness_client_open(b);
    uint64_t v;

    HARNESS_CALL_OK(ma, meshsync_conn_open(ma, "c1", 0));
    expect_owner(h, "c1", "A");
    assert_int_equal(rint_(h, "SISMEMBER mesh:connections:A %s", "c1"), 1);
    v = set_conn(ma, "c1", "{\"userId\":\"u1\"}");
    join(h, "c1", "lobby");
    freeReplyObject(
        harness_command(harness_redis(h), "SADD mesh:room:lobby other"));

    /* Opened again through B: B's now, A's set no longer lists it. */
    HARNESS_CALL_OK(mb, meshsync_conn_open(mb, "c1", 0));
    expect_owner(h, "c1", "B");
    assert_int_equal(rint_(h, "SISMEMBER mesh:connections:A %s", "c1"), 0);

    /* One close: metadata, registration, rooms, presence, together. */
    HARNESS_CALL_OK(ma, meshsync_conn_close(ma, "c1", NULL));
    expect_conn_gone(h, "c1", "lobby");
    assert_int_equal(rint_(h, "SISMEMBER mesh:connections:B %s", "c1"), 0);
    assert_int_equal(rint_(h, "SISMEMBER mesh:presence:room:lobby %s", "c1"),
                     0);
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:presence:room:lobby:conn:c1"),
                     0);
    assert_int_equal(rint_(h, "SISMEMBER mesh:room:lobby %s", "other"), 1);
    expect_conn(mb, "c1", v + 1, "null");

    /* Mesh keys of a foreign type do not make a close fail half-way. */
    HARNESS_CALL_OK(ma, meshsync_conn_open(ma, "w1", 0));
    v = set_conn(ma, "w1", "{}");
    freeReplyObject(
        harness_command(harness_redis(h), "SET mesh:connection:w1:rooms x"));
    freeReplyObject(
        harness_command(harness_redis(h), "SET mesh:connections:A x"));
    HARNESS_CALL_OK(ma, meshsync_conn_close(ma, "w1", NULL));
    expect_conn_gone(h, "w1", NULL);
    expect_conn(mb, "w1", v + 1, "null");

    /* No conn, and no hello to take it from. */
    assert_int_equal(meshsync_conn_open(ma, NULL, 0), -1);
    assert_string_equal(meshsync_errcode(ma), "invalid_request");

    meshsync_free(ma);
    meshsync_free(mb);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}


/* A connection opened after hello goes when the app's socket closes. */
static void test_bound_to_session(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *a = sidecar(h, "A", NULL, NULL);
    harness_daemon_t *b = sidecar(h, "B", NULL, NULL);
    meshsync_t *app = harness_client_open(a);
    meshsync_t *mb = harness_client_open(b);
    uint64_t v;

    HARNESS_CALL_OK(app, meshsync_hello(app, "c2"));
    HARNESS_CALL_OK(app, meshsync_conn_open(app, NULL, -1));
    HARNESS_CALL_OK(app, meshsync_conn_open(app, "kept", 0));
    v = set_conn(app, NULL, "{\"role\":\"admin\"}");
    join(h, "c2", "r");
    expect_conn(mb, "c2", v, "{\"role\":\"admin\"}");

    /* The app process dies: its socket closes. */
    meshsync_free(app);
    expect_conn(mb, "c2", v + 1, "null");
    expect_conn_gone(h, "c2", "r");
    expect_owner(h, "kept", "A");

    /* A bound connection opened again through B is B's: left alone. */
    app = harness_client_open(a);
    HARNESS_CALL_OK(app, meshsync_hello(app, "mv"));
    HARNESS_CALL_OK(app, meshsync_conn_open(app, NULL, -1));
    HARNESS_CALL_OK(mb, meshsync_conn_open(mb, "mv", 0));
    v = set_conn(mb, "mv", "{\"on\":\"B\"}");
    meshsync_free(app);
    if (!harness_daemon_wait_log(a, "moved to another instance", WAIT_MS))
        fail_msg("no refused close; log:\n%s", harness_daemon_log(a));
    expect_owner(h, "mv", "B");
    expect_conn(mb, "mv", v, "{\"on\":\"B\"}");

    meshsync_free(mb);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}


/* --- liveness ---------------------------------------------------------- */

static void test_heartbeat(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *a = sidecar(h, "A", NULL, NULL);
    meshsync_t *ms = harness_client_open(a);
    long long ttl;

    /* The first beat goes as soon as the links are up. */
    HARNESS_CALL_OK(ms, meshsync_conn_open(ms, "x", 0));
    assert_int_equal(rint_(h, "SISMEMBER mesh:instances %s", "A"), 1);
    ttl = rint_(h, "PTTL %s", "mesh:instance:A:heartbeat");
    assert_true(ttl > 0 && ttl <= atoi(TTL_MS));
    meshsync_free(ms);
    harness_daemon_stop_clean(a);
}


/* A SIGKILLed sidecar's connections are reaped by another one. */
static void test_killed_sidecar_reaped(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *a = sidecar(h, "A", NULL, NULL);
    harness_daemon_t *b = sidecar(h, "B", NULL, NULL);
    meshsync_t *ma = harness_client_open(a);
    meshsync_t *mb = harness_client_open(b);
    uint64_t v;
    int64_t t0, took;

    HARNESS_CALL_OK(ma, meshsync_conn_open(ma, "k1", 0));
    HARNESS_CALL_OK(ma, meshsync_conn_open(ma, "k2", 0));
    set_conn(ma, "k1", "1");
    v = set_conn(ma, "k2", "2");
    join(h, "k1", "room");
    meshsync_free(ma);

    t0 = harness_now_ms();
    harness_daemon_kill(a);
    expect_conn(mb, "k1", v + 1, "null");
    expect_conn(mb, "k2", v + 1, "null");
    took = harness_now_ms() - t0;
    print_message("killed sidecar's connections reaped after %" PRId64
                  " ms (heartbeat TTL %s ms, reap every %s ms)\n",
                  took, TTL_MS, REAP_MS);

    /* Within the TTL, a reap interval and some slack. */
    assert_true(took < atoi(TTL_MS) + 2 * atoi(REAP_MS) + 1000);
    if (!harness_daemon_wait_log(b, "reaping done", WAIT_MS))
        fail_msg("no reaping done; log:\n%s", harness_daemon_log(b));
    expect_conn_gone(h, "k1", "room");
    expect_conn_gone(h, "k2", NULL);
    assert_int_equal(rint_(h, "SISMEMBER mesh:instances %s", "A"), 0);
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:connections:A"), 0);

    meshsync_free(mb);
    harness_daemon_stop_clean(b);
}


/*
 * What a Mesh server that died leaves: registry entries, metadata and
 * rooms of an instance without a heartbeat. A sidecar reaps them, and
 * leaves alone another Mesh instance whose heartbeat lives.
 */
static void test_mesh_ghost_reaped(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *b;
    meshsync_t *mb;
    meshsync_value_t v;

    freeReplyObject(
        harness_command(c, "SADD mesh:instances ghost alive ghost2"));

    /* A dead instance whose set is of a foreign type stops no reap. */
    freeReplyObject(harness_command(c, "SET mesh:connections:ghost2 x"));
    freeReplyObject(harness_command(c, "HSET mesh:connections g1 ghost "
                                       "g2 ghost a1 alive"));
    freeReplyObject(harness_command(c, "SADD mesh:connections:ghost g1 g3"));
    freeReplyObject(harness_command(c, "SADD mesh:connections:alive a1"));
    freeReplyObject(
        harness_command(c, "SET mesh:instance:alive:heartbeat 1 PX 600000"));
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta g1 %s", "{\"u\":1}"));
    freeReplyObject(
        harness_command(c, "HSET mesh:connection-meta a1 %s", "{\"u\":2}"));
    join(h, "g1", "hall");

    b = sidecar(h, "B", NULL, NULL);
    mb = harness_client_open(b);
    if (!harness_daemon_wait_log(b, "instance=\"ghost\"", WAIT_MS))
        fail_msg("ghost not reaped; log:\n%s", harness_daemon_log(b));
    if (!harness_daemon_wait_log(b, "reaping done", WAIT_MS))
        fail_msg("no reaping done; log:\n%s", harness_daemon_log(b));

    /* g1 from the hash and the set, g2 from the hash, g3 from the set. */
    expect_conn_gone(h, "g1", "hall");
    expect_conn_gone(h, "g2", NULL);
    expect_conn_gone(h, "g3", NULL);
    assert_int_equal(rint_(h, "SISMEMBER mesh:instances %s", "ghost"), 0);
    assert_int_equal(rint_(h, "SISMEMBER mesh:instances %s", "ghost2"), 0);
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:connections:ghost"), 0);
    HARNESS_CALL_OK(mb, meshsync_conn_get(mb, "g1", MESHSYNC_JSON, &v));
    assert_string_equal(v.data, "null");
    meshsync_value_free(&v);

    /* The live one stays, with its metadata. */
    expect_owner(h, "a1", "alive");
    assert_int_equal(rint_(h, "SISMEMBER mesh:instances %s", "alive"), 1);
    assert_int_equal(rint_(h, "HEXISTS mesh:connection-meta %s", "a1"), 1);

    meshsync_free(mb);
    harness_daemon_stop_clean(b);
}


/* --- memberships ------------------------------------------------------- */

/* The members of room on ms's sidecar, as "id=value;..." in order. */
static void members(meshsync_t *ms, const char *room, char *out, size_t size)
{
    meshsync_page_t page;
    size_t n = 0;

    out[0] = '\0';
    HARNESS_CALL_OK(
        ms, meshsync_room_members(ms, room, NULL, 0, MESHSYNC_JSON, &page));
    for (size_t i = 0; i < page.count; i++)
        n += (size_t)snprintf(out + n, size - n, "%s=%s;", page.items[i].id,
                              page.items[i].data);
    assert_null(page.next);
    meshsync_page_free(&page);
}


static void expect_members(meshsync_t *ms, const char *room, const char *want)
{
    char got[512];

    members(ms, room, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("room %s: %s, want %s", room, got, want);
}


/*
 * Waits until to's sidecar has applied every change from's made so far:
 * a write through from, read back through to at its version (sidecars
 * apply changes in version order).
 */
static void barrier(meshsync_t *from, meshsync_t *to)
{
    uint64_t v = set_conn(from, "barrier", "{}");

    expect_conn(to, "barrier", v, "{}");
}


/*
 * Joins and leaves through one sidecar, read back through another; a
 * close takes the connection out of every room; memberships a Mesh
 * server made are loaded at start.
 */
static void test_memberships(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *a, *b;
    meshsync_t *ma, *mb;
    uint64_t v = 0, v2 = 0;

    /* What a Mesh server's joinRoom leaves, before any sidecar runs. */
    freeReplyObject(harness_command(c, "SADD mesh:room:hall m1 m2"));
    freeReplyObject(harness_command(c, "SADD mesh:connection:m1:rooms hall"));
    a = sidecar(h, "A", NULL, NULL);
    b = sidecar(h, "B", NULL, NULL);
    ma = harness_client_open(a);
    mb = harness_client_open(b);
    expect_members(mb, "hall", "m1=null;m2=null;");

    HARNESS_CALL_OK(ma, meshsync_room_join(ma, "lobby", "u1", &v));
    assert_true(v > 0);
    assert_int_equal(rint_(h, "SISMEMBER mesh:connection:u1:rooms %s", "lobby"),
                     1);
    set_conn(ma, "u1", "{\"n\":1}");
    HARNESS_CALL_OK(ma, meshsync_room_join(ma, "lobby", "u2", &v2));
    HARNESS_CALL_OK(ma, meshsync_room_join(ma, "hall", "u1", NULL));

    /* Joining again changes nothing. */
    HARNESS_CALL_OK(ma, meshsync_room_join(ma, "lobby", "u2", &v));
    assert_int_equal(v, 0);

    /* A reads its own joins at once; B once it has caught up with A. */
    expect_members(ma, "lobby", "u1={\"n\":1};u2=null;");
    barrier(ma, mb);
    expect_members(mb, "lobby", "u1={\"n\":1};u2=null;");
    expect_members(mb, "hall", "m1=null;m2=null;u1={\"n\":1};");

    /* A close: out of lobby and hall, everywhere. */
    HARNESS_CALL_OK(ma, meshsync_conn_close(ma, "u1", &v));
    expect_members(ma, "lobby", "u2=null;");
    expect_conn(mb, "u1", v, "null");
    expect_members(mb, "lobby", "u2=null;");
    expect_members(mb, "hall", "m1=null;m2=null;");
    assert_int_equal(rint_(h, "SISMEMBER mesh:room:lobby %s", "u1"), 0);

    /* Leaving; leaving a room one is not in changes nothing. */
    HARNESS_CALL_OK(mb, meshsync_room_leave(mb, "lobby", "u2", &v));
    assert_true(v > v2);
    HARNESS_CALL_OK(ma, meshsync_room_leave(ma, "lobby", "nobody", &v2));
    assert_int_equal(v2, 0);
    barrier(mb, ma);
    expect_members(ma, "lobby", "");
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:room:lobby"), 0);

    /* A room set of a foreign type: refused, nothing written at all. */
    freeReplyObject(harness_command(c, "SET mesh:room:bad x"));
    assert_int_equal(meshsync_room_join(ma, "bad", "u9", NULL), -1);
    assert_string_equal(meshsync_errcode(ma), "internal");
    assert_non_null(strstr(meshsync_errmsg(ma), "WRONGTYPE"));
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:connection:u9:rooms"), 0);

    /* A room that is not a valid name is refused. */
    assert_int_equal(meshsync_room_join(ma, "", "u9", NULL), -1);
    assert_string_equal(meshsync_errcode(ma), "invalid_request");

    meshsync_free(ma);
    meshsync_free(mb);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}


/*
 * Waits until the scrub (run by whichever of a and b holds its lease) has
 * completed n full scans from now: n = 3 covers a scan under way, the
 * next one, and the checks it sent when it ended.
 */
static void wait_scrubs(harness_daemon_t *a, harness_daemon_t *b, int n)
{
    harness_daemon_t *leader = NULL;

    for (int i = 0; i < 100 && leader == NULL; i++) {
        if (strstr(harness_daemon_log(a), "scrub lease taken") != NULL)
            leader = a;
        else if (strstr(harness_daemon_log(b), "scrub lease taken") != NULL)
            leader = b;
        else if (!harness_daemon_wait_log(a, "scrub lease", 100))
            (void)harness_daemon_wait_log(b, "scrub lease", 100);
    }
    if (leader == NULL)
        fail_msg("no sidecar took the scrub lease");
    for (int i = 0; i < n; i++)
        if (!harness_daemon_wait_log(leader, "scrub done", WAIT_MS))
            fail_msg("no scrub done; log:\n%s", harness_daemon_log(leader));
}


/*
 * Memberships a Mesh server makes or ends (SADD, SREM, DEL on its sets)
 * reach every cache through the scrub, which versions each difference.
 */
static void test_mesh_memberships_scrubbed(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *a = sidecar(h, "A", "--scrub-interval-ms", "300");
    harness_daemon_t *b = sidecar(h, "B", "--scrub-interval-ms", "300");
    meshsync_t *ma = harness_client_open(a);
    meshsync_t *mb = harness_client_open(b);

    HARNESS_CALL_OK(ma, meshsync_room_join(ma, "lobby", "u1", NULL));
    freeReplyObject(harness_command(c, "SADD mesh:room:lobby m1 m2"));
    freeReplyObject(harness_command(c, "SADD mesh:room:hall h1"));
    wait_scrubs(a, b, 3);
    barrier(ma, mb);
    expect_members(mb, "lobby", "m1=null;m2=null;u1=null;");
    expect_members(mb, "hall", "h1=null;");

    freeReplyObject(harness_command(c, "SREM mesh:room:lobby u1"));
    freeReplyObject(harness_command(c, "DEL mesh:room:hall"));
    wait_scrubs(a, b, 3);
    barrier(ma, mb);
    expect_members(mb, "lobby", "m1=null;m2=null;");
    expect_members(mb, "hall", "");
    expect_members(ma, "hall", "");

    meshsync_free(ma);
    meshsync_free(mb);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}


/*
 * With keyspace notifications, a Mesh server's membership change reaches
 * the caches at once, not at the next full scan (30 s away here).
 */
static void test_mesh_memberships_notified(void **state)
{
    harness_t *h = *state;
    redisContext *c = harness_redis(h);
    harness_daemon_t *a, *b, *leader;
    meshsync_t *ma, *mb;

    freeReplyObject(harness_command(c, "CONFIG SET notify-keyspace-events KA"));
    a = sidecar(h, "A", "--log-level", "debug");
    b = sidecar(h, "B", "--log-level", "debug");
    ma = harness_client_open(a);
    mb = harness_client_open(b);

    /* The scan made when the lease is taken is over: the rest is theirs. */
    wait_scrubs(a, b, 1);
    leader = strstr(harness_daemon_log(a), "scrub lease taken") ? a : b;

    freeReplyObject(harness_command(c, "SADD mesh:room:k m1 m2"));
    for (int i = 0; i < 2; i++)
        if (!harness_daemon_wait_log(leader, "outside membership found",
                                     WAIT_MS))
            fail_msg("no membership found; log:\n%s",
                     harness_daemon_log(leader));
    barrier(ma, mb);
    expect_members(mb, "k", "m1=null;m2=null;");

    freeReplyObject(harness_command(c, "SREM mesh:room:k m1"));
    if (!harness_daemon_wait_log(leader, "outside membership found", WAIT_MS))
        fail_msg("no leave found; log:\n%s", harness_daemon_log(leader));
    barrier(ma, mb);
    expect_members(mb, "k", "m2=null;");

    /* A join through meshsync beside them reads back as usual. */
    HARNESS_CALL_OK(ma, meshsync_room_join(ma, "k", "m3", NULL));
    barrier(ma, mb);
    expect_members(mb, "k", "m2=null;m3=null;");

    meshsync_free(ma);
    meshsync_free(mb);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}


/* --- stopping ----------------------------------------------------------- */

static void test_sigterm_no_ghosts(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *a = sidecar(h, "A", NULL, NULL);
    harness_daemon_t *b = sidecar(h, "B", NULL, NULL);
    meshsync_t *app = harness_client_open(a);
    meshsync_t *mb = harness_client_open(b);
    uint64_t v;

    HARNESS_CALL_OK(app, meshsync_hello(app, "t1"));
    HARNESS_CALL_OK(app, meshsync_conn_open(app, NULL, -1));
    HARNESS_CALL_OK(app, meshsync_conn_open(app, "t2", 0));
    set_conn(app, NULL, "{\"a\":1}");
    v = set_conn(app, "t2", "{\"b\":2}");
    join(h, "t2", "r");

    harness_daemon_stop_clean(a);
    expect_conn_gone(h, "t1", NULL);
    expect_conn_gone(h, "t2", "r");
    assert_int_equal(rint_(h, "SISMEMBER mesh:instances %s", "A"), 0);
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:instance:A:heartbeat"), 0);
    assert_int_equal(rint_(h, "EXISTS %s", "mesh:connections:A"), 0);
    expect_conn(mb, "t1", v + 1, "null");
    expect_conn(mb, "t2", v + 1, "null");

    meshsync_free(app);
    meshsync_free(mb);
    harness_daemon_stop_clean(b);
}


/* --close-on-exit no: the connections outlive the stop until reaped. */
static void test_sigterm_keep(void **state)
{
    harness_t *h = *state;
    harness_daemon_t *a = sidecar(h, "A", "--close-on-exit", "no");
    meshsync_t *ma = harness_client_open(a);
    harness_daemon_t *b;
    meshsync_t *mb;
    uint64_t v;

    HARNESS_CALL_OK(ma, meshsync_conn_open(ma, "s1", 0));
    v = set_conn(ma, "s1", "{}");
    meshsync_free(ma);
    harness_daemon_stop_clean(a);
    expect_owner(h, "s1", "A");
    assert_int_equal(rint_(h, "HEXISTS mesh:connection-meta %s", "s1"), 1);

    /* Once A's heartbeat has run out, B reaps them. */
    b = sidecar(h, "B", NULL, NULL);
    mb = harness_client_open(b);
    expect_conn(mb, "s1", v + 1, "null");
    expect_conn_gone(h, "s1", NULL);
    meshsync_free(mb);
    harness_daemon_stop_clean(b);
}


static void test_bad_flags(void **state)
{
    harness_run_t r;

    (void)state;
    harness_run(MESHSYNCD_PATH,
                (const char *[]){"--heartbeat-ms", "1000", "--heartbeat-ttl-ms",
                                 "1500", NULL},
                NULL, NULL, 0, &r);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--heartbeat-ttl-ms"));
    harness_run_free(&r);
    harness_run(MESHSYNCD_PATH,
                (const char *[]){"--close-on-exit", "maybe", NULL}, NULL, NULL,
                0, &r);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "yes or no"));
    harness_run_free(&r);
}


#define TEST(f)                                                                \
    cmocka_unit_test_setup_teardown(f, harness_setup_redis, harness_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_open_close),
        TEST(test_bound_to_session),
        TEST(test_heartbeat),
        TEST(test_killed_sidecar_reaped),
        TEST(test_mesh_ghost_reaped),
        TEST(test_memberships),
        TEST(test_mesh_memberships_scrubbed),
        TEST(test_mesh_memberships_notified),
        TEST(test_sigterm_no_ghosts),
        TEST(test_sigterm_keep),
        cmocka_unit_test(test_bad_flags),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
