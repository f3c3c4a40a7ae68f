/*
 * test_faults.c - fault scenarios against a redis-server and three
 * sidecars. Each scenario runs a seeded random workload of pipelined
 * writes (replace, merge, deepMerge, nil values, conn.close, room.delete
 * over 50 connections and 50 rooms) through the sidecars, injects one
 * fault, measures how long the sidecars take to converge, finishes the
 * workload, and checks that every cache equals Redis and that no
 * acknowledged write was lost (a model replays the acknowledged writes in
 * version order).
 *
 * A restarted sidecar's convergence time includes its start-up. The
 * seed is printed; FAULTS_SEED=0x... replays a workload. Some faults are
 * writes made straight into Mesh's keys in Redis ("hand writes"), which
 * the sidecars' scrub must find and version (adopt).
 *
 * Entry point: main (one cmocka test per scenario). Nothing sleeps: every
 * wait is for a reply, a log line, a process or a state the daemon or
 * Redis reports, bounded in count and time. Single-threaded.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meshsync.h"

#define SIDECARS        3
#define ENTRIES         50 /* connections, and as many rooms */
#define BATCH           40 /* writes per sidecar and round */
#define ROUNDS          8  /* before the fault, and again after it */
#define MAX_OPS         20000
#define REPLY_MS        15000
#define CONVERGE_MS     20000
#define CONVERGE_TRIES  100000
#define STOP_MAX_ROUNDS 60
#define STOP_PAD        1000
#define HOOK_BATCH      200
#define HOOK_AFTER      2 /* answers before a mid-pipeline fault */
#define STOP_OMEM       16384
#define OUTSIDE_ROUNDS  4  /* of the workload among hand writes */
#define HAND_STEP       8  /* hand writes at a time */
#define HAND_TRIES      50 /* random picks for one of them */
#define NOTIFIED_MS     5000
#define FAST_SCRUB_MS   "300"
#define SCRUB_ALL       "msg=\"scrub done\" scope=all"
#define LOST_SUB        "msg=\"redis disconnected\" link=sub"
#define LOST_CMD        "msg=\"redis disconnected\" link=cmd"

enum { KIND_CONN, KIND_ROOM };
enum { OP_REPLACE, OP_MERGE, OP_DEEP, OP_DELETE, OP_NIL };
enum { PENDING, ACKED, UNKNOWN, REFUSED };

typedef struct op_s {
    int kind;
    int entry;
    int type;
    int strategy; /* of an OP_NIL */
    json_t *value;
    uint64_t version;
    int outcome;
} op_t;

typedef struct world_s world_t;
typedef void (*hook_fn)(world_t *w);

struct world_s {
    harness_t *h;
    const char *const *redis_args;
    const char *const *daemon_args; /* for every meshsyncd started */
    harness_daemon_t *d[SIDECARS];
    meshsync_t *ms[SIDECARS];
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer pipe;
    op_t *ops;
    size_t nops;
    json_t *base[2][ENTRIES]; /* known value when the model starts */
    size_t from[2][ENTRIES];  /* first op the model counts */
    bool base_unknown;        /* Redis lost data while writes flowed */
    uint64_t rng;
    size_t pad;
    size_t batch; /* writes per sidecar and round */
    int64_t fault_end;
    int64_t converged_ms; /* from fault_end */
    hook_fn converged;    /* checks run right after that convergence */
    size_t round_first;   /* the current round's first op */
    unsigned hands;       /* values written by hand so far */
    harness_daemon_t *marked[SIDECARS]; /* log_len[i] is d[i]'s mark */
    size_t log_len[SIDECARS];
};

static const char *const strategy_names[] = {"replace", "merge", "deepMerge"};

/* --- the world -------------------------------------------------------- */

static int world_new(void **state, const char *const *redis_args,
                     const char *const *daemon_args)
{
    world_t *w = calloc(1, sizeof(*w));
    static const char *const names[SIDECARS] = {"s0", "s1", "s2"};

    assert_non_null(w);
    w->ops = calloc(MAX_OPS, sizeof(op_t));
    assert_non_null(w->ops);
    w->redis_args = redis_args;
    w->daemon_args = daemon_args;
    w->h = harness_new();
    harness_redis_start(w->h, redis_args);
    for (int i = 0; i < SIDECARS; i++)
        w->d[i] = harness_daemon_start(w->h, names[i], daemon_args, NULL);
    msgpack_sbuffer_init(&w->sb);
    msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&w->pipe);
    w->rng = 0x9e3779b97f4a7c15ull;
    w->batch = BATCH;
    *state = w;
    return 0;
}

static int setup(void **state)
{
    /* DEBUG SLEEP, over the Unix socket only. */
    static const char *const args[] = {"--enable-debug-command", "local", NULL};

    return world_new(state, args, NULL);
}

static int setup_small_pubsub_buffer(void **state)
{
    static const char *const args[] = {"--client-output-buffer-limit",
                                       "pubsub 64kb 32kb 1", NULL};

    return world_new(state, args, NULL);
}

static int setup_aof(void **state)
{
    static const char *const args[] = {"--appendonly", "yes", NULL};

    return world_new(state, args, NULL);
}

/* Redis tells subscribers about every key written, hashes and DEL. */
static int setup_notify(void **state)
{
    static const char *const args[] = {"--notify-keyspace-events", "Kgh", NULL};

    return world_new(state, args, NULL);
}

/* Redis as configured by default (no notifications), a quick scrub. */
static int setup_fast_scrub(void **state)
{
    static const char *const args[] = {"--scrub-interval-ms", FAST_SCRUB_MS,
                                       NULL};

    return world_new(state, NULL, args);
}

static int teardown(void **state)
{
    world_t *w = *state;

    for (int i = 0; i < SIDECARS; i++)
        meshsync_free(w->ms[i]);
    harness_free(w->h);
    for (size_t i = 0; i < w->nops; i++)
        json_decref(w->ops[i].value);
    for (int k = 0; k < 2; k++)
        for (int e = 0; e < ENTRIES; e++)
            json_decref(w->base[k][e]);
    free(w->ops);
    msgpack_sbuffer_destroy(&w->sb);
    msgpack_sbuffer_destroy(&w->pipe);
    free(w);
    return 0;
}

static meshsync_t *client(world_t *w, int i)
{
    if (w->ms[i] == NULL)
        w->ms[i] = harness_client_open(w->d[i]);
    return w->ms[i];
}

static void sidecar_restart(world_t *w, int i)
{
    char name[16];

    snprintf(name, sizeof(name), "s%d", i);
    meshsync_free(w->ms[i]);
    w->ms[i] = NULL;
    w->d[i] = harness_daemon_start(w->h, name, w->daemon_args, NULL);
}

static void seed(world_t *w, const char *name)
{
    uint64_t s = 1469598103934665603ull;

    for (const char *p = name; *p; p++)
        s = (s ^ (unsigned char)*p) * 1099511628211ull;
    /* FAULTS_SEED=0x... replays a run. */
    if (getenv("FAULTS_SEED") != NULL)
        s = strtoull(getenv("FAULTS_SEED"), NULL, 0);
    w->rng = s | 1;
    printf("scenario %s: seed 0x%016" PRIx64 "\n", name, w->rng);
}

static uint32_t rnd(world_t *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return (uint32_t)(w->rng >> 32);
}

static void entry_id(int kind, int entry, char *out, size_t size)
{
    snprintf(out, size, "%s-%02d", kind == KIND_CONN ? "c" : "r", entry);
}

/* --- the workload ----------------------------------------------------- */

/* A value whose keys are unique to write n, so a lost merge shows. */
static json_t *op_value(world_t *w, int type, size_t n)
{
    json_int_t v = (json_int_t)n;
    char key[32];

    snprintf(key, sizeof(key), "%c%zu", type == OP_MERGE ? 'm' : 'k', n);
    if (type == OP_MERGE)
        return json_pack("{sI}", key, v);
    if (type == OP_DEEP)
        return json_pack("{s{sI}s{s{sI}}}", "d", key, v, "e", "f", key, v);
    if (rnd(w) % 10 == 0)
        return rnd(w) % 2 ? json_pack("s", key) : json_pack("[II]", v, v);
    if (w->pad > 0) {
        char *pad = malloc(w->pad + 1);
        json_t *j;

        assert_non_null(pad);
        memset(pad, 'p', w->pad);
        pad[w->pad] = '\0';
        j = json_pack("{sIs{sI}ss}", "r", v, "d", "b", v, "pad", pad);
        free(pad);
        return j;
    }
    return json_pack("{sIs{sI}}", "r", v, "d", "b", v);
}

static op_t *op_new(world_t *w)
{
    op_t *op;
    uint32_t r = rnd(w) % 100;

    assert_true(w->nops < MAX_OPS);
    op = &w->ops[w->nops];
    memset(op, 0, sizeof(*op));
    op->kind = (int)(rnd(w) % 2);
    op->entry = (int)(rnd(w) % ENTRIES);
    op->type = r < 30   ? OP_REPLACE
               : r < 55 ? OP_MERGE
               : r < 80 ? OP_DEEP
               : r < 92 ? OP_DELETE
                        : OP_NIL;
    op->strategy = (int)(rnd(w) % 3);
    if (op->type <= OP_DEEP)
        op->value = op_value(w, op->type, w->nops);
    w->nops++;
    return op;
}

static void pack_str_n(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_json(msgpack_packer *pk, json_t *j)
{
    const char *key;
    json_t *v;
    size_t i;

    switch (json_typeof(j)) {
    case JSON_OBJECT:
        msgpack_pack_map(pk, json_object_size(j));
        json_object_foreach(j, key, v)
        {
            harness_pack_str(pk, key);
            pack_json(pk, v);
        }
        break;
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(j));
        json_array_foreach(j, i, v)
        {
            pack_json(pk, v);
        }
        break;
    case JSON_STRING:
        pack_str_n(pk, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(j));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(j));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    default:
        msgpack_pack_nil(pk);
    }
}

/* Appends the request in w->sb to w->pipe as one frame. */
static void pipe_add(world_t *w)
{
    size_t n = w->sb.size;
    char hdr[4] = {(char)(n >> 24), (char)(n >> 16), (char)(n >> 8), (char)n};

    msgpack_sbuffer_write(&w->pipe, hdr, sizeof(hdr));
    msgpack_sbuffer_write(&w->pipe, w->sb.data, w->sb.size);
}

/* The request for op (its id is its index + 1) into w->pipe. */
static void op_pack(world_t *w, const op_t *op)
{
    const char *key = op->kind == KIND_CONN ? "conn" : "room";
    uint64_t id = (uint64_t)(op - w->ops) + 1;
    char name[16];

    entry_id(op->kind, op->entry, name, sizeof(name));
    if (op->type == OP_DELETE) {
        harness_request_begin(
            &w->pk, &w->sb, id,
            op->kind == KIND_CONN ? "conn.close" : "room.delete", 1);
    } else {
        harness_request_begin(&w->pk, &w->sb, id,
                              op->kind == KIND_CONN ? "conn.set" : "room.set",
                              3);
        harness_pack_str(&w->pk, "value");
        if (op->value != NULL)
            pack_json(&w->pk, op->value);
        else
            msgpack_pack_nil(&w->pk);
        harness_pack_str(&w->pk, "strategy");
        harness_pack_str(&w->pk, op->type == OP_NIL
                                     ? strategy_names[op->strategy]
                                     : strategy_names[op->type]);
    }
    harness_pack_str(&w->pk, key);
    harness_pack_str(&w->pk, name);
    pipe_add(w);
}

/* A reply's error code, or NULL when "ok" is true. */
static const msgpack_object *reply_error_code(const msgpack_object *reply)
{
    const msgpack_object *ok = harness_map_get(reply, "ok");
    const msgpack_object *code;

    assert_non_null(ok);
    assert_int_equal(ok->type, MSGPACK_OBJECT_BOOLEAN);
    if (ok->via.boolean)
        return NULL;
    code = harness_map_get(harness_map_get(reply, "error"), "code");
    assert_non_null(code);
    assert_int_equal(code->type, MSGPACK_OBJECT_STR);
    return code;
}

/* Records one reply's outcome in its op. */
static void op_answer(world_t *w, size_t first, size_t n,
                      const msgpack_object *reply)
{
    uint64_t id = harness_reply_id(reply);
    const msgpack_object *code = reply_error_code(reply);
    op_t *op;

    if (id < first + 1 || id > first + n)
        fail_msg("reply for unknown id %" PRIu64, id);
    op = &w->ops[id - 1];
    if (op->outcome != PENDING)
        fail_msg("id %" PRIu64 " answered twice", id);
    if (code == NULL) {
        op->outcome = ACKED;
        op->version = harness_reply_version(reply);
    } else if (harness_obj_is_str(code, "unavailable") ||
               harness_obj_is_str(code, "timeout")) {
        op->outcome = UNKNOWN;
    } else if (harness_obj_is_str(code, "conflict")) {
        op->outcome = REFUSED; /* a checked write that wrote nothing */
    } else {
        fail_msg("write %" PRIu64 " failed with %.*s", id,
                 (int)code->via.str.size, code->via.str.ptr);
    }
}

/*
 * Reads the answers to ops first..first+n-1 from fd; calls hook (if any)
 * after `after` of them. An answer that never comes is a failure unless
 * the sidecar was killed meanwhile: its writes are then unknown.
 */
static void batch_read(world_t *w, int i, int fd, size_t first, size_t n,
                       hook_fn hook, size_t after)
{
    for (size_t k = 0; k < n; k++) {
        harness_reply_t r;
        size_t len;

        if (hook != NULL && k == after)
            hook(w);
        if (harness_frame_recv(fd, &r.body, &len, REPLY_MS) != 1) {
            if (w->d[i]->pid != 0)
                fail_msg("s%d: answer %zu of %zu never came", i, k, n);
            break;
        }
        harness_unpack_map(r.body, len, &r.u);
        op_answer(w, first, n, &r.u.data);
        harness_reply_free(&r);
    }
    for (size_t k = 0; k < n; k++)
        if (w->ops[first + k].outcome == PENDING)
            w->ops[first + k].outcome = UNKNOWN;
}

/*
 * One round: w->batch pipelined writes to each sidecar in mask, all sent
 * before any answer is read, so that they run concurrently. hook runs
 * after HOOK_AFTER answers of the first sidecar.
 */
static void round_run(world_t *w, unsigned mask, hook_fn hook)
{
    int fd[SIDECARS];
    size_t first[SIDECARS];
    bool hooked = false;

    w->round_first = w->nops;
    for (int i = 0; i < SIDECARS; i++) {
        if (!(mask & 1u << i))
            continue;
        fd[i] = harness_unix_connect(w->d[i]->socket);
        assert_true(fd[i] >= 0);
        first[i] = w->nops;
        for (size_t k = 0; k < w->batch; k++)
            op_pack(w, op_new(w));
        assert_int_equal(harness_send_raw(fd[i], w->pipe.data, w->pipe.size),
                         0);
        msgpack_sbuffer_clear(&w->pipe);
    }
    for (int i = 0; i < SIDECARS; i++) {
        if (!(mask & 1u << i))
            continue;
        batch_read(w, i, fd[i], first[i], w->batch, hooked ? NULL : hook,
                   HOOK_AFTER);
        hooked = true;
        close(fd[i]);
    }
}

/* A round of longer pipelines, so that the fault lands among writes. */
static void round_hooked(world_t *w, hook_fn hook)
{
    w->batch = HOOK_BATCH;
    round_run(w, 7, hook);
    w->batch = BATCH;
}

static void rounds(world_t *w, int n, unsigned mask)
{
    for (int r = 0; r < n; r++)
        round_run(w, mask, NULL);
}

/* --- the model -------------------------------------------------------- */

static json_t *deep_merge(json_t *into, json_t *value)
{
    const char *key;
    json_t *v;

    json_object_foreach(value, key, v)
    {
        json_t *old = json_object_get(into, key);

        if (json_is_object(v) && json_is_object(old))
            deep_merge(old, v);
        else
            json_object_set_new(into, key, json_deep_copy(v));
    }
    return into;
}

/* The value after op on cur (json null for absent); a new reference. */
static json_t *op_apply(const op_t *op, json_t *cur)
{
    bool maps = json_is_object(cur) && json_is_object(op->value);

    if (op->type == OP_DELETE || op->type == OP_NIL)
        return json_null();
    if (op->type == OP_REPLACE || !maps)
        return json_deep_copy(op->value);
    if (op->type == OP_MERGE) {
        json_t *out = json_deep_copy(cur);

        json_object_update(out, op->value);
        return out;
    }
    return deep_merge(json_deep_copy(cur), op->value);
}

/* True if have holds every key op's merge value set, as it set it. */
static bool merge_shows(const op_t *op, json_t *have, json_t *want)
{
    const char *key;
    json_t *v;

    if (!json_is_object(have) || !json_is_object(want))
        return json_equal(have, want);
    json_object_foreach(want, key, v)
    {
        json_t *h = json_object_get(have, key);
        bool deep = op->type == OP_DEEP && json_is_object(v);

        if (h == NULL || !(deep ? merge_shows(op, h, v) : json_equal(h, v)))
            return false;
    }
    return true;
}

static int by_version(const void *a, const void *b)
{
    const op_t *x = *(const op_t *const *)a, *y = *(const op_t *const *)b;

    return x->version < y->version ? -1 : x->version > y->version;
}

static char *redis_value_text(world_t *w, int kind, const char *id)
{
    char key[64];

    if (kind == KIND_CONN)
        return harness_redis_hget(w->h, "mesh:connection-meta", id);
    snprintf(key, sizeof(key), "mesh:roommeta:%s", id);
    return harness_redis_hget(w->h, key, "data");
}

/* Redis's value of an entry (json null when absent) and its version. */
static json_t *redis_value(world_t *w, int kind, const char *id,
                           uint64_t *version)
{
    char *text = redis_value_text(w, kind, id);
    json_error_t err;
    json_t *j;

    *version = (uint64_t)harness_redis_int(
        harness_redis(w->h), "HGET mesh:meshsync:versions:%s %s",
        kind == KIND_CONN ? "conn" : "room", id);
    if (text == NULL)
        return json_null();
    j = json_loads(text, JSON_DECODE_ANY, &err);
    if (j == NULL)
        fail_msg("%s: Redis holds %s: %s", id, text, err.text);
    free(text);
    return j;
}

static void fail_values(const char *what, const char *id, json_t *have,
                        json_t *want)
{
    char *a = json_dumps(have, JSON_ENCODE_ANY | JSON_COMPACT);
    char *b = json_dumps(want, JSON_ENCODE_ANY | JSON_COMPACT);

    fail_msg("%s: %s: has %s, want %s", id, what, a, b);
}

/* Every write acknowledged, replayed in version order, gives Redis's. */
static void check_exact(const char *id, op_t **ops, size_t n, json_t *base,
                        json_t *have, uint64_t version)
{
    json_t *cur = json_incref(base);

    for (size_t k = 0; k < n; k++) {
        json_t *next = op_apply(ops[k], cur);

        if (k > 0 && ops[k]->version == ops[k - 1]->version)
            fail_msg("%s: two writes with version %" PRIu64, id,
                     ops[k]->version);
        json_decref(cur);
        cur = next;
    }
    if (!json_equal(cur, have))
        fail_values("acknowledged writes lost", id, have, cur);
    if (n > 0 && !json_is_null(have) && version != ops[n - 1]->version)
        fail_msg("%s: version %" PRIu64 " in Redis, last write %" PRIu64, id,
                 version, ops[n - 1]->version);
    json_decref(cur);
}

/*
 * With writes of unknown outcome: the last acknowledged write, or a later
 * unknown one, is what Redis shows.
 */
static void check_loose(const char *id, op_t **ops, size_t n, bool can_delete,
                        json_t *have, uint64_t version)
{
    const op_t *last = n > 0 ? ops[n - 1] : NULL;
    bool deleted = last != NULL && last->value == NULL;

    if (last == NULL)
        return;
    if (json_is_null(have)) {
        if (!deleted && !can_delete)
            fail_values("acknowledged write lost", id, have, last->value);
        return;
    }
    if (version < last->version)
        fail_msg("%s: Redis holds version %" PRIu64 ", acknowledged %" PRIu64,
                 id, version, last->version);
    if (version == last->version && last->type == OP_REPLACE &&
        !json_equal(have, last->value))
        fail_values("the acknowledged replace is not there", id, have,
                    last->value);
    if (version == last->version && !merge_shows(last, have, last->value))
        fail_values("the acknowledged write is not there", id, have,
                    last->value);
}

static void check_entry(world_t *w, int kind, int entry, op_t **buf)
{
    size_t n = 0, unknown = 0;
    bool can_delete = false;
    uint64_t version;
    char id[16];
    json_t *have;

    for (size_t i = w->from[kind][entry]; i < w->nops; i++) {
        op_t *op = &w->ops[i];

        if (op->kind != kind || op->entry != entry)
            continue;
        if (op->outcome == ACKED)
            buf[n++] = op;
        unknown += op->outcome == UNKNOWN;
        can_delete |= op->outcome == UNKNOWN && op->value == NULL;
    }
    qsort(buf, n, sizeof(*buf), by_version);
    entry_id(kind, entry, id, sizeof(id));
    have = redis_value(w, kind, id, &version);
    if (unknown == 0 && !w->base_unknown)
        check_exact(id, buf, n,
                    w->base[kind][entry] ? w->base[kind][entry] : json_null(),
                    have, version);
    else
        check_loose(id, buf, n, can_delete, have, version);
    json_decref(have);
}

static void check_model(world_t *w)
{
    op_t **buf = calloc(MAX_OPS, sizeof(*buf));
    size_t acked = 0, unknown = 0, refused = 0;

    assert_non_null(buf);
    for (int kind = 0; kind < 2; kind++)
        for (int e = 0; e < ENTRIES; e++)
            check_entry(w, kind, e, buf);
    free(buf);
    for (size_t i = 0; i < w->nops; i++) {
        acked += w->ops[i].outcome == ACKED;
        unknown += w->ops[i].outcome == UNKNOWN;
        refused += w->ops[i].outcome == REFUSED;
    }
    printf("  %zu writes: %zu acknowledged, %zu unknown, %zu conflict\n",
           w->nops, acked, unknown, refused);
}

/* Redis lost its data: the model starts again from nothing. */
static void model_reset(world_t *w)
{
    for (int k = 0; k < 2; k++) {
        for (int e = 0; e < ENTRIES; e++) {
            json_decref(w->base[k][e]);
            w->base[k][e] = NULL;
            w->from[k][e] = w->nops;
        }
    }
}

/* --- convergence ------------------------------------------------------ */

/* True if the sidecar reports itself live and caught up with Redis. */
static bool sidecar_caught_up(world_t *w, int i)
{
    json_t *j = harness_health(client(w, i));
    json_t *lag = json_object_get(j, "lag");
    bool up;

    up = json_is_true(json_object_get(j, "ready")) &&
         strcmp(json_string_value(json_object_get(j, "state")), "live") == 0 &&
         json_is_integer(lag) && json_integer_value(lag) == 0;
    json_decref(j);
    return up;
}

/* NULL if sidecar i serves entry exactly as Redis holds it, else why. */
static const char *cache_differs(world_t *w, int i, int kind, const char *id,
                                 json_t *want, uint64_t version)
{
    meshsync_t *ms = client(w, i);
    meshsync_value_t v = {0};
    const char *why = NULL;
    json_t *have;

    if (kind == KIND_CONN)
        HARNESS_CALL_OK(ms, meshsync_conn_get(ms, id, MESHSYNC_JSON, &v));
    else
        HARNESS_CALL_OK(ms, meshsync_room_get(ms, id, MESHSYNC_JSON, &v));
    have = json_loads(v.data, JSON_DECODE_ANY, NULL);
    assert_non_null(have);
    if (!json_equal(have, want))
        why = "value";
    else if (!json_is_null(want) && v.version != version)
        why = "version";
    else if (v.stale)
        why = "stale";
    json_decref(have);
    meshsync_value_free(&v);
    return why;
}

/* True if every cache serves every entry as Redis holds it. */
static bool caches_equal(world_t *w, bool report)
{
    for (int kind = 0; kind < 2; kind++) {
        for (int e = 0; e < ENTRIES; e++) {
            char id[16];
            uint64_t version;
            json_t *want;

            entry_id(kind, e, id, sizeof(id));
            want = redis_value(w, kind, id, &version);
            for (int i = 0; i < SIDECARS; i++) {
                const char *why = cache_differs(w, i, kind, id, want, version);

                if (why != NULL && report)
                    fail_msg("s%d: %s: %s differs from Redis; log:\n%s", i, id,
                             why, harness_daemon_log(w->d[i]));
                if (why != NULL) {
                    json_decref(want);
                    return false;
                }
            }
            json_decref(want);
        }
    }
    return true;
}

/* Waits until every sidecar is live, lag 0, and serves what Redis holds. */
static int64_t converge(world_t *w)
{
    int64_t deadline = harness_now_ms() + CONVERGE_MS;
    bool done = false;

    for (int t = 0; t < CONVERGE_TRIES && !done; t++) {
        bool up = true;

        if (harness_now_ms() > deadline)
            break;
        for (int i = 0; i < SIDECARS && up; i++)
            up = sidecar_caught_up(w, i);
        done = up && caches_equal(w, false);
    }
    if (!done) {
        for (int i = 0; i < SIDECARS; i++)
            if (!sidecar_caught_up(w, i))
                fail_msg("s%d never caught up; log:\n%s", i,
                         harness_daemon_log(w->d[i]));
        caches_equal(w, true);
    }
    return harness_now_ms();
}

static void logs_mark(world_t *w)
{
    for (int i = 0; i < SIDECARS; i++) {
        harness_daemon_log(w->d[i]);
        w->marked[i] = w->d[i];
        w->log_len[i] = w->d[i]->log_len;
    }
}

/* What sidecar i logged since logs_mark() (all of it if restarted). */
static const char *log_since_mark(world_t *w, int i)
{
    const char *log = harness_daemon_log(w->d[i]);

    return w->marked[i] == w->d[i] ? log + w->log_len[i] : log;
}

/* How each sidecar came back since logs_mark(), from its log. */
static void logs_report(world_t *w)
{
    static const char *const what[] = {
        "Redis sequence went back", "epoch changed",
        "caught up from the change log", "resync started", "unusable"};

    for (int i = 0; i < SIDECARS; i++) {
        const char *log = log_since_mark(w, i);

        printf("  s%d:%s", i, w->marked[i] == w->d[i] ? "" : " restarted");
        for (size_t k = 0; k < sizeof(what) / sizeof(*what); k++)
            if (strstr(log, what[k]) != NULL)
                printf(" [%s]", what[k]);
        printf("\n");
    }
}

/*
 * The scenario's shape: a workload, the fault (which sets w->fault_end),
 * convergence, more workload, and the checks. The fault may run rounds of
 * its own.
 */
static void scenario(world_t *w, const char *name, void (*fault)(world_t *))
{
    int64_t at;

    seed(w, name);
    rounds(w, ROUNDS, 7);
    logs_mark(w);
    fault(w);
    at = converge(w);
    w->converged_ms = at - w->fault_end;
    logs_report(w);
    printf("scenario %s: converged in %" PRId64 " ms\n", name, w->converged_ms);
    fflush(stdout);
    if (w->converged != NULL)
        w->converged(w);
    rounds(w, ROUNDS, 7);
    converge(w);
    caches_equal(w, true);
    check_model(w);
    for (int i = 0; i < SIDECARS; i++) {
        meshsync_free(w->ms[i]);
        w->ms[i] = NULL;
        harness_daemon_stop_clean(w->d[i]);
    }
}

static void expect_log(harness_daemon_t *d, const char *needle)
{
    if (!harness_daemon_wait_log(d, needle, HARNESS_TIMEOUT_MS))
        fail_msg("no %s logged; log:\n%s", needle, harness_daemon_log(d));
}

/* --- faults ----------------------------------------------------------- */

static void redis_do(world_t *w, const char *cmd)
{
    redisReply *rep = harness_command(harness_redis(w->h), cmd);

    if (rep->type == REDIS_REPLY_ERROR)
        fail_msg("%s: %s", cmd, rep->str);
    freeReplyObject(rep);
}

static void hook_kill_pubsub(world_t *w)
{
    redis_do(w, "CLIENT KILL TYPE pubsub");
    w->fault_end = harness_now_ms();
}

static void fault_kill_pubsub(world_t *w)
{
    round_hooked(w, hook_kill_pubsub);
    for (int i = 0; i < SIDECARS; i++)
        expect_log(w->d[i], LOST_SUB);
}

/*
 * Every normal client but the harness's own: the sidecars' command links.
 * Redis sleeps first, so that their next commands arrive meanwhile and
 * are still unread when the links go.
 */
static void hook_kill_normal(world_t *w)
{
    redisContext *c = harness_redis_connect(w->h);
    long long own = harness_redis_int(harness_redis(w->h), "CLIENT ID");
    long long self = harness_redis_int(c, "CLIENT ID");
    redisReply *list = harness_command(c, "CLIENT LIST TYPE normal");
    const char *p = list->str;
    int sent = 1;

    assert_int_equal(list->type, REDIS_REPLY_STRING);
    assert_int_equal(redisAppendCommand(c, "DEBUG SLEEP 0.05"), REDIS_OK);
    for (int i = 0; i < 100 && (p = strstr(p, "id=")) != NULL; i++) {
        long long id = strtoll(p + 3, NULL, 10);

        p += 3;
        if (id == own || id == self)
            continue;
        assert_int_equal(redisAppendCommand(c, "CLIENT KILL ID %lld", id),
                         REDIS_OK);
        sent++;
    }
    freeReplyObject(list);
    for (int i = 0; i < sent; i++) {
        redisReply *rep;

        assert_int_equal(redisGetReply(c, (void **)&rep), REDIS_OK);
        freeReplyObject(rep);
    }
    redisFree(c);
    assert_true(sent > SIDECARS);
    w->fault_end = harness_now_ms();
}

static void fault_kill_normal(world_t *w)
{
    round_hooked(w, hook_kill_normal);
    for (int i = 0; i < SIDECARS; i++)
        expect_log(w->d[i], LOST_CMD);
}

static void hook_script_flush(world_t *w)
{
    redis_do(w, "SCRIPT FLUSH");
    w->fault_end = harness_now_ms();
}

/* The sidecars fell back to EVAL: they met NOSCRIPT. */
static void fault_script_flush(world_t *w)
{
    redisReply *rep;

    redis_do(w, "CONFIG RESETSTAT");
    round_hooked(w, hook_script_flush);

    /* The pipeline may have been done before the flush: write again. */
    round_run(w, 7, NULL);
    rep = harness_command(harness_redis(w->h), "INFO commandstats");
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    if (strstr(rep->str, "cmdstat_eval:") == NULL)
        fail_msg("no EVAL after SCRIPT FLUSH:\n%s", rep->str);
    freeReplyObject(rep);
}

/* Each sidecar notices, and says so, when it reconnects. */
static void hook_redis_lost(world_t *w)
{
    harness_redis_stop(w->h);
    harness_redis_start(w->h, w->redis_args);
    w->fault_end = harness_now_ms();
}

/*
 * The same while pipelines flow: a write answered after the restart may
 * have gone to either Redis, so the model starts after that round, from
 * values it does not know (only the last acknowledged write is checked).
 */
static void fault_redis_lost_writing(world_t *w)
{
    round_hooked(w, hook_redis_lost);
    model_reset(w);
    w->base_unknown = true;
    for (int i = 0; i < SIDECARS; i++)
        expect_log(w->d[i], "Redis sequence went back");
}

static void fault_redis_lost(world_t *w)
{
    harness_redis_stop(w->h);
    harness_redis_start(w->h, w->redis_args);
    model_reset(w);
    w->fault_end = harness_now_ms();
    for (int i = 0; i < SIDECARS; i++)
        expect_log(w->d[i], "Redis sequence went back");
}

/* SHUTDOWN with the AOF on: everything acknowledged is on disk. */
static void hook_redis_shutdown(world_t *w)
{
    redisContext *c = harness_redis_connect(w->h);
    redisReply *rep = redisCommand(c, "SHUTDOWN");

    if (rep != NULL)
        fail_msg("SHUTDOWN answered: %s", rep->str);
    redisFree(c);
    harness_redis_stop(w->h);
    harness_redis_start(w->h, w->redis_args);
    w->fault_end = harness_now_ms();
}

/* Redis kept its data: no sidecar may think it lost it. */
static void fault_redis_restart(world_t *w)
{
    round_hooked(w, hook_redis_shutdown);
    for (int i = 0; i < SIDECARS; i++) {
        expect_log(w->d[i], LOST_SUB);
        expect_log(w->d[i], "state=live");
        if (strstr(harness_daemon_log(w->d[i]), "went back") != NULL)
            fail_msg("s%d rebuilt its cache; log:\n%s", i,
                     harness_daemon_log(w->d[i]));
    }
}

/*
 * The pubsub client with the most output waiting, if that is over
 * STOP_OMEM (the stopped sidecar: the others keep reading), else -1;
 * *present tells whether client id is still there.
 */
static long long fullest_subscriber(world_t *w, long long id, bool *present)
{
    redisReply *list =
        harness_command(harness_redis(w->h), "CLIENT LIST TYPE pubsub");
    const char *p = list->str;
    long long best = -1, most = STOP_OMEM;

    assert_int_equal(list->type, REDIS_REPLY_STRING);
    *present = false;
    for (int i = 0; i < 100 && (p = strstr(p, "id=")) != NULL; i++) {
        long long cid = strtoll(p + 3, NULL, 10);
        const char *om = strstr(p, " omem=");
        long long omem = om != NULL ? strtoll(om + 6, NULL, 10) : 0;

        *present |= cid == id;
        if (omem >= most) {
            best = cid;
            most = omem;
        }
        p += 3;
    }
    freeReplyObject(list);
    return best;
}

/*
 * s2 is stopped while s0 and s1 write until Redis cuts s2's subscription
 * for its output buffer; then s2 resumes.
 */
static void fault_sidecar_stopped(world_t *w)
{
    long long stopped = -1;
    bool cut = false;
    int r;

    assert_int_equal(kill(w->d[2]->pid, SIGSTOP), 0);
    w->pad = STOP_PAD;
    for (r = 0; r < STOP_MAX_ROUNDS && !cut; r++) {
        bool present;
        long long full;

        round_run(w, 3, NULL);
        full = fullest_subscriber(w, stopped, &present);
        cut = stopped >= 0 && !present;
        if (full >= 0)
            stopped = full;
    }
    w->pad = 0;
    assert_int_equal(kill(w->d[2]->pid, SIGCONT), 0);
    w->fault_end = harness_now_ms();
    if (!cut)
        fail_msg("Redis never cut the stopped sidecar's subscription");
    printf("  subscription cut after %d rounds\n", r);
    expect_log(w->d[2], LOST_SUB);
}

static void hook_sidecar_kill(world_t *w)
{
    harness_daemon_kill(w->d[0]);
}

/* s0 dies under a pipeline; writes go on without it; it restarts. */
static void fault_sidecar_killed(world_t *w)
{
    round_hooked(w, hook_sidecar_kill);
    rounds(w, 2, 6);
    w->fault_end = harness_now_ms();
    sidecar_restart(w, 0);
}

static void cache_remove(world_t *w, int i)
{
    char path[HARNESS_PATH_MAX + 8];

    assert_int_equal(unlink(w->d[i]->cache), 0);
    snprintf(path, sizeof(path), "%s-wal", w->d[i]->cache);
    assert_true(unlink(path) == 0 || errno == ENOENT);
    snprintf(path, sizeof(path), "%s-shm", w->d[i]->cache);
    assert_true(unlink(path) == 0 || errno == ENOENT);
}

static void cache_garble(world_t *w, int i)
{
    char junk[8192];
    int fd = open(w->d[i]->cache, O_WRONLY | O_TRUNC);

    assert_true(fd >= 0);
    for (size_t k = 0; k < sizeof(junk); k++)
        junk[k] = (char)rnd(w);
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);
}

/* s0 stops, writes go on, its cache file is damaged, it restarts. */
static void cache_fault(world_t *w, void (*damage)(world_t *, int))
{
    meshsync_free(w->ms[0]);
    w->ms[0] = NULL;
    harness_daemon_stop_clean(w->d[0]);
    rounds(w, 2, 6);
    damage(w, 0);
    w->fault_end = harness_now_ms();
    sidecar_restart(w, 0);
}

static void fault_cache_deleted(world_t *w)
{
    cache_fault(w, cache_remove);
}

static void fault_cache_garbage(world_t *w)
{
    cache_fault(w, cache_garble);
    if (strstr(harness_daemon_log(w->d[0]), "cache file unusable") == NULL)
        fail_msg("the garbage cache was not moved aside; log:\n%s",
                 harness_daemon_log(w->d[0]));
}

/* One value written the way a Mesh server writes it. */
static void hand_write(world_t *w, int kind, int entry, const char *json)
{
    char id[16];
    redisReply *rep;

    entry_id(kind, entry, id, sizeof(id));
    if (kind == KIND_CONN && json != NULL)
        rep = harness_command(harness_redis(w->h),
                              "HSET mesh:connection-meta %s %s", id, json);
    else if (kind == KIND_CONN)
        rep = harness_command(harness_redis(w->h),
                              "HDEL mesh:connection-meta %s", id);
    else if (json != NULL)
        rep = harness_command(harness_redis(w->h),
                              "HSET mesh:roommeta:%s data %s", id, json);
    else
        rep = harness_command(harness_redis(w->h), "DEL mesh:roommeta:%s", id);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    freeReplyObject(rep);
    json_decref(w->base[kind][entry]);
    w->base[kind][entry] =
        json != NULL ? json_loads(json, JSON_DECODE_ANY, NULL) : NULL;
    w->from[kind][entry] = w->nops;
}

/* Every sidecar stops; Redis is written by hand; they all restart. */
static void fault_hand_writes(world_t *w)
{
    for (int i = 0; i < SIDECARS; i++) {
        meshsync_free(w->ms[i]);
        w->ms[i] = NULL;
        harness_daemon_stop_clean(w->d[i]);
    }
    for (int e = 0; e < 10; e++) {
        hand_write(w, KIND_CONN, e * 5, "{\"hand\":{\"n\":1},\"d\":[1]}");
        hand_write(w, KIND_ROOM, e * 5 + 1, "{\"hand\":2}");
        hand_write(w, KIND_CONN, e * 5 + 2, NULL);
        hand_write(w, KIND_ROOM, e * 5 + 3, NULL);
        hand_write(w, KIND_ROOM, e * 5 + 4, "\"text\"");
    }
    w->fault_end = harness_now_ms();
    for (int i = 0; i < SIDECARS; i++)
        sidecar_restart(w, i);
}

/* A value unique to this hand write, in one of the shapes JSON allows. */
static void hand_value(world_t *w, char *out, size_t size)
{
    unsigned n = w->hands;

    switch (rnd(w) % 5) {
    case 0:
        snprintf(out, size, "\"h%u\"", n);
        break;
    case 1:
        snprintf(out, size, "[%u,{\"h\":%u}]", n, n);
        break;
    case 2:
        snprintf(out, size, "{ \"hand\": %u, \"d\": { \"h%u\": true } }", n, n);
        break;
    default:
        snprintf(out, size, "{\"hand\":%u,\"d\":{\"h%u\":%u}}", n, n, n);
    }
}

/*
 * One hand write of the given sort (0 sets a connection, 1 deletes one,
 * 2 sets a room, 3 deletes one) to a random entry that ok allows; a
 * delete prefers an entry Redis holds. False if ok allowed none picked.
 */
static bool hand_write_one(world_t *w, int sort, bool ok[2][ENTRIES])
{
    int kind = sort / 2 == 0 ? KIND_CONN : KIND_ROOM;
    bool del = sort % 2 == 1;
    char value[96];
    int pick = -1;

    for (int t = 0; t < HAND_TRIES; t++) {
        int e = (int)(rnd(w) % ENTRIES);
        char id[16], *text;

        if (!ok[kind][e])
            continue;
        pick = e;
        entry_id(kind, e, id, sizeof(id));
        text = redis_value_text(w, kind, id);
        if (!del || text != NULL)
            t = HAND_TRIES;
        free(text);
    }
    if (pick < 0)
        return false;
    w->hands++;
    hand_value(w, value, sizeof(value));
    hand_write(w, kind, pick, del ? NULL : value);
    return true;
}

/* HAND_STEP hand writes of every sort to entries ok allows; how many. */
static int hand_writes_step(world_t *w, bool ok[2][ENTRIES])
{
    int n = 0;

    for (int k = 0; k < HAND_STEP; k++)
        n += hand_write_one(w, k % 4, ok);
    return n;
}

static void hook_hand_untouched(world_t *w)
{
    bool ok[2][ENTRIES];

    for (int e = 0; e < ENTRIES; e++)
        ok[KIND_CONN][e] = ok[KIND_ROOM][e] = true;
    for (size_t i = w->round_first; i < w->nops; i++)
        ok[w->ops[i].kind][w->ops[i].entry] = false;

    /* Some 30% of the entries are untouched by a round of BATCH writes. */
    assert_true(hand_writes_step(w, ok) > 0);
}

/*
 * Hand writes while the sidecars run: between rounds of the workload to
 * any entry, and during rounds (HOOK_AFTER answers in, the rest of the
 * pipelines in flight) only to entries no write of that round touches.
 * So no sidecar write to a hand-written entry is ever in flight, and the
 * entry's model can start again from the hand-written value; a hand
 * write racing with a pipelined write to the same entry could land
 * before or after it, which the model could not tell. The sidecars'
 * later writes to those entries race with the adoption instead, which
 * write.lua's "adopt" check settles.
 */
static void outside_writes(world_t *w)
{
    bool all[2][ENTRIES];

    for (int e = 0; e < ENTRIES; e++)
        all[KIND_CONN][e] = all[KIND_ROOM][e] = true;
    for (int r = 0; r < OUTSIDE_ROUNDS; r++) {
        assert_int_equal(hand_writes_step(w, all), HAND_STEP);
        round_run(w, 7, hook_hand_untouched);
    }
    assert_int_equal(hand_writes_step(w, all), HAND_STEP);
    w->fault_end = harness_now_ms();
    printf("  %u hand writes\n", w->hands);
}

static void expect_logged(world_t *w, int i, const char *needle)
{
    if (strstr(harness_daemon_log(w->d[i]), needle) == NULL)
        fail_msg("s%d: no %s logged; log:\n%s", i, needle,
                 harness_daemon_log(w->d[i]));
}

/*
 * The adoptions came from the notifications: no full scan ran since the
 * fault began (the next periodic one is 30 s after the lease was taken),
 * and the sidecars converged well before one could.
 */
static void check_notified(world_t *w)
{
    for (int i = 0; i < SIDECARS; i++) {
        expect_logged(w, i, "keyspace notifications on");
        if (strstr(log_since_mark(w, i), SCRUB_ALL) != NULL)
            fail_msg("s%d scanned everything during the fault; log:\n%s", i,
                     harness_daemon_log(w->d[i]));
    }
    if (w->converged_ms >= NOTIFIED_MS)
        fail_msg("converged in %" PRId64 " ms, not under %d: notifications "
                 "unused?",
                 w->converged_ms, NOTIFIED_MS);
}

/* How many outside writes sidecar i's full scans found since the mark. */
static unsigned long long scrub_found(world_t *w, int i)
{
    static const char needle[] = SCRUB_ALL " found=";
    const char *p = log_since_mark(w, i);
    unsigned long long found = 0;

    for (int k = 0; k < 100000 && (p = strstr(p, needle)) != NULL; k++) {
        p += sizeof(needle) - 1;
        found += strtoull(p, NULL, 10);
    }
    return found;
}

/* Without notifications the periodic scans found the hand writes. */
static void check_scrubbed(world_t *w)
{
    unsigned long long found = 0;

    for (int i = 0; i < SIDECARS; i++) {
        expect_logged(w, i, "keyspace notifications off");
        found += scrub_found(w, i);
    }
    printf("  full scans found %llu outside writes\n", found);
    if (found == 0)
        fail_msg("no full scan found a hand write");
}

static void fault_outside_notified(world_t *w)
{
    w->converged = check_notified;
    outside_writes(w);
}

static void fault_outside_scrubbed(world_t *w)
{
    w->converged = check_scrubbed;
    outside_writes(w);
}

/* --- scenarios -------------------------------------------------------- */

#define SCENARIO(name, fault)                                                  \
    static void test_##name(void **state)                                      \
    {                                                                          \
        scenario(*state, #name, fault);                                        \
    }

SCENARIO(kill_pubsub, fault_kill_pubsub)
SCENARIO(kill_normal, fault_kill_normal)
SCENARIO(script_flush, fault_script_flush)
SCENARIO(redis_lost_data, fault_redis_lost)
SCENARIO(redis_lost_writing, fault_redis_lost_writing)
SCENARIO(redis_restart_aof, fault_redis_restart)
SCENARIO(sidecar_stopped, fault_sidecar_stopped)
SCENARIO(sidecar_killed, fault_sidecar_killed)
SCENARIO(cache_deleted, fault_cache_deleted)
SCENARIO(cache_garbage, fault_cache_garbage)
SCENARIO(hand_writes, fault_hand_writes)
SCENARIO(outside_writes_notified, fault_outside_notified)
SCENARIO(outside_writes_scrubbed, fault_outside_scrubbed)

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill_pubsub, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_normal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_script_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_lost_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_lost_writing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_restart_aof, setup_aof,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sidecar_stopped,
                                        setup_small_pubsub_buffer, teardown),
        cmocka_unit_test_setup_teardown(test_sidecar_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hand_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outside_writes_notified,
                                        setup_notify, teardown),
        cmocka_unit_test_setup_teardown(test_outside_writes_scrubbed,
                                        setup_fast_scrub, teardown),
    };
    char pattern[128];

    /*
     * A pattern on the command line runs only the tests it matches; a
     * word without * or ? matches the tests whose names hold it.
     */
    if (argc > 1 && strpbrk(argv[1], "*?") == NULL) {
        snprintf(pattern, sizeof(pattern), "*%s*", argv[1]);
        cmocka_set_test_filter(pattern);
    } else if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
