/*
 * test_lifecycle.c - meshsyncd around its requests: starting before Redis
 * exists, a warm restart from the cache file while Redis changed, the
 * socket file (left by a crash, held by a live daemon, not a socket, its
 * mode, its missing directory), configuration by flags and environment
 * (passwords, --help, bad values), key prefixes, Redis databases, Redis
 * over TCP, hello rebinding, and merges that give up with `conflict`.
 *
 * Each test has its own directory, redis-server and daemons (harness.h).
 * Nothing sleeps: every wait is for a reply, a log line or an exit, and
 * every loop is bounded. Single-threaded.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "meshsync.h"

#define WAIT_MS  10000
#define REPLY_MS 10000

/* Test 9: merges streamed by two sidecars to one connection. */
#define MERGES      400
#define MERGE_CHUNK 50

#define MAX_CLIENTS 8
#define MAX_FDS     8
#define MAX_CTX     4
#define MAX_BARE    2
#define ARGV_MAX    32

typedef enum { CONN = 0, ROOM = 1 } kind_t;

/* One test's world; teardown frees all of it, also after a failure. */
typedef struct world_s {
    harness_t *h;
    meshsync_t *ms[MAX_CLIENTS];
    int nms;
    int fd[MAX_FDS];
    int nfd;
    redisContext *ctx[MAX_CTX];
    int nctx;
    harness_daemon_t *bare[MAX_BARE]; /* started by bare_spawn() */
    int nbare;
    msgpack_sbuffer sb;
    msgpack_packer pk;
} world_t;

/* --- the world -------------------------------------------------------- */

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));

    assert_non_null(w);
    w->h = harness_new();
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
    *state = w;
    return 0;
}

/* Most tests want redis-server running from the start. */
static int setup_redis(void **state)
{
    setup(state);
    harness_redis_start(((world_t *)*state)->h, NULL);
    return 0;
}

static void bare_free(harness_daemon_t *d)
{
    int status;

    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &status, 0);
    }
    if (d->err_fd >= 0)
        close(d->err_fd);
    free(d->log);
    free(d);
}

static int teardown(void **state)
{
    world_t *w = *state;

    for (int i = 0; i < w->nms; i++)
        meshsync_free(w->ms[i]);
    for (int i = 0; i < w->nfd; i++)
        close(w->fd[i]);
    for (int i = 0; i < w->nctx; i++)
        redisFree(w->ctx[i]);
    for (int i = 0; i < w->nbare; i++)
        bare_free(w->bare[i]);
    harness_free(w->h);
    msgpack_sbuffer_destroy(&w->sb);
    free(w);
    return 0;
}

static meshsync_t *client(world_t *w, const harness_daemon_t *d)
{
    assert_true(w->nms < MAX_CLIENTS);
    w->ms[w->nms] = harness_client_open(d);
    return w->ms[w->nms++];
}

static meshsync_t *client_at(world_t *w, const char *path)
{
    meshsync_t *ms = meshsync_connect(path);

    assert_non_null(ms);
    assert_true(w->nms < MAX_CLIENTS);
    w->ms[w->nms++] = ms;
    if (meshsync_errcode(ms) != NULL)
        fail_msg("connect %s: %s", path, meshsync_errmsg(ms));
    return ms;
}

static int raw_connect(world_t *w, const char *path)
{
    int fd = harness_unix_connect(path);

    if (fd < 0)
        fail_msg("connect %s: %s", path, strerror(errno));
    assert_true(w->nfd < MAX_FDS);
    w->fd[w->nfd++] = fd;
    return fd;
}

/* A context on h's redis-server that has SELECTed db. */
static redisContext *redis_db(world_t *w, int db)
{
    redisContext *c = harness_redis_connect(w->h);
    redisReply *rep;

    assert_true(w->nctx < MAX_CTX);
    w->ctx[w->nctx++] = c;
    rep = harness_command(c, "SELECT %d", db);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    return c;
}

/* "unix://<dir>/redis.sock<query>", also before redis-server runs. */
static void unix_url(const harness_t *h, const char *query, char *out,
                     size_t size)
{
    char sock[HARNESS_PATH_MAX];
    int n;

    harness_path(h, "redis.sock", sock, sizeof(sock));
    n = snprintf(out, size, "unix://%s%s", sock, query);
    assert_true(n > 0 && (size_t)n < size);
}

/* --- a daemon without the harness's --socket, --cache and --redis ----- */

static void child_exec(char **argv, const char *const *env, int out_fd)
{
    int null_fd = open("/dev/null", O_RDWR);

    if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(out_fd, 1) < 0 ||
        dup2(out_fd, 2) < 0)
        _exit(126);
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        putenv(strdup(env[i]));
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execv(MESHSYNCD_PATH, argv);
    _exit(127);
}

/*
 * Starts meshsyncd with exactly args and env entries added, for settings
 * that only the environment gives. socket is where it should listen
 * (harness_daemon_stop() checks that it removes it). The harness's wait
 * and stop helpers work on the result; teardown frees it.
 */
static harness_daemon_t *bare_spawn(world_t *w, const char *socket,
                                    const char *const *args,
                                    const char *const *env)
{
    harness_daemon_t *d = calloc(1, sizeof(*d));
    char *argv[ARGV_MAX] = {MESHSYNCD_PATH};
    size_t n = 1;
    int p[2];

    assert_non_null(d);
    d->err_fd = -1;
    assert_true(w->nbare < MAX_BARE);
    w->bare[w->nbare++] = d;
    for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
        assert_true(n + 1 < ARGV_MAX);
        argv[n++] = (char *)args[i];
    }
    argv[n] = NULL;
    d->h = w->h;
    snprintf(d->socket, sizeof(d->socket), "%s", socket);

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    d->pid = fork();
    if (d->pid == 0)
        child_exec(argv, env, p[1]);
    close(p[1]);
    assert_true(d->pid > 0);
    d->err_fd = p[0];
    fcntl(d->err_fd, F_SETFL, O_NONBLOCK);
    return d;
}

/* --- helpers ---------------------------------------------------------- */

static void expect_log(harness_daemon_t *d, const char *needle)
{
    if (!harness_daemon_wait_log(d, needle, WAIT_MS))
        fail_msg("no '%s' in meshsyncd's log:\n%s", needle,
                 harness_daemon_log(d));
}

/* Waits for a line holding both a and b (of the next few holding a). */
static void expect_log_line(harness_daemon_t *d, const char *a, const char *b)
{
    for (int i = 0; i < 8 && harness_daemon_wait_log(d, a, WAIT_MS); i++) {
        const char *log = d->log;
        size_t end = d->log_mark - 1, start = end;
        char *line;
        bool hit;

        while (start > 0 && log[start - 1] != '\n')
            start--;
        line = strndup(log + start, end - start);
        assert_non_null(line);
        hit = strstr(line, b) != NULL;
        free(line);
        if (hit)
            return;
    }
    fail_msg("no line with '%s' and '%s' in meshsyncd's log:\n%s", a, b,
             harness_daemon_log(d));
}

static void expect_not_in_log(harness_daemon_t *d, const char *needle)
{
    const char *log = harness_daemon_log(d);

    if (strstr(log, needle) != NULL)
        fail_msg("'%s' in meshsyncd's log:\n%s", needle, log);
}

/* Waits for a daemon that should end by itself; returns its exit code. */
static int expect_exit(harness_daemon_t *d)
{
    int status = harness_daemon_signal(d, 0);

    if (!WIFEXITED(status))
        fail_msg("meshsyncd ended with status 0x%x; log:\n%s", (unsigned)status,
                 harness_daemon_log(d));
    return WEXITSTATUS(status);
}

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
                         const char *json)
{
    uint64_t v = 0;

    if (kind == ROOM)
        HARNESS_CALL_OK(ms,
                        meshsync_room_set(ms, id, MESHSYNC_JSON, json,
                                          strlen(json), MESHSYNC_REPLACE, &v));
    else
        HARNESS_CALL_OK(ms,
                        meshsync_conn_set(ms, id, MESHSYNC_JSON, json,
                                          strlen(json), MESHSYNC_REPLACE, &v));
    assert_true(v > 0);
    return v;
}

/*
 * Reads an entry (after min, when not 0) and checks its JSON and stale
 * flag; returns its version.
 */
static uint64_t expect_get_min(meshsync_t *ms, kind_t kind, const char *id,
                               uint64_t min, const char *want, int stale)
{
    meshsync_value_t v;
    uint64_t version;

    if (kind == ROOM)
        HARNESS_CALL_OK(
            ms, meshsync_room_get_min(ms, id, min, WAIT_MS, MESHSYNC_JSON, &v));
    else
        HARNESS_CALL_OK(
            ms, meshsync_conn_get_min(ms, id, min, WAIT_MS, MESHSYNC_JSON, &v));
    assert_json(v.data, want);
    if (v.stale != stale)
        fail_msg("%s %s: stale %d, want %d", kind == ROOM ? "room" : "conn", id,
                 v.stale, stale);
    version = v.version;
    meshsync_value_free(&v);
    return version;
}

static uint64_t expect_get(meshsync_t *ms, kind_t kind, const char *id,
                           const char *want, int stale)
{
    return expect_get_min(ms, kind, id, 0, want, stale);
}

/* HGET on any context: a copy of the string, or NULL for nil. */
static char *hget(redisContext *c, const char *key, const char *field)
{
    redisReply *rep = harness_command(c, "HGET %s %s", key, field);
    char *s = NULL;

    if (rep->type == REDIS_REPLY_STRING) {
        s = strdup(rep->str);
        assert_non_null(s);
    } else if (rep->type != REDIS_REPLY_NIL) {
        fail_msg("HGET %s %s: reply type %d", key, field, rep->type);
    }
    freeReplyObject(rep);
    return s;
}

/* Fails unless key's field holds want (NULL: nothing). */
static void expect_hget(redisContext *c, const char *key, const char *field,
                        const char *want)
{
    char *got = hget(c, key, field);

    if (want == NULL && got != NULL)
        fail_msg("%s %s holds %s, want nothing", key, field, got);
    if (want != NULL && got == NULL)
        fail_msg("%s %s holds nothing, want %s", key, field, want);
    if (want != NULL)
        assert_json(got, want);
    free(got);
}

static long long count_keys(redisContext *c, const char *pattern)
{
    redisReply *rep = harness_command(c, "KEYS %s", pattern);
    long long n;

    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    n = (long long)rep->elements;
    freeReplyObject(rep);
    return n;
}

static void expect_mode(const char *path, mode_t mode)
{
    struct stat st;

    if (stat(path, &st) != 0)
        fail_msg("stat %s: %s", path, strerror(errno));
    assert_true(S_ISSOCK(st.st_mode));
    if ((st.st_mode & 07777) != mode)
        fail_msg("%s has mode %04o, want %04o", path,
                 (unsigned)(st.st_mode & 07777), (unsigned)mode);
}

static void expect_absent(const char *path)
{
    struct stat st;

    if (lstat(path, &st) == 0 || errno != ENOENT)
        fail_msg("%s exists", path);
}

/* --- 1. started before Redis ------------------------------------------ */

static void test_start_before_redis(void **state)
{
    world_t *w = *state;
    char url[HARNESS_PATH_MAX + 16];
    harness_daemon_t *d;
    meshsync_t *ms;
    int64_t t0;
    uint64_t v;

    unix_url(w->h, "", url, sizeof(url));
    d = harness_daemon_spawn(w->h, "a", (const char *[]){"--redis", url, NULL},
                             NULL);
    expect_log(d, "msg=\"listening\"");
    ms = client(w, d);
    HARNESS_CALL_OK(ms, meshsync_ping(ms));

    /* An empty cache answers, and says that it may be behind. */
    assert_int_equal(expect_get(ms, ROOM, "lobby", "null", 1), 0);
    assert_int_equal(expect_get(ms, CONN, "c1", "null", 1), 0);

    /* Writes are refused at once, not queued. */
    t0 = harness_now_ms();
    assert_int_equal(meshsync_room_set(ms, "lobby", MESHSYNC_JSON, "1", 1,
                                       MESHSYNC_REPLACE, &v),
                     -1);
    assert_string_equal(meshsync_errcode(ms), "unavailable");
    assert_int_equal(meshsync_conn_close(ms, "c1", &v), -1);
    assert_string_equal(meshsync_errcode(ms), "unavailable");
    if (harness_now_ms() - t0 > 1000)
        fail_msg("refusing two writes took %" PRId64 " ms",
                 harness_now_ms() - t0);
    expect_not_in_log(d, "msg=\"ready\"");

    harness_redis_start(w->h, NULL);
    expect_log(d, "msg=\"ready\"");
    v = set_json(ms, ROOM, "lobby", "{\"topic\":\"up\"}");
    assert_int_equal(expect_get(ms, ROOM, "lobby", "{\"topic\":\"up\"}", 0), v);
    assert_int_equal(expect_get(ms, CONN, "c1", "null", 0), 0);
    expect_hget(harness_redis(w->h), "mesh:roommeta:lobby", "data",
                "{\"topic\":\"up\"}");
    harness_daemon_stop_clean(d);
}

/* --- 2. warm restart -------------------------------------------------- */

typedef struct entry_s {
    kind_t kind;
    const char *id;
    const char *before; /* written by A before it stops */
    const char *after;  /* what Redis holds when A comes back ("null") */
} entry_t;

static const entry_t warm[] = {
    {ROOM, "keep", "{\"k\":1}", "{\"k\":1}"},
    {ROOM, "mesh-set", "{\"v\":1}", "{\"v\":2,\"by\":\"mesh\"}"},
    {ROOM, "mesh-del", "{\"v\":1}", "null"},
    {ROOM, "side-set", "{\"s\":1}", "{\"s\":2}"},
    {ROOM, "side-del", "{\"s\":1}", "null"},
    {CONN, "c-keep", "{\"u\":1}", "{\"u\":1}"},
    {CONN, "c-mesh-set", "{\"u\":1}", "{\"u\":2}"},
    {CONN, "c-mesh-del", "{\"u\":1}", "null"},
    {CONN, "c-side-set", "{\"u\":1}", "{\"u\":3}"},
    {CONN, "c-side-del", "{\"u\":1}", "null"},
};

#define N_WARM (sizeof(warm) / sizeof(warm[0]))

/* What a Mesh server does: Mesh's keys only, no version, no message. */
static void mesh_write(redisContext *c, const entry_t *e)
{
    bool del = strcmp(e->after, "null") == 0;
    redisReply *rep;

    if (e->kind == ROOM && del)
        rep = harness_command(c, "HDEL mesh:roommeta:%s data", e->id);
    else if (e->kind == ROOM)
        rep = harness_command(c, "HSET mesh:roommeta:%s data %s", e->id,
                              e->after);
    else if (del)
        rep = harness_command(c, "HDEL mesh:connection-meta %s", e->id);
    else
        rep = harness_command(c, "HSET mesh:connection-meta %s %s", e->id,
                              e->after);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->integer, del ? 1 : 0);
    freeReplyObject(rep);
}

/* The same change through another sidecar. */
static void side_write(meshsync_t *ms, const entry_t *e)
{
    uint64_t v;

    if (strcmp(e->after, "null") != 0)
        set_json(ms, e->kind, e->id, e->after);
    else if (e->kind == ROOM)
        HARNESS_CALL_OK(ms, meshsync_room_delete(ms, e->id, &v));
    else
        HARNESS_CALL_OK(ms, meshsync_conn_close(ms, e->id, &v));
}

/* Changes Redis behind A's back: by hand, and through sidecar B. */
static void change_behind(world_t *w)
{
    harness_daemon_t *b = harness_daemon_start(w->h, "b", NULL, NULL);
    meshsync_t *mb = client(w, b);

    for (size_t i = 0; i < N_WARM; i++) {
        if (strstr(warm[i].id, "mesh-") != NULL)
            mesh_write(harness_redis(w->h), &warm[i]);
        else if (strstr(warm[i].id, "side-") != NULL)
            side_write(mb, &warm[i]);
    }
    harness_daemon_stop_clean(b);
}

static void test_warm_restart(void **state)
{
    world_t *w = *state;
    char url[HARNESS_PATH_MAX + 16];
    uint64_t version[N_WARM];
    harness_daemon_t *a = harness_daemon_start(w->h, "a", NULL, NULL);
    meshsync_t *ms = client(w, a);
    redisReply *rep;
    long long seq;

    for (size_t i = 0; i < N_WARM; i++)
        version[i] = set_json(ms, warm[i].kind, warm[i].id, warm[i].before);
    harness_daemon_stop_clean(a);
    change_behind(w);

    /* Kept on disk, so that Redis comes back with these changes. */
    seq = harness_redis_int(harness_redis(w->h), "GET mesh:meshsync:seq");
    rep = harness_command(harness_redis(w->h), "SAVE");
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    harness_redis_stop(w->h);

    /* The same cache file, Redis away: the old values, marked stale. */
    unix_url(w->h, "", url, sizeof(url));
    a = harness_daemon_spawn(w->h, "a", (const char *[]){"--redis", url, NULL},
                             NULL);
    expect_log(a, "msg=\"listening\"");
    ms = client(w, a);
    for (size_t i = 0; i < N_WARM; i++)
        assert_int_equal(
            expect_get(ms, warm[i].kind, warm[i].id, warm[i].before, 1),
            version[i]);

    harness_redis_start(w->h, NULL);
    assert_int_equal(
        harness_redis_int(harness_redis(w->h), "GET mesh:meshsync:seq"), seq);
    expect_log(a, "msg=\"ready\"");
    for (size_t i = 0; i < N_WARM; i++)
        expect_get(ms, warm[i].kind, warm[i].id, warm[i].after, 0);
    expect_not_in_log(a, "went back");
    harness_daemon_stop_clean(a);
}

/* --- 3. the socket file ----------------------------------------------- */

static void test_socket_stale(void **state)
{
    world_t *w = *state;
    harness_daemon_t *d = harness_daemon_start(w->h, "s", NULL, NULL);
    struct stat st;
    meshsync_t *ms;

    harness_daemon_kill(d);
    assert_int_equal(lstat(d->socket, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));

    d = harness_daemon_start(w->h, "s", NULL, NULL);
    assert_non_null(strstr(harness_daemon_log(d), "removing stale socket"));
    expect_not_in_log(d, "level=error");
    ms = client(w, d);
    HARNESS_CALL_OK(ms, meshsync_ping(ms));
    set_json(ms, ROOM, "r", "1");
    harness_daemon_stop_clean(d);
}

static void test_socket_live(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = harness_daemon_start(w->h, "a", NULL, NULL);
    meshsync_t *before = client(w, a);
    harness_daemon_t *b;
    meshsync_t *after;

    HARNESS_CALL_OK(before, meshsync_ping(before));
    b = harness_daemon_spawn(
        w->h, "b", (const char *[]){"--socket", a->socket, NULL}, NULL);
    if (expect_exit(b) != 1)
        fail_msg("a second daemon on a live socket exited %d; log:\n%s",
                 WEXITSTATUS(b->status), harness_daemon_log(b));
    expect_log(b, "another daemon is listening");

    /* The first one still serves its clients and new ones. */
    HARNESS_CALL_OK(before, meshsync_ping(before));
    after = client(w, a);
    set_json(after, ROOM, "r", "1");
    expect_get(before, ROOM, "r", "1", 0);
    expect_mode(a->socket, 0660);
    harness_daemon_stop_clean(a);
}

/*
 * A cache file that is not SQLite is moved aside (kept for a look) and
 * the cache rebuilt from Redis; a second daemon on a cache file in use
 * refuses to start.
 */
static void test_cache_file_garbage(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = harness_daemon_start(w->h, "a", NULL, NULL);
    char path[HARNESS_PATH_MAX], moved[HARNESS_PATH_MAX + 32];
    const char *log;
    meshsync_t *ms;
    FILE *f;

    set_json(client(w, a), ROOM, "kept", "{\"in\":\"redis\"}");
    harness_daemon_stop_clean(a);

    harness_path(w->h, "a.db", path, sizeof(path));
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("this is not a database, and it is long enough to be noticed "
          "by SQLite as such when it reads the header of the file.\n",
          f);
    fclose(f);

    /* Started means ready: the move came before, so read the whole log. */
    a = harness_daemon_start(w->h, "a", NULL, NULL);
    log = harness_daemon_log(a);
    if (strstr(log, "moved aside") == NULL)
        fail_msg("no 'moved aside' in meshsyncd's log:\n%s", log);
    {
        const char *p = strstr(log, "moved_to=\"");
        size_t n;

        assert_non_null(p);
        p += strlen("moved_to=\"");
        n = strcspn(p, "\"");
        assert_true(n < sizeof(moved));
        memcpy(moved, p, n);
        moved[n] = '\0';
    }
    f = fopen(moved, "r");
    assert_non_null(f);
    fclose(f);

    ms = client(w, a);
    expect_get(ms, ROOM, "kept", "{\"in\":\"redis\"}", 0);
    harness_daemon_stop_clean(a);
}


static void test_cache_file_in_use(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = harness_daemon_start(w->h, "a", NULL, NULL);
    char path[HARNESS_PATH_MAX];
    meshsync_t *ms = client(w, a);
    harness_daemon_t *b;

    harness_path(w->h, "a.db", path, sizeof(path));
    b = harness_daemon_spawn(w->h, "b", (const char *[]){"--cache", path, NULL},
                             NULL);
    if (expect_exit(b) != 1)
        fail_msg("a second daemon on a cache file in use exited %d; log:\n%s",
                 WEXITSTATUS(b->status), harness_daemon_log(b));
    expect_log(b, "in use by another meshsyncd");
    HARNESS_CALL_OK(ms, meshsync_ping(ms));
    harness_daemon_stop_clean(a);
}


static void test_socket_not_a_socket(void **state)
{
    world_t *w = *state;
    static const char text[] = "not a socket\n";
    char path[HARNESS_PATH_MAX], buf[64];
    harness_daemon_t *d;
    struct stat st;
    ssize_t n;
    int fd;

    harness_path(w->h, "f.sock", path, sizeof(path));
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof(text) - 1), sizeof(text) - 1);
    close(fd);

    d = harness_daemon_spawn(w->h, "f", NULL, NULL);
    assert_string_equal(d->socket, path);
    assert_int_equal(expect_exit(d), 1);
    expect_log(d, "is not a socket");

    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0644);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    n = read(fd, buf, sizeof(buf));
    close(fd);
    assert_int_equal(n, sizeof(text) - 1);
    assert_memory_equal(buf, text, sizeof(text) - 1);
}

static void test_socket_mode_and_dir(void **state)
{
    world_t *w = *state;
    char dir[HARNESS_PATH_MAX], path[HARNESS_PATH_MAX];
    harness_daemon_t *a, *b;
    struct stat st;
    meshsync_t *ms;

    a = harness_daemon_start(
        w->h, "a", (const char *[]){"--socket-mode", "0600", NULL}, NULL);
    expect_mode(a->socket, 0600);
    ms = client(w, a);
    HARNESS_CALL_OK(ms, meshsync_ping(ms));

    /* A directory that is not there yet. */
    harness_path(w->h, "run", dir, sizeof(dir));
    harness_path(w->h, "run/meshsync.sock", path, sizeof(path));
    expect_absent(dir);
    b = harness_daemon_start(w->h, "b",
                             (const char *[]){"--socket", path, NULL}, NULL);
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    expect_mode(path, 0660);
    ms = client_at(w, path);
    set_json(ms, CONN, "c", "{\"in\":\"dir\"}");
    expect_get(ms, CONN, "c", "{\"in\":\"dir\"}", 0);

    harness_daemon_stop_clean(b);
    expect_absent(path);
    harness_daemon_stop_clean(a);
}

/* --- 4. configuration ------------------------------------------------- */

/* A raw room.get of a room name n bytes long: ok (code NULL) or code. */
static void expect_room_id_len(world_t *w, int fd, size_t n, const char *code)
{
    char id[64];
    harness_reply_t r;
    const msgpack_object *c;

    assert_true(n < sizeof(id));
    memset(id, 'i', n);
    id[n] = '\0';
    harness_request_begin(&w->pk, &w->sb, n, "room.get", 1);
    harness_pack_str(&w->pk, "room");
    harness_pack_str(&w->pk, id);
    harness_request_send(fd, &w->sb);
    harness_reply_recv(fd, REPLY_MS, &r);
    assert_int_equal(harness_reply_id(&r.u.data), n);
    c = harness_reply_error_code(&r.u.data);
    if (code == NULL && c != NULL)
        fail_msg("a %zu-byte id failed with %.*s", n, (int)c->via.str.size,
                 c->via.str.ptr);
    if (code != NULL && !harness_obj_is_str(c, code))
        fail_msg("a %zu-byte id: want %s", n, code);
    harness_reply_free(&r);
}

/* room.set of json through ms fails with code. */
static void expect_set_fails(meshsync_t *ms, const char *json, const char *code)
{
    assert_int_equal(meshsync_room_set(ms, "r", MESHSYNC_JSON, json,
                                       strlen(json), MESHSYNC_REPLACE, NULL),
                     -1);
    assert_string_equal(meshsync_errcode(ms), code);
}

/* A frame longer than limit: too_large, nil id, and the connection ends. */
static void expect_frame_refused(world_t *w, int fd, size_t limit)
{
    char *pad = malloc(limit);
    const msgpack_object *id;
    harness_reply_t r;

    assert_non_null(pad);
    memset(pad, 'p', limit);
    harness_request_begin(&w->pk, &w->sb, 1, "ping", 1);
    harness_pack_str(&w->pk, "pad");
    msgpack_pack_str(&w->pk, limit);
    msgpack_pack_str_body(&w->pk, pad, limit);
    free(pad);

    /* The daemon may hang up before the whole body is sent. */
    (void)harness_frame_send(fd, w->sb.data, w->sb.size);
    harness_reply_recv(fd, REPLY_MS, &r);
    assert_true(
        harness_obj_is_str(harness_reply_error_code(&r.u.data), "too_large"));
    id = harness_map_get(&r.u.data, "id");
    assert_non_null(id);
    assert_int_equal(id->type, MSGPACK_OBJECT_NIL);
    harness_reply_free(&r);
    assert_true(harness_wait_closed(fd, REPLY_MS));
}

/* Every setting from MESHSYNC_* alone: no flags at all. */
static void test_config_env(void **state)
{
    world_t *w = *state;
    char sock[HARNESS_PATH_MAX], cache[HARNESS_PATH_MAX];
    char env_sock[HARNESS_PATH_MAX + 32], env_cache[HARNESS_PATH_MAX + 32];
    char env_redis[HARNESS_PATH_MAX + 64], url[HARNESS_PATH_MAX + 16];
    const char *env[] = {env_sock,
                         env_cache,
                         env_redis,
                         "MESHSYNC_PREFIX=envp",
                         "MESHSYNC_INSTANCE_ID=env-instance",
                         "MESHSYNC_LOG_LEVEL=debug",
                         "MESHSYNC_SOCKET_MODE=0640",
                         "MESHSYNC_MAX_ID_BYTES=8",
                         "MESHSYNC_MAX_VALUE_BYTES=100",
                         "MESHSYNC_MAX_FRAME_BYTES=4096",
                         "MESHSYNC_MAX_DEPTH=3",
                         "MESHSYNC_MERGE_RETRIES=5",
                         "MESHSYNC_REDIS_TIMEOUT_MS=2000",
                         NULL};
    char big[128];
    harness_daemon_t *d;
    meshsync_t *ms;
    uint64_t v;
    int fd;

    harness_path(w->h, "env.sock", sock, sizeof(sock));
    harness_path(w->h, "env.db", cache, sizeof(cache));
    unix_url(w->h, "", url, sizeof(url));
    snprintf(env_sock, sizeof(env_sock), "MESHSYNC_SOCKET=%s", sock);
    snprintf(env_cache, sizeof(env_cache), "MESHSYNC_CACHE=%s", cache);
    snprintf(env_redis, sizeof(env_redis), "MESHSYNC_REDIS=%s", url);
    d = bare_spawn(w, sock, NULL, env);
    expect_log(d, "msg=\"ready\"");
    expect_not_in_log(d, "level=warn");

    expect_mode(sock, 0640);
    assert_int_equal(access(cache, F_OK), 0);
    assert_non_null(strstr(harness_daemon_log(d), "instance=\"env-instance\""));
    assert_non_null(strstr(harness_daemon_log(d), "prefix=\"envp\""));

    ms = client_at(w, sock);
    expect_log(d, "msg=\"client connected\"");
    v = set_json(ms, ROOM, "r", "[[[1]]]");
    assert_int_equal(v, 1);
    expect_hget(harness_redis(w->h), "envp:roommeta:r", "data", "[[[1]]]");
    assert_int_equal(count_keys(harness_redis(w->h), "mesh:*"), 0);

    /* The limits the environment set. */
    expect_set_fails(ms, "[[[[1]]]]", "too_large");
    memset(big, 'x', sizeof(big));
    big[0] = '"';
    big[sizeof(big) - 2] = '"';
    big[sizeof(big) - 1] = '\0';
    expect_set_fails(ms, big, "too_large");
    fd = raw_connect(w, sock);
    expect_room_id_len(w, fd, 8, NULL);
    expect_room_id_len(w, fd, 9, "too_large");
    expect_frame_refused(w, fd, 4096);

    harness_daemon_stop_clean(d);
    expect_absent(sock);
}

/* Each flag given together with its variable: the flag wins. */
static void test_config_flag_wins(void **state)
{
    world_t *w = *state;
    char env_sock[HARNESS_PATH_MAX + 32], env_cache[HARNESS_PATH_MAX + 32];
    char env_redis[HARNESS_PATH_MAX + 64];
    char sock[HARNESS_PATH_MAX], cache[HARNESS_PATH_MAX];
    const char *env[] = {env_sock,
                         env_cache,
                         env_redis,
                         "MESHSYNC_PREFIX=envp",
                         "MESHSYNC_INSTANCE_ID=env-instance",
                         "MESHSYNC_LOG_LEVEL=debug",
                         "MESHSYNC_SOCKET_MODE=0640",
                         "MESHSYNC_MAX_ID_BYTES=8",
                         NULL};
    const char *args[] = {"--prefix",
                          "flagp",
                          "--instance-id",
                          "flag-instance",
                          "--log-level",
                          "info",
                          "--socket-mode",
                          "0600",
                          "--max-id-bytes",
                          "16",
                          NULL};
    harness_daemon_t *d;
    meshsync_t *ms;
    int fd;

    /* The harness gives --socket, --cache and --redis as flags. */
    harness_path(w->h, "env.sock", sock, sizeof(sock));
    harness_path(w->h, "env.db", cache, sizeof(cache));
    snprintf(env_sock, sizeof(env_sock), "MESHSYNC_SOCKET=%s", sock);
    snprintf(env_cache, sizeof(env_cache), "MESHSYNC_CACHE=%s", cache);
    snprintf(env_redis, sizeof(env_redis),
             "MESHSYNC_REDIS=unix://%s/nowhere.sock", harness_dir(w->h));
    d = harness_daemon_start(w->h, "a", args, env);

    expect_absent(sock);
    expect_absent(cache);
    assert_int_equal(access(d->cache, F_OK), 0);
    expect_mode(d->socket, 0600);
    assert_non_null(
        strstr(harness_daemon_log(d), "instance=\"flag-instance\""));
    ms = client(w, d);
    set_json(ms, ROOM, "r", "{\"by\":\"flag\"}");
    expect_hget(harness_redis(w->h), "flagp:roommeta:r", "data",
                "{\"by\":\"flag\"}");
    assert_int_equal(count_keys(harness_redis(w->h), "envp:*"), 0);
    fd = raw_connect(w, d->socket);
    expect_room_id_len(w, fd, 16, NULL);
    expect_room_id_len(w, fd, 17, "too_large");
    expect_not_in_log(d, "level=debug");
    harness_daemon_stop_clean(d);
}

#define PASSWORD "pw-Secr3t-4711"
#define WRONG_PW "pw-Wr0ng-0815"

static void expect_password_not_logged(harness_daemon_t *d)
{
    expect_not_in_log(d, PASSWORD);
    expect_not_in_log(d, WRONG_PW);
}

/* A daemon that reaches Redis but is refused: it says why, stays unready. */
static void expect_refused(world_t *w, harness_daemon_t *d, const char *why)
{
    meshsync_t *ms;

    expect_log_line(d, "msg=\"redis connect failed\"", why);
    ms = client(w, d);
    HARNESS_CALL_OK(ms, meshsync_ping(ms));
    assert_int_equal(meshsync_room_set(ms, "r", MESHSYNC_JSON, "1", 1,
                                       MESHSYNC_REPLACE, NULL),
                     -1);
    assert_string_equal(meshsync_errcode(ms), "unavailable");
    expect_get(ms, ROOM, "r", "null", 1);
    expect_not_in_log(d, "msg=\"ready\"");
    expect_password_not_logged(d);
    harness_daemon_stop_clean(d);
}

static void test_config_password(void **state)
{
    world_t *w = *state;
    static const char *const requirepass[] = {"--requirepass", PASSWORD, NULL};
    char file[HARNESS_PATH_MAX];
    harness_daemon_t *d[3];
    redisContext *c = harness_redis_start(w->h, requirepass);
    redisReply *rep;
    meshsync_t *ms[3];
    uint64_t v;
    FILE *f;

    rep = harness_command(c, "AUTH %s", PASSWORD);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    harness_path(w->h, "password", file, sizeof(file));
    f = fopen(file, "w");
    assert_non_null(f);
    fputs(PASSWORD "\n", f);
    fclose(f);

    /* From a file, from the environment, and the file winning. */
    d[0] = harness_daemon_start(
        w->h, "file", (const char *[]){"--redis-password-file", file, NULL},
        NULL);
    d[1] = harness_daemon_start(
        w->h, "env", NULL,
        (const char *[]){"MESHSYNC_REDIS_PASSWORD=" PASSWORD, NULL});
    d[2] = harness_daemon_start(
        w->h, "both", (const char *[]){"--redis-password-file", file, NULL},
        (const char *[]){"MESHSYNC_REDIS_PASSWORD=" WRONG_PW, NULL});
    for (int i = 0; i < 3; i++)
        ms[i] = client(w, d[i]);
    v = set_json(ms[0], ROOM, "r", "{\"n\":0}");
    expect_hget(c, "mesh:roommeta:r", "data", "{\"n\":0}");
    expect_get_min(ms[1], ROOM, "r", v, "{\"n\":0}", 0);
    v = set_json(ms[1], ROOM, "r", "{\"n\":1}");
    expect_get_min(ms[2], ROOM, "r", v, "{\"n\":1}", 0);
    v = set_json(ms[2], ROOM, "r", "{\"n\":2}");
    expect_get_min(ms[0], ROOM, "r", v, "{\"n\":2}", 0);
    for (int i = 0; i < 3; i++) {
        expect_password_not_logged(d[i]);
        harness_daemon_stop_clean(d[i]);
    }

    /* A wrong password, and none. */
    expect_refused(
        w,
        harness_daemon_spawn(
            w->h, "wrong", NULL,
            (const char *[]){"MESHSYNC_REDIS_PASSWORD=" WRONG_PW, NULL}),
        "WRONGPASS");
    expect_refused(w, harness_daemon_spawn(w->h, "none", NULL, NULL), "NOAUTH");
}

/* The README's table of flags: its lines "| `--flag ...` | `ENV` | ...". */
static size_t readme_flags(char flags[][64], char envs[][64], size_t max)
{
    const char *src = __FILE__;
    const char *cut = strstr(src, "tests/integration/");
    char path[4096], line[1024];
    size_t n = 0;
    FILE *f;

    if (src[0] != '/' || cut == NULL)
        fail_msg("cannot find README.md from %s", src);
    snprintf(path, sizeof(path), "%.*sREADME.md", (int)(cut - src), src);
    f = fopen(path, "r");
    if (f == NULL)
        fail_msg("%s: %s", path, strerror(errno));
    for (int i = 0; i < 10000 && fgets(line, sizeof(line), f) != NULL; i++) {
        const char *env = strstr(line, "| `MESHSYNC_");

        if (strncmp(line, "| `--", 5) != 0 || n == max)
            continue;
        sscanf(line + 3, "%63[^ `]", flags[n]);
        envs[n][0] = '\0';
        if (env != NULL)
            sscanf(env + 3, "%63[A-Z_]", envs[n]);
        n++;
    }
    fclose(f);
    return n;
}

/*
 * Runs meshsyncd with args after private --socket, --cache and --redis,
 * so that a run that should stop at once never reaches for the defaults.
 */
static void run_daemon(world_t *w, const char *const *args,
                       const char *const *env, harness_run_t *r)
{
    char sock[HARNESS_PATH_MAX], cache[HARNESS_PATH_MAX];
    char url[HARNESS_PATH_MAX + 16];
    const char *argv[ARGV_MAX] = {"--socket", sock,      "--cache",
                                  cache,      "--redis", url};
    size_t n = 6;

    harness_path(w->h, "run.sock", sock, sizeof(sock));
    harness_path(w->h, "run.db", cache, sizeof(cache));
    unix_url(w->h, "", url, sizeof(url));
    for (size_t i = 0; args[i] != NULL; i++) {
        assert_true(n + 1 < ARGV_MAX);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    harness_run(MESHSYNCD_PATH, argv, env, NULL, 0, r);
    expect_absent(sock);
    expect_absent(cache);
}

static void test_config_help(void **state)
{
    world_t *w = *state;
    char flags[32][64], envs[32][64];
    size_t n = readme_flags(flags, envs, 32);
    harness_run_t r;

    /* The README's table has had 14 rows; it may grow, not shrink. */
    if (n < 14)
        fail_msg("README.md lists %zu flags", n);
    run_daemon(w, (const char *[]){"--help", NULL}, NULL, &r);
    assert_int_equal(r.status, 0);
    for (size_t i = 0; i < n; i++) {
        if (strstr(r.out, flags[i]) == NULL)
            fail_msg("--help does not mention %s:\n%s", flags[i], r.out);
        if (envs[i][0] != '\0' && strstr(r.out, envs[i]) == NULL)
            fail_msg("--help does not mention %s:\n%s", envs[i], r.out);
    }
    harness_run_free(&r);
}

static void expect_usage_error(world_t *w, const char *const *args,
                               const char *const *env, const char *says)
{
    harness_run_t r;

    run_daemon(w, args, env, &r);
    if (r.status != 2 || strstr(r.err, says) == NULL)
        fail_msg("meshsyncd %s %s: status %d, stderr '%s'; want 2 and '%s'",
                 args[0], args[1] ? args[1] : "", r.status, r.err, says);
    harness_run_free(&r);
}

static void test_config_bad_values(void **state)
{
    world_t *w = *state;

    expect_usage_error(w, (const char *[]){"--max-depth", "99", NULL}, NULL,
                       "--max-depth");
    expect_usage_error(w, (const char *[]){"--max-depth", "0", NULL}, NULL,
                       "--max-depth");
    expect_usage_error(w, (const char *[]){"--redis", "http://x", NULL}, NULL,
                       "--redis");
    expect_usage_error(w, (const char *[]){"--socket-mode", "999", NULL}, NULL,
                       "--socket-mode");
    expect_usage_error(w, (const char *[]){"--no-such-flag", NULL}, NULL,
                       "--no-such-flag");
    expect_usage_error(w, (const char *[]){"--merge-retries", "x", NULL}, NULL,
                       "--merge-retries");
    expect_usage_error(w, (const char *[]){"--history-check-ms", "-1", NULL},
                       NULL, "--history-check-ms");
    expect_usage_error(w, (const char *[]){NULL},
                       (const char *[]){"MESHSYNC_MAX_DEPTH=99", NULL},
                       "max-depth");
}

/* --- 5. prefixes ------------------------------------------------------ */

static void test_prefixes(void **state)
{
    world_t *w = *state;
    redisContext *c = harness_redis(w->h);
    harness_daemon_t *a, *a2, *b, *b2;
    meshsync_t *ma, *ma2, *mb, *mb2;
    uint64_t va, vb;

    a = harness_daemon_start(w->h, "a",
                             (const char *[]){"--prefix", "app1", NULL}, NULL);
    a2 = harness_daemon_start(w->h, "a2",
                              (const char *[]){"--prefix", "app1", NULL}, NULL);
    b = harness_daemon_start(w->h, "b",
                             (const char *[]){"--prefix", "app2", NULL}, NULL);
    ma = client(w, a);
    ma2 = client(w, a2);
    mb = client(w, b);

    set_json(ma, CONN, "c1", "{\"app\":1}");
    set_json(ma, ROOM, "r1", "{\"app\":1}");
    va = set_json(ma, ROOM, "only1", "{\"app\":1}");
    assert_int_equal(va, 3);
    expect_hget(c, "app1:connection-meta", "c1", "{\"app\":1}");
    expect_hget(c, "app1:roommeta:r1", "data", "{\"app\":1}");
    assert_int_equal(harness_redis_int(c, "GET app1:meshsync:seq"), 3);
    assert_int_equal(
        harness_redis_int(c, "HGET app1:meshsync:versions:room r1"), 2);
    assert_int_equal(count_keys(c, "mesh:*"), 0);

    /* Same prefix: seen. Another prefix: its own sequence and entries. */
    expect_get_min(ma2, ROOM, "only1", va, "{\"app\":1}", 0);
    vb = set_json(mb, CONN, "c1", "{\"app\":2}");
    assert_int_equal(vb, 1);
    set_json(mb, ROOM, "r1", "{\"app\":2}");
    expect_hget(c, "app2:connection-meta", "c1", "{\"app\":2}");
    expect_hget(c, "app2:roommeta:r1", "data", "{\"app\":2}");
    expect_hget(c, "app1:connection-meta", "c1", "{\"app\":1}");
    assert_int_equal(expect_get(mb, ROOM, "only1", "null", 0), 0);
    expect_get(mb, CONN, "c1", "{\"app\":2}", 0);
    expect_get(ma, CONN, "c1", "{\"app\":1}", 0);
    expect_get(ma2, ROOM, "r1", "{\"app\":1}", 0);

    /* A sidecar starting later loads its own prefix only. */
    b2 = harness_daemon_start(w->h, "b2",
                              (const char *[]){"--prefix", "app2", NULL}, NULL);
    mb2 = client(w, b2);
    assert_int_equal(expect_get(mb2, ROOM, "only1", "null", 0), 0);
    expect_get(mb2, ROOM, "r1", "{\"app\":2}", 0);
    expect_get(ma2, ROOM, "r1", "{\"app\":1}", 0);

    harness_daemon_stop_clean(b2);
    harness_daemon_stop_clean(b);
    harness_daemon_stop_clean(a2);
    harness_daemon_stop_clean(a);
}

/* --- 6. databases ----------------------------------------------------- */

static harness_daemon_t *start_on_db(world_t *w, const char *name, int db)
{
    char query[16], url[HARNESS_PATH_MAX + 32];

    snprintf(query, sizeof(query), "?db=%d", db);
    unix_url(w->h, query, url, sizeof(url));
    return harness_daemon_start(w->h, name,
                                (const char *[]){"--redis", url, NULL}, NULL);
}

static void test_databases(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = start_on_db(w, "a", 1);
    harness_daemon_t *a2 = start_on_db(w, "a2", 1);
    harness_daemon_t *b = start_on_db(w, "b", 2);
    meshsync_t *ma = client(w, a), *ma2 = client(w, a2), *mb = client(w, b);
    redisContext *c1 = redis_db(w, 1), *c2 = redis_db(w, 2);
    char json[32];
    uint64_t va = 0, vb = 0;

    /* Interleaved: each database's sequence hands out the same numbers. */
    for (int i = 0; i < 5; i++) {
        snprintf(json, sizeof(json), "{\"db\":1,\"i\":%d}", i);
        va = set_json(ma, ROOM, "shared", json);
        set_json(ma, CONN, "only-1", json);
        snprintf(json, sizeof(json), "{\"db\":2,\"i\":%d}", i);
        vb = set_json(mb, ROOM, "shared", json);
        assert_int_equal(vb, va / 2 + 1);
    }
    expect_get_min(ma2, ROOM, "shared", va, "{\"db\":1,\"i\":4}", 0);
    expect_get_min(ma2, CONN, "only-1", va + 1, "{\"db\":1,\"i\":4}", 0);

    expect_get(ma, ROOM, "shared", "{\"db\":1,\"i\":4}", 0);
    expect_get(mb, ROOM, "shared", "{\"db\":2,\"i\":4}", 0);
    assert_int_equal(expect_get(mb, CONN, "only-1", "null", 0), 0);
    expect_hget(c1, "mesh:roommeta:shared", "data", "{\"db\":1,\"i\":4}");
    expect_hget(c2, "mesh:roommeta:shared", "data", "{\"db\":2,\"i\":4}");
    expect_hget(c2, "mesh:connection-meta", "only-1", NULL);
    assert_int_equal(harness_redis_int(harness_redis(w->h), "DBSIZE"), 0);

    expect_not_in_log(a, "went back");
    expect_not_in_log(a2, "went back");
    expect_not_in_log(b, "went back");
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(a2);
    harness_daemon_stop_clean(b);
}

/* --- 7. TCP ----------------------------------------------------------- */

/* A loopback port nobody listens on right now (never Redis's 6379). */
static int free_port(void)
{
    for (int i = 0; i < 16; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int port;

        assert_true(fd >= 0);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        close(fd);
        port = ntohs(sa.sin_port);
        if (port != 6379)
            return port;
    }
    fail_msg("no free loopback port");
    return -1;
}

static void test_tcp(void **state)
{
    world_t *w = *state;
    char port[16], url[64], query[] = "?db=3", sock_url[HARNESS_PATH_MAX + 16];
    harness_daemon_t *a, *b;
    redisContext *c3;
    meshsync_t *ma, *mb;
    uint64_t v;

    snprintf(port, sizeof(port), "%d", free_port());
    harness_redis_start(
        w->h, (const char *[]){"--port", port, "--bind", "127.0.0.1", NULL});
    snprintf(url, sizeof(url), "redis://127.0.0.1:%s/3", port);
    a = harness_daemon_start(w->h, "a", (const char *[]){"--redis", url, NULL},
                             NULL);
    snprintf(url, sizeof(url), "addr=127.0.0.1:%s", port);
    assert_non_null(strstr(harness_daemon_log(a), url));
    unix_url(w->h, query, sock_url, sizeof(sock_url));
    b = harness_daemon_start(w->h, "b",
                             (const char *[]){"--redis", sock_url, NULL}, NULL);
    ma = client(w, a);
    mb = client(w, b);

    /* Over TCP, and to and from a sidecar on the same database. */
    v = set_json(ma, ROOM, "tcp", "{\"over\":\"tcp\"}");
    expect_get(ma, ROOM, "tcp", "{\"over\":\"tcp\"}", 0);
    expect_get_min(mb, ROOM, "tcp", v, "{\"over\":\"tcp\"}", 0);
    v = set_json(ma, CONN, "c", "{\"n\":1}");
    expect_get_min(mb, CONN, "c", v, "{\"n\":1}", 0);
    v = set_json(mb, CONN, "c", "{\"n\":2}");
    expect_get_min(ma, CONN, "c", v, "{\"n\":2}", 0);
    HARNESS_CALL_OK(ma, meshsync_room_delete(ma, "tcp", &v));
    expect_get_min(mb, ROOM, "tcp", v, "null", 0);

    c3 = redis_db(w, 3);
    expect_hget(c3, "mesh:connection-meta", "c", "{\"n\":2}");
    assert_int_equal(harness_redis_int(c3, "GET mesh:meshsync:seq"), v);
    assert_int_equal(harness_redis_int(harness_redis(w->h), "DBSIZE"), 0);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}

/* --- 8. hello, and keys no operation uses ------------------------------ */

static void test_hello_rebind(void **state)
{
    world_t *w = *state;
    harness_daemon_t *d = harness_daemon_start(w->h, "a", NULL, NULL);
    meshsync_t *ms = client(w, d);
    meshsync_value_t v;
    uint64_t v1, v2;

    HARNESS_CALL_OK(ms, meshsync_hello(ms, "c1"));
    HARNESS_CALL_OK(ms, meshsync_conn_set(ms, NULL, MESHSYNC_JSON,
                                          "{\"me\":\"c1\"}", 11,
                                          MESHSYNC_REPLACE, &v1));
    HARNESS_CALL_OK(ms, meshsync_hello(ms, "c2"));
    HARNESS_CALL_OK(ms, meshsync_conn_get(ms, NULL, MESHSYNC_JSON, &v));
    assert_string_equal(v.data, "null");
    assert_int_equal(v.version, 0);
    meshsync_value_free(&v);
    HARNESS_CALL_OK(ms, meshsync_conn_get(ms, "c1", MESHSYNC_JSON, &v));
    assert_json(v.data, "{\"me\":\"c1\"}");
    assert_int_equal(v.version, v1);
    meshsync_value_free(&v);

    /* Now bound to c2: writes without an id go there. */
    HARNESS_CALL_OK(ms, meshsync_conn_set(ms, NULL, MESHSYNC_JSON,
                                          "{\"me\":\"c2\"}", 11,
                                          MESHSYNC_REPLACE, &v2));
    expect_hget(harness_redis(w->h), "mesh:connection-meta", "c2",
                "{\"me\":\"c2\"}");
    expect_hget(harness_redis(w->h), "mesh:connection-meta", "c1",
                "{\"me\":\"c1\"}");
    assert_true(v2 > v1);
    harness_daemon_stop_clean(d);
}

static void test_unknown_keys(void **state)
{
    world_t *w = *state;
    harness_daemon_t *d = harness_daemon_start(w->h, "a", NULL, NULL);
    int fd = raw_connect(w, d->socket);
    harness_reply_t r;

    harness_request_begin(&w->pk, &w->sb, 1, "ping", 3);
    harness_pack_str(&w->pk, "extra");
    harness_pack_str(&w->pk, "x");
    harness_pack_str(&w->pk, "nested");
    msgpack_pack_map(&w->pk, 1);
    harness_pack_str(&w->pk, "k");
    msgpack_pack_array(&w->pk, 2);
    msgpack_pack_nil(&w->pk);
    msgpack_pack_true(&w->pk);
    harness_pack_str(&w->pk, "room");
    msgpack_pack_int64(&w->pk, -5);
    harness_request_send(fd, &w->sb);
    harness_reply_recv_ok(fd, 1, REPLY_MS, &r);
    assert_true(
        harness_obj_is_str(harness_map_get(&r.u.data, "value"), "pong"));
    harness_reply_free(&r);

    harness_request_begin(&w->pk, &w->sb, 2, "room.get", 2);
    harness_pack_str(&w->pk, "room");
    harness_pack_str(&w->pk, "r");
    harness_pack_str(&w->pk, "futureOption");
    msgpack_pack_uint64(&w->pk, 7);
    harness_request_send(fd, &w->sb);
    harness_reply_recv_ok(fd, 2, REPLY_MS, &r);
    harness_reply_free(&r);
    harness_daemon_stop_clean(d);
}

/* --- 9. merges that conflict ------------------------------------------ */

/* Queues n merges of {"<who><i>": i} into conn "shared" on fd. */
static void send_merges(world_t *w, int fd, char who, int first, int n)
{
    msgpack_sbuffer frames;
    char key[16];

    msgpack_sbuffer_init(&frames);
    for (int i = first; i < first + n; i++) {
        size_t len;
        char hdr[4];

        snprintf(key, sizeof(key), "%c%d", who, i);
        harness_request_begin(&w->pk, &w->sb, (uint64_t)i, "conn.set", 3);
        harness_pack_str(&w->pk, "conn");
        harness_pack_str(&w->pk, "shared");
        harness_pack_str(&w->pk, "strategy");
        harness_pack_str(&w->pk, "merge");
        harness_pack_str(&w->pk, "value");
        msgpack_pack_map(&w->pk, 1);
        harness_pack_str(&w->pk, key);
        msgpack_pack_int(&w->pk, i);
        len = w->sb.size;
        hdr[0] = (char)(len >> 24);
        hdr[1] = (char)(len >> 16);
        hdr[2] = (char)(len >> 8);
        hdr[3] = (char)len;
        msgpack_sbuffer_write(&frames, hdr, 4);
        msgpack_sbuffer_write(&frames, w->sb.data, w->sb.size);
    }
    assert_int_equal(harness_send_raw(fd, frames.data, frames.size), 0);
    msgpack_sbuffer_destroy(&frames);
}

/* Reads MERGES replies: outcome[i] is 1 for ok, 2 for conflict. */
static size_t read_merges(int fd, char *outcome)
{
    size_t conflicts = 0;

    for (int i = 0; i < MERGES; i++) {
        const msgpack_object *code;
        harness_reply_t r;
        uint64_t id;

        harness_reply_recv(fd, REPLY_MS, &r);
        id = harness_reply_id(&r.u.data);
        assert_true(id < MERGES && outcome[id] == 0);
        code = harness_reply_error_code(&r.u.data);
        if (code != NULL && !harness_obj_is_str(code, "conflict"))
            fail_msg("merge %" PRIu64 " failed with %.*s", id,
                     (int)code->via.str.size, code->via.str.ptr);
        outcome[id] = code == NULL ? 1 : 2;
        conflicts += code != NULL;
        harness_reply_free(&r);
    }
    return conflicts;
}

/* Each acknowledged merge's key is in Redis; no conflicting one's is. */
static void expect_merged(const json_t *o, char who, const char *outcome)
{
    char key[16];

    for (int i = 0; i < MERGES; i++) {
        const json_t *v;

        snprintf(key, sizeof(key), "%c%d", who, i);
        v = json_object_get(o, key);
        if (outcome[i] == 1 &&
            (v == NULL || !json_is_integer(v) || json_integer_value(v) != i))
            fail_msg("merge %s was acknowledged but is not in Redis", key);
        if (outcome[i] == 2 && v != NULL)
            fail_msg("merge %s failed with conflict but is in Redis", key);
    }
}

static void test_merge_conflict(void **state)
{
    world_t *w = *state;
    harness_daemon_t *a = harness_daemon_start(
        w->h, "a", (const char *[]){"--merge-retries", "1", NULL}, NULL);
    harness_daemon_t *b = harness_daemon_start(w->h, "b", NULL, NULL);
    int fa = raw_connect(w, a->socket), fb = raw_connect(w, b->socket);
    static char out_a[MERGES], out_b[MERGES];
    size_t ca, cb;
    char *text;
    json_t *o;

    memset(out_a, 0, sizeof(out_a));
    memset(out_b, 0, sizeof(out_b));
    for (int i = 0; i < MERGES; i += MERGE_CHUNK) {
        send_merges(w, fb, 'b', i, MERGE_CHUNK);
        send_merges(w, fa, 'a', i, MERGE_CHUNK);
    }
    ca = read_merges(fa, out_a);
    cb = read_merges(fb, out_b);
    print_message("  %zu of A's and %zu of B's %d merges conflicted\n", ca, cb,
                  MERGES);

    text = hget(harness_redis(w->h), "mesh:connection-meta", "shared");
    assert_non_null(text);
    o = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(o);
    assert_true(json_is_object(o));
    expect_merged(o, 'a', out_a);
    expect_merged(o, 'b', out_b);
    assert_int_equal(json_object_size(o), 2 * MERGES - ca - cb);
    json_decref(o);
    harness_daemon_stop_clean(a);
    harness_daemon_stop_clean(b);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_start_before_redis, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_warm_restart, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_socket_stale, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_socket_live, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cache_file_garbage, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cache_file_in_use, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_socket_not_a_socket, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_socket_mode_and_dir, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_config_env, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_config_flag_wins, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_config_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_help, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_bad_values, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefixes, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_databases, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hello_rebind, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unknown_keys, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_merge_conflict, setup_redis,
                                        teardown),
    };

    /* A pattern on the command line runs only the tests it matches. */
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
