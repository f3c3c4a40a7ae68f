/*
 * test_disk.c - meshsyncd when its SQLite cache file cannot be written,
 * as on a full disk. The daemon ignores SIGXFSZ, so lowering the soft
 * RLIMIT_FSIZE of its process to 1 byte (prlimit(2)) makes every write to
 * the cache fail with "disk I/O error", as ENOSPC would; raising it back
 * is space returning. The hard limit is left as it was, so the soft one
 * can always go back up.
 *
 * Tests: the disk fills while a sidecar runs (it keeps answering reads,
 * stale, and accepting writes, logs one error, reports cacheFailing, and
 * catches up once space returns, its cache file equal to Redis), also
 * when the change log no longer reaches back and it must load everything;
 * the disk is full when a sidecar starts; a sidecar is stopped while its
 * disk is full.
 *
 * Entry point: main (cmocka). Each test has its own directory,
 * redis-server and daemons (harness.h). Nothing sleeps: every wait is for
 * a reply, a log line or an exit, and every loop is bounded.
 * Single-threaded.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "meshsync.h"

#define WAIT_MS       10000
#define ENTRIES       12  /* connections, and as many rooms */
#define B_WRITES      200 /* through B while A's disk is full */
#define A_WRITES      50  /* through A meanwhile */
#define BACK_WRITES   100 /* through B while A is stopped */
#define RETRIES       2   /* failed catch-ups to see before going on */
#define MAX_CLIENTS   8
#define SHORT_WAIT_MS 200   /* for a version the cache will not get */
#define TRIMMED_LOG   "100" /* changes the log keeps, fewer than A misses */

#define FAILED_LINE "msg=\"cache write failed: serving what it holds"
#define RETRY_LINE  "msg=\"resync failed\""
#define WORKS_LINE  "msg=\"cache operations work again\""
#define CAUGHT_LINE "msg=\"cache caught up after failed writes\""

typedef enum { CONN = 0, ROOM = 1 } kind_t;
typedef enum { OP_REPLACE, OP_MERGE, OP_DELETE } op_t;

/* One test's world; teardown frees all of it, also after a failure. */
typedef struct world_s {
    harness_t *h;
    meshsync_t *ms[MAX_CLIENTS];
    int nms;
    json_t *model[2][ENTRIES];    /* what Redis should hold; NULL: nothing */
    uint64_t version[2][ENTRIES]; /* of the entry's last write */
    char *held[2][ENTRIES];       /* A's cache as the disk filled (JSON) */
    kind_t last_kind;             /* the entry written last */
    int last_i;
    bool own_lowered;        /* this process's limit is lowered */
    struct rlimit own_limit; /* what it was */
} world_t;

/* --- the world -------------------------------------------------------- */

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));

    assert_non_null(w);
    w->h = harness_new();
    harness_redis_start(w->h, NULL);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;

    /* A test that failed between lowering and restoring must not leave
     * its limit to the next test's daemons. */
    if (w->own_lowered)
        setrlimit(RLIMIT_FSIZE, &w->own_limit);
    for (int i = 0; i < w->nms; i++)
        meshsync_free(w->ms[i]);
    harness_free(w->h);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < ENTRIES; i++) {
            json_decref(w->model[k][i]);
            free(w->held[k][i]);
        }
    }
    free(w);
    return 0;
}

static meshsync_t *client(world_t *w, const harness_daemon_t *d)
{
    assert_true(w->nms < MAX_CLIENTS);
    w->ms[w->nms] = harness_client_open(d);
    return w->ms[w->nms++];
}

/* --- the file size limit ---------------------------------------------- */

/* Sets pid's soft RLIMIT_FSIZE (the hard one stays); returns the old. */
static struct rlimit fsize_set(pid_t pid, rlim_t soft)
{
    struct rlimit old, lim;

    if (prlimit(pid, RLIMIT_FSIZE, NULL, &old) != 0)
        fail_msg("prlimit %d: %s", (int)pid, strerror(errno));
    lim.rlim_cur = soft;
    lim.rlim_max = old.rlim_max;
    if (prlimit(pid, RLIMIT_FSIZE, &lim, NULL) != 0)
        fail_msg("prlimit %d: %s", (int)pid, strerror(errno));
    return old;
}

/* The disk is full for pid: every write past its first byte fails. */
static rlim_t fsize_lower(pid_t pid)
{
    struct rlimit old = fsize_set(pid, 1);

    /* A write at the limit would fail anyway; below it nothing would. */
    assert_true(old.rlim_cur > 1);
    return old.rlim_cur;
}

/*
 * Lowers this process's own soft limit, so that a child started now
 * inherits a full disk from its first instruction. Nothing may write to
 * a file until own_restore(): that would kill this process with SIGXFSZ.
 */
static void own_lower(world_t *w)
{
    struct rlimit lim;

    assert_int_equal(getrlimit(RLIMIT_FSIZE, &w->own_limit), 0);
    lim.rlim_cur = 1;
    lim.rlim_max = w->own_limit.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    w->own_lowered = true;
}

static void own_restore(world_t *w)
{
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &w->own_limit), 0);
    w->own_lowered = false;
}

/* --- entries ---------------------------------------------------------- */

static void entry_id(kind_t kind, int i, char *out, size_t size)
{
    snprintf(out, size, "%s-%d", kind == ROOM ? "room" : "conn", i);
}

static void assert_json(const char *got, const json_t *want, const char *what)
{
    json_t *g = json_loads(got, JSON_DECODE_ANY, NULL);
    char *w = want ? json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    bool same =
        g != NULL && (want ? json_equal(g, (json_t *)want) : json_is_null(g));

    json_decref(g);
    if (!same)
        fail_msg("%s: got %s, want %s", what, got, w ? w : "null");
    free(w);
}

/* What a strategy leaves when value goes over current (NULL: absent). */
static json_t *model_apply(json_t *current, op_t op, json_t *value)
{
    json_t *next;

    if (op == OP_DELETE)
        return NULL;
    if (op == OP_REPLACE || !json_is_object(current) || !json_is_object(value))
        return json_incref(value);
    next = json_deep_copy(current);
    assert_non_null(next);
    assert_int_equal(json_object_update(next, value), 0);
    return next;
}

static uint64_t send_write(meshsync_t *ms, kind_t kind, const char *id, op_t op,
                           const char *text)
{
    meshsync_strategy_t st = op == OP_MERGE ? MESHSYNC_MERGE : MESHSYNC_REPLACE;
    uint64_t v = 0;

    if (op == OP_DELETE && kind == ROOM)
        HARNESS_CALL_OK(ms, meshsync_room_delete(ms, id, &v));
    else if (op == OP_DELETE)
        HARNESS_CALL_OK(ms, meshsync_conn_close(ms, id, &v));
    else if (kind == ROOM)
        HARNESS_CALL_OK(ms, meshsync_room_set(ms, id, MESHSYNC_JSON, text,
                                              strlen(text), st, &v));
    else
        HARNESS_CALL_OK(ms, meshsync_conn_set(ms, id, MESHSYNC_JSON, text,
                                              strlen(text), st, &v));
    return v;
}

/*
 * Writes entry i through ms (the reply must be ok) and follows it in the
 * model. A replace sets {"n": n, "by": who}, a merge {who: n} over what
 * is there.
 */
static void write_entry(world_t *w, meshsync_t *ms, kind_t kind, int i, op_t op,
                        const char *who, int n)
{
    char id[32], text[64];
    json_t *value, *next;
    uint64_t v;

    entry_id(kind, i, id, sizeof(id));
    if (op == OP_MERGE)
        snprintf(text, sizeof(text), "{\"%s\":%d}", who, n);
    else
        snprintf(text, sizeof(text), "{\"n\":%d,\"by\":\"%s\"}", n, who);
    v = send_write(ms, kind, id, op, text);
    if (v <= w->version[kind][i])
        fail_msg("%s: version %" PRIu64 " after %" PRIu64, id, v,
                 w->version[kind][i]);
    w->version[kind][i] = v;
    w->last_kind = kind;
    w->last_i = i;

    value = json_loads(text, 0, NULL);
    assert_non_null(value);
    next = model_apply(w->model[kind][i], op, value);
    json_decref(value);
    json_decref(w->model[kind][i]);
    w->model[kind][i] = next;
}

/* Writes count changes over every entry: replaces, merges and deletes. */
static void workload(world_t *w, meshsync_t *ms, const char *who, int count,
                     int first)
{
    for (int k = 0; k < count; k++) {
        int n = first + k;
        kind_t kind = n % 2 ? ROOM : CONN;
        op_t op = n % 9 == 4 ? OP_DELETE : n % 3 == 1 ? OP_MERGE : OP_REPLACE;

        write_entry(w, ms, kind, n / 2 * 5 % ENTRIES, op, who, n);
    }
}

/* Every entry written once, by A and B in turn. */
static void write_all(world_t *w, meshsync_t *ma, meshsync_t *mb)
{
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < ENTRIES; i++)
            write_entry(w, i % 2 ? mb : ma, (kind_t)k, i, OP_REPLACE,
                        i % 2 ? "b" : "a", i);
    }
}

/* Reads entry i through ms, at least at min (0: at once). */
static void read_entry_within(meshsync_t *ms, kind_t kind, int i, uint64_t min,
                              int wait_ms, meshsync_value_t *v)
{
    char id[32];

    entry_id(kind, i, id, sizeof(id));
    if (kind == ROOM)
        HARNESS_CALL_OK(
            ms, meshsync_room_get_min(ms, id, min, wait_ms, MESHSYNC_JSON, v));
    else
        HARNESS_CALL_OK(
            ms, meshsync_conn_get_min(ms, id, min, wait_ms, MESHSYNC_JSON, v));
}

static void read_entry(meshsync_t *ms, kind_t kind, int i, uint64_t min,
                       meshsync_value_t *v)
{
    read_entry_within(ms, kind, i, min, WAIT_MS, v);
}

/*
 * Waits until ms's sidecar holds every entry's last write, checks that it
 * answers the model's value, not stale, and keeps the answers in held.
 */
static void expect_caught_up(world_t *w, meshsync_t *ms)
{
    char id[32];

    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < ENTRIES; i++) {
            meshsync_value_t v;

            entry_id((kind_t)k, i, id, sizeof(id));
            read_entry(ms, (kind_t)k, i, w->version[k][i], &v);
            assert_json(v.data, w->model[k][i], id);
            if (v.stale || v.version != w->version[k][i])
                fail_msg("%s: stale %d, version %" PRIu64 ", want 0, %" PRIu64,
                         id, v.stale, v.version, w->version[k][i]);
            free(w->held[k][i]);
            w->held[k][i] = strdup(v.data);
            assert_non_null(w->held[k][i]);
            meshsync_value_free(&v);
        }
    }
}

/* What Redis holds for entry i: a copy of the JSON text, or NULL. */
static char *redis_value(world_t *w, kind_t kind, int i)
{
    char id[32], key[64];

    entry_id(kind, i, id, sizeof(id));
    if (kind == CONN)
        return harness_redis_hget(w->h, "mesh:connection-meta", id);
    snprintf(key, sizeof(key), "mesh:roommeta:%s", id);
    return harness_redis_hget(w->h, key, "data");
}

/*
 * A present entry carries its last write's version. A missing one carries
 * its deletion's, or, after a full load, the sequence the load read
 * (all it knows is that the entry was gone by then): never less.
 */
static void expect_version(const char *id, const meshsync_value_t *v,
                           uint64_t version)
{
    bool missing = strcmp(v->data, "null") == 0;

    if (v->version == version || (missing && v->version > version))
        return;
    fail_msg("%s: version %" PRIu64 ", want %" PRIu64 " (value %s)", id,
             v->version, version, v->data);
}

/* Every entry read through ms, not stale, equals Redis and the model. */
static void expect_equal_redis(world_t *w, meshsync_t *ms)
{
    char id[32];

    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < ENTRIES; i++) {
            char *redis = redis_value(w, (kind_t)k, i);
            meshsync_value_t v;

            entry_id((kind_t)k, i, id, sizeof(id));
            assert_json(redis ? redis : "null", w->model[k][i], id);
            read_entry(ms, (kind_t)k, i, 0, &v);
            assert_json(v.data, w->model[k][i], id);
            if (v.stale)
                fail_msg("%s: stale after catching up", id);
            expect_version(id, &v, w->version[k][i]);
            meshsync_value_free(&v);
            free(redis);
        }
    }
}

/* --- health and the log ----------------------------------------------- */

static void expect_report(const json_t *report, const char *state, bool failing)
{
    const char *got = json_string_value(json_object_get(report, "state"));
    json_t *ready = json_object_get(report, "ready");
    json_t *cache_failing = json_object_get(report, "cacheFailing");
    char *text = json_dumps(report, JSON_COMPACT);

    if (got == NULL || strcmp(got, state) != 0 || !json_is_boolean(ready) ||
        json_is_true(ready) != (strcmp(state, "live") == 0) ||
        !json_is_boolean(cache_failing) ||
        json_is_true(cache_failing) != failing)
        fail_msg("health %s, want state %s and cacheFailing %s", text, state,
                 failing ? "true" : "false");
    free(text);
}

static void expect_health(meshsync_t *ms, const char *state, bool failing)
{
    json_t *report = harness_health(ms);

    expect_report(report, state, failing);
    json_decref(report);
}

/* `meshsync health` on d: checks its exit status and its report. */
static void expect_cli_health(const harness_daemon_t *d, int status,
                              const char *state, bool failing)
{
    const char *args[] = {"--socket", d->socket, "health", NULL};
    harness_run_t r;
    json_t *report;

    harness_cli_run(args, NULL, NULL, 0, &r);
    if (r.status != status)
        fail_msg("meshsync health: status %d, want %d; stdout '%s', stderr "
                 "'%s'",
                 r.status, status, r.out, r.err);
    report = json_loads(r.out, 0, NULL);
    if (report == NULL)
        fail_msg("meshsync health printed '%s'", r.out);
    expect_report(report, state, failing);
    json_decref(report);
    harness_run_free(&r);
}

/* cmocka cuts long messages short: the log goes to stderr whole. */
static void expect_log(harness_daemon_t *d, const char *needle)
{
    if (harness_daemon_wait_log(d, needle, WAIT_MS))
        return;
    fprintf(stderr, "meshsyncd's log:\n%s", harness_daemon_log(d));
    fail_msg("no '%s' in meshsyncd's log", needle);
}

/* Lines of d's log so far that hold needle. */
static int count_lines(harness_daemon_t *d, const char *needle)
{
    const char *p = harness_daemon_log(d);
    int n = 0;

    while ((p = strstr(p, needle)) != NULL) {
        n++;
        p = strchr(p, '\n');
        if (p == NULL)
            break;
    }
    return n;
}

/* --- the cache file --------------------------------------------------- */

/* Checks one row of the entries table against the model; true if ours. */
static bool file_row(world_t *w, int kind, const char *id, const char *json)
{
    char want_id[32], what[64];
    int i;

    if ((kind != CONN && kind != ROOM) ||
        sscanf(id, kind == ROOM ? "room-%d" : "conn-%d", &i) != 1 || i < 0 ||
        i >= ENTRIES)
        return false;
    entry_id((kind_t)kind, i, want_id, sizeof(want_id));
    if (strcmp(id, want_id) != 0)
        return false;
    snprintf(what, sizeof(what), "cache file, %s", id);
    assert_json(json ? json : "null", w->model[kind][i], what);
    return true;
}

/*
 * Opens a stopped daemon's cache file and checks that every entry holds
 * what the model says (a tombstone, json NULL, for a deleted one).
 */
static void expect_file_equal(world_t *w, const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    int rows = 0, rc;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        fail_msg("open %s: %s", path, db ? sqlite3_errmsg(db) : "?");
    if (sqlite3_prepare_v2(db, "SELECT kind, id, json FROM entries", -1, &s,
                           NULL) != SQLITE_OK)
        fail_msg("%s: %s", path, sqlite3_errmsg(db));

    /* Bounded by the table, which the daemon no longer writes. */
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 1);
        const char *json = (const char *)sqlite3_column_text(s, 2);

        if (id != NULL && file_row(w, sqlite3_column_int(s, 0), id, json))
            rows++;
    }
    if (rc != SQLITE_DONE)
        fail_msg("%s: %s", path, sqlite3_errmsg(db));
    sqlite3_finalize(s);
    sqlite3_close(db);
    assert_int_equal(rows, 2 * ENTRIES);
}

/* True if the directory holds a cache file moved aside. */
static bool moved_aside(const harness_t *h)
{
    DIR *dir = opendir(harness_dir(h));
    struct dirent *e;
    bool found = false;

    assert_non_null(dir);
    while ((e = readdir(dir)) != NULL)
        found = found || strstr(e->d_name, ".corrupt-") != NULL;
    closedir(dir);
    return found;
}

/* --- 1. the disk fills while the sidecar runs ------------------------- */

/* A while its cache cannot be written: every answer as it was, stale. */
static void expect_serving_held(world_t *w, meshsync_t *ms)
{
    char id[32];

    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < ENTRIES; i++) {
            meshsync_value_t v;

            entry_id((kind_t)k, i, id, sizeof(id));
            read_entry(ms, (kind_t)k, i, 0, &v);
            if (strcmp(v.data, w->held[k][i]) != 0 || !v.stale || v.behind <= 0)
                fail_msg("%s: %s, stale %d, behind %" PRId64
                         "; want %s, stale, behind > 0",
                         id, v.data, v.stale, v.behind, w->held[k][i]);
            meshsync_value_free(&v);
        }
    }
}

/*
 * A's log: one "cache write failed" error for the whole run of failures,
 * and at least retries retries, all at debug level; no other error but
 * the cache's own first "cache operation failed".
 */
static void expect_one_error(harness_daemon_t *a, int retries)
{
    int failed = count_lines(a, FAILED_LINE);
    int errors = count_lines(a, "level=error");
    int op_errors =
        count_lines(a, "level=error msg=\"cache operation failed\"");
    int tried = count_lines(a, RETRY_LINE);

    if (failed != 1 || count_lines(a, "level=error " FAILED_LINE) != 1 ||
        tried < retries || count_lines(a, "level=debug " RETRY_LINE) != tried ||
        op_errors > 1 || errors != failed + op_errors) {
        fprintf(stderr, "meshsyncd's log:\n%s", harness_daemon_log(a));
        fail_msg("%d '%s' lines, %d retries, %d errors in all", failed,
                 FAILED_LINE, tried, errors);
    }
}

/*
 * Reads back A's last write through ms, which cannot be in its cache: the
 * wait for its version times out and the answer comes from Redis.
 */
static void expect_read_own_write(world_t *w, meshsync_t *ms)
{
    kind_t kind = w->last_kind;
    int i = w->last_i;
    meshsync_value_t v;
    char id[32];

    entry_id(kind, i, id, sizeof(id));
    read_entry_within(ms, kind, i, w->version[kind][i], SHORT_WAIT_MS, &v);
    assert_json(v.data, w->model[kind][i], id);
    if (v.stale)
        fail_msg("%s: stale, read from Redis", id);
    expect_version(id, &v, w->version[kind][i]);
    meshsync_value_free(&v);
}

/*
 * The body of the running tests: args go to both sidecars (A's debug log
 * level added), and decide how A catches up: from the change log, or with
 * a full load when the log was trimmed past its position.
 */
static void full_disk_while_running(world_t *w, const char *const *args)
{
    const char *a_args[8] = {"--log-level", "debug"};
    harness_daemon_t *a, *b;
    meshsync_t *ma, *ma2, *ma3, *mb;
    meshsync_value_t v;
    int64_t t0, took;
    rlim_t soft;

    for (size_t n = 0; args != NULL && args[n] != NULL && n < 5; n++)
        a_args[n + 2] = args[n];
    a = harness_daemon_start(w->h, "a", a_args, NULL);
    b = harness_daemon_start(w->h, "b", args, NULL);
    ma = client(w, a);
    ma2 = client(w, a);
    mb = client(w, b);
    write_all(w, ma, mb);
    workload(w, mb, "b", 20, 0);
    expect_caught_up(w, ma);
    expect_health(ma, "live", false);

    soft = fsize_lower(a->pid);
    workload(w, mb, "b", B_WRITES, 1000);
    expect_log(a, FAILED_LINE);

    /* The catch-up is tried again every second, quietly (debug). */
    for (int i = 0; i < RETRIES; i++)
        expect_log(a, RETRY_LINE);
    workload(w, ma, "a", A_WRITES, 2000);

    /* A answers from what it held, and says so; B does not mind. */
    HARNESS_CALL_OK(ma, meshsync_ping(ma));
    HARNESS_CALL_OK(ma2, meshsync_ping(ma2));
    expect_serving_held(w, ma);
    expect_read_own_write(w, ma);
    expect_health(ma, "catching_up", true);
    expect_cli_health(a, 1, "catching_up", true);
    expect_health(mb, "live", false);
    expect_one_error(a, RETRIES);

    /* Another client on A: reads, binds and writes as before. */
    read_entry(ma2, ROOM, 0, 0, &v);
    assert_string_equal(v.data, w->held[ROOM][0]);
    assert_true(v.stale);
    meshsync_value_free(&v);
    HARNESS_CALL_OK(ma2, meshsync_hello(ma2, "conn-1"));
    write_entry(w, ma2, CONN, 1, OP_MERGE, "a2", 1);
    ma3 = client(w, a);
    HARNESS_CALL_OK(ma3, meshsync_ping(ma3));

    /* Space returns. */
    t0 = harness_now_ms();
    fsize_set(a->pid, soft);
    expect_log(a, CAUGHT_LINE);
    took = harness_now_ms() - t0;
    print_message("A caught up %" PRId64 " ms after the limit went up\n", took);
    if (strstr(harness_daemon_log(a), WORKS_LINE) == NULL)
        fail_msg("no '%s' in A's log:\n%s", WORKS_LINE, harness_daemon_log(a));

    expect_health(ma, "live", false);
    expect_cli_health(a, 0, "live", false);
    expect_equal_redis(w, ma);
    expect_equal_redis(w, ma2);
    expect_one_error(a, RETRIES);

    harness_daemon_stop_clean(a);
    expect_file_equal(w, a->cache);
    harness_daemon_stop_clean(b);
}

static void test_full_disk_while_running(void **state)
{
    full_disk_while_running(*state, NULL);
}

/*
 * The change log keeps fewer changes than A misses: it loads everything,
 * and the retries of a load that cannot begin are as quiet.
 */
static void test_full_disk_log_trimmed(void **state)
{
    static const char *const args[] = {"--log-length", TRIMMED_LOG, NULL};

    full_disk_while_running(*state, args);
}

/* --- 2. the disk is full when the sidecar starts ---------------------- */

static void test_full_disk_at_start(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = harness_daemon_start(w->h, "a", NULL, NULL);
    harness_daemon_t *b = harness_daemon_start(w->h, "b", NULL, NULL);
    meshsync_t *ma = client(w, a), *mb = client(w, b);
    struct stat st;
    int status;

    write_all(w, ma, mb);
    expect_caught_up(w, ma);
    harness_daemon_stop_clean(a);
    workload(w, mb, "b", BACK_WRITES, 0);

    /* redis-server runs already and keeps its own limit. */
    assert_non_null(harness_redis(w->h));
    own_lower(w);
    a = harness_daemon_spawn(w->h, "a", NULL, NULL);
    own_restore(w);

    /* It cannot open its cache: it says so and exits 1, in time. */
    status = harness_daemon_signal(a, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 1)
        fail_msg("meshsyncd ended with status 0x%x; log:\n%s", (unsigned)status,
                 harness_daemon_log(a));
    if (count_lines(a, "level=error msg=\"cannot open cache\"") != 1 ||
        strstr(harness_daemon_log(a), "disk I/O error") == NULL)
        fail_msg("no clear error in meshsyncd's log:\n%s",
                 harness_daemon_log(a));
    harness_daemon_expect_log_clean(a);

    /* The file is only full, not damaged: it stays where it is. */
    assert_int_equal(stat(a->cache, &st), 0);
    assert_false(moved_aside(w->h));

    /* Space returns: the same file catches up from Redis. */
    a = harness_daemon_start(w->h, "a", NULL, NULL);
    ma = client(w, a);
    expect_equal_redis(w, ma);
    expect_health(ma, "live", false);
    harness_daemon_stop_clean(a);
    expect_file_equal(w, a->cache);
    harness_daemon_stop_clean(b);
}

/* --- 3. stopped while the disk is full ------------------------------- */

static void test_stop_while_full(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = harness_daemon_start(w->h, "a", NULL, NULL);
    harness_daemon_t *b = harness_daemon_start(w->h, "b", NULL, NULL);
    meshsync_t *ma = client(w, a), *mb = client(w, b);

    write_all(w, ma, mb);
    expect_caught_up(w, ma);
    fsize_lower(a->pid);
    workload(w, mb, "b", BACK_WRITES, 0);
    expect_log(a, FAILED_LINE);

    /* A clean stop, though nothing more reaches the file. */
    harness_daemon_stop_clean(a);
    expect_one_error(a, 0);

    /* Space returns: the same file catches up from Redis. */
    a = harness_daemon_start(w->h, "a", NULL, NULL);
    ma = client(w, a);
    expect_equal_redis(w, ma);
    expect_health(ma, "live", false);
    harness_daemon_stop_clean(a);
    expect_file_equal(w, a->cache);
    harness_daemon_stop_clean(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_full_disk_while_running, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_full_disk_log_trimmed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_full_disk_at_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stop_while_full, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
