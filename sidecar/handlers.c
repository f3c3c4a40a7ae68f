/*
 * handlers.c - decodes request frames and runs the operations of
 * schema/PROTOCOL.md (see handlers.h). Reads are answered from the cache
 * at once; writes go to the write pipeline and are answered when Redis
 * has them. Loop thread only.
 */
#include "handlers.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "bulk.h"
#include "direct.h"
#include "frame.h"
#include "log.h"
#include "mirror.h"
#include "registry.h"
#include "scrub.h"
#include "strategy.h"
#include "waits.h"
#include "watch.h"
#include "writes.h"

/* What a reply adds to its value: the id, ok, version and stale fields. */
#define REPLY_OVERHEAD 64

/* What a write's completion needs to answer. */
typedef struct pending_s {
    ms_session_t *session;
    uint64_t id;
    ms_app_t *app; /* a close: the connection no session closes again */
    char *conn;
    size_t conn_len;
} pending_t;

void ms_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);

    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}


static void pack_id(msgpack_packer *pk, const ms_request_t *rq)
{
    ms_pack_str(pk, "id");
    if (rq != NULL && rq->has_id)
        msgpack_pack_uint64(pk, rq->id);
    else
        msgpack_pack_nil(pk);
}


/* Starts {id, ok: true, ...} with room for n more fields. */
msgpack_packer *ms_reply_ok(ms_session_t *s, const ms_request_t *rq, size_t n)
{
    msgpack_packer *pk = ms_session_reply_begin(s);

    msgpack_pack_map(pk, 2 + n);
    pack_id(pk, rq);
    ms_pack_str(pk, "ok");
    msgpack_pack_true(pk);
    return pk;
}


void ms_reply_error(ms_session_t *s, const ms_request_t *rq, int code,
                    const char *msg)
{
    msgpack_packer *pk = ms_session_reply_begin(s);

    msgpack_pack_map(pk, 3);
    pack_id(pk, rq);
    ms_pack_str(pk, "ok");
    msgpack_pack_false(pk);
    ms_pack_str(pk, "error");
    msgpack_pack_map(pk, 2);
    ms_pack_str(pk, "code");
    ms_pack_str(pk, ms_error_name(code));
    ms_pack_str(pk, "message");
    ms_pack_str(pk, msg);
    ms_session_reply_end(s);
}


void ms_handlers_reply_error(ms_session_t *s, int code, const char *msg)
{
    ms_reply_error(s, NULL, code, msg);
}


/* Byte by byte: a request's keys and ops mostly differ at the first. */
static bool key_is(const msgpack_object *k, const char *name)
{
    const char *p = k->via.str.ptr;
    size_t n = k->via.str.size;

    if (k->type != MSGPACK_OBJECT_STR)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (name[i] == '\0' || name[i] != p[i])
            return false;
    }
    return name[n] == '\0';
}


/* A request is a handful of keys; more is not a request. */
#define REQUEST_KEYS_MAX 32

const msgpack_object *ms_request_field(const ms_request_t *rq, const char *name)
{
    const msgpack_object *map = rq->map;

    for (uint32_t i = 0; map != NULL && i < map->via.map.size; i++) {
        if (key_is(&map->via.map.ptr[i].key, name))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}


/* The first key that appears twice, or NULL. */
static const msgpack_object *duplicate_key(const msgpack_object *map)
{
    const msgpack_object_kv *kv = map->via.map.ptr;

    for (uint32_t i = 0; i < map->via.map.size; i++) {
        for (uint32_t j = 0; j < i; j++) {
            if (kv[i].key.type == MSGPACK_OBJECT_STR &&
                kv[j].key.type == MSGPACK_OBJECT_STR &&
                kv[i].key.via.str.size == kv[j].key.via.str.size &&
                memcmp(kv[i].key.via.str.ptr, kv[j].key.via.str.ptr,
                       kv[i].key.via.str.size) == 0)
                return &kv[i].key;
        }
    }
    return NULL;
}


/* Picks the known fields out of the request map. */
static int parse_request(const msgpack_object *map, ms_request_t *rq,
                         ms_error_t *err)
{
    static const char *names[] = {"op",      "conn",       "room",
                                  "value",   "strategy",   "minVersion",
                                  "timeout", "consistency"};
    const msgpack_object **slots[] = {
        &rq->op,       &rq->conn,        &rq->room,    &rq->value,
        &rq->strategy, &rq->min_version, &rq->timeout, &rq->consistency};
    const msgpack_object *id = NULL;
    const msgpack_object *dup;

    _Static_assert(sizeof(names) / sizeof(names[0]) ==
                       sizeof(slots) / sizeof(slots[0]),
                   "every request key needs its slot");

    /* The id first, so that any later complaint can still carry it. */
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;

        if (key_is(k, "id")) {
            if (id != NULL)
                return ms_error_set(err, MS_EINVAL, "duplicate key 'id'");
            id = v;
            continue;
        }
        for (size_t j = 0; j < sizeof(names) / sizeof(names[0]); j++) {
            if (key_is(k, names[j]))
                *slots[j] = v;
        }
    }

    if (id == NULL)
        return ms_error_set(err, MS_EINVAL, "request has no 'id'");
    if (id->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return ms_error_set(err, MS_EINVAL, "'id' must be an unsigned integer");
    rq->id = id->via.u64;
    rq->has_id = true;
    rq->map = map;
    if (map->via.map.size > REQUEST_KEYS_MAX)
        return ms_error_set(err, MS_EINVAL, "request has more than %d keys",
                            REQUEST_KEYS_MAX);
    dup = duplicate_key(map);
    if (dup != NULL && dup->via.str.size <= 40)
        return ms_error_set(err, MS_EINVAL, "duplicate key '%.*s'",
                            (int)dup->via.str.size, dup->via.str.ptr);
    if (dup != NULL)
        return ms_error_set(err, MS_EINVAL, "duplicate key");
    if (rq->op == NULL)
        return ms_error_set(err, MS_EINVAL, "request has no 'op'");
    if (rq->op->type != MSGPACK_OBJECT_STR)
        return ms_error_set(err, MS_EINVAL, "'op' must be a string");
    return 0;
}


int ms_request_check_id(const ms_app_t *app, const msgpack_object *o,
                        const char *name, ms_error_t *err)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return ms_error_set(err, MS_EINVAL, "'%s' must be a string", name);
    if (o->via.str.size == 0)
        return ms_error_set(err, MS_EINVAL, "'%s' must not be empty", name);
    if (o->via.str.size > app->cfg->max_id)
        return ms_error_set(err, MS_ETOOLARGE, "'%s' is longer than %zu bytes",
                            name, app->cfg->max_id);
    if (memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL ||
        !ms_utf8_valid(o->via.str.ptr, o->via.str.size))
        return ms_error_set(err, MS_EINVAL,
                            "'%s' must be UTF-8 text without NUL", name);
    return 0;
}


/*
 * Finds the entry a request names: its room, its conn, or for conn.*
 * without one, the connection bound by hello.
 */
int ms_request_target(const ms_app_t *app, ms_session_t *s,
                      const ms_request_t *rq, ms_kind_t kind, const char **id,
                      size_t *len, ms_error_t *err)
{
    const msgpack_object *o = kind == MS_KIND_ROOM ? rq->room : rq->conn;
    const char *name = kind == MS_KIND_ROOM ? "room" : "conn";
    int rc;

    if (o == NULL && kind == MS_KIND_CONN) {
        *id = ms_session_conn(s, len);
        if (*id != NULL)
            return 0;
        return ms_error_set(err, MS_EINVAL,
                            "no 'conn' given and no connection bound by "
                            "hello");
    }
    if (o == NULL)
        return ms_error_set(err, MS_EINVAL, "request has no '%s'", name);
    rc = ms_request_check_id(app, o, name, err);
    if (rc < 0)
        return rc;
    *id = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}


static void op_ping(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    msgpack_packer *pk = ms_reply_ok(s, rq, 1);

    (void)app;
    ms_pack_str(pk, "value");
    ms_pack_str(pk, "pong");
    ms_session_reply_end(s);
}


/* What a health request carries while it asks Redis for its sequence. */
typedef struct health_s {
    ms_app_t *app;
    ms_session_t *session;
    uint64_t id;
} health_t;

/*
 * {state, ready, seq, redisSeq, lag, conns, rooms, scrubber,
 * keyspaceEvents, adopted, cacheFailing}: seq is the highest version this
 * sidecar knows of, redisSeq Redis's sequence (nil when it could not be
 * read), lag the difference; scrubber, keyspaceEvents and adopted
 * describe the scrub (scrub.h); cacheFailing says the cache file could
 * not be written (ms_mirror_cache_failed).
 */
static void reply_health(ms_app_t *app, ms_session_t *s, uint64_t id,
                         const uint64_t *redis_seq)
{
    ms_request_t rq = {.id = id, .has_id = true};
    const char *state = ms_mirror_state(app);
    uint64_t seq = ms_mirror_high(app);
    ms_scrub_stats_t scrub;
    msgpack_packer *pk = ms_reply_ok(s, &rq, 11);

    ms_pack_str(pk, "state");
    ms_pack_str(pk, state);
    ms_pack_str(pk, "ready");
    if (strcmp(state, "live") == 0)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    ms_pack_str(pk, "seq");
    msgpack_pack_uint64(pk, seq);
    ms_pack_str(pk, "redisSeq");
    if (redis_seq != NULL)
        msgpack_pack_uint64(pk, *redis_seq);
    else
        msgpack_pack_nil(pk);
    ms_pack_str(pk, "lag");
    if (redis_seq != NULL)
        msgpack_pack_uint64(pk, *redis_seq > seq ? *redis_seq - seq : 0);
    else
        msgpack_pack_nil(pk);
    ms_pack_str(pk, "conns");
    msgpack_pack_int64(pk, ms_cache_count(app->cache, MS_KIND_CONN));
    ms_pack_str(pk, "rooms");
    msgpack_pack_int64(pk, ms_cache_count(app->cache, MS_KIND_ROOM));

    ms_scrub_stats(app, &scrub);
    ms_pack_str(pk, "scrubber");
    if (scrub.leader)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    ms_pack_str(pk, "keyspaceEvents");
    if (scrub.keyspace < 0)
        msgpack_pack_nil(pk);
    else if (scrub.keyspace > 0)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    ms_pack_str(pk, "adopted");
    msgpack_pack_uint64(pk, scrub.adopted);
    ms_pack_str(pk, "cacheFailing");
    if (ms_mirror_cache_failing(app))
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    ms_session_reply_end(s);
}


static void on_health_seq(void *arg, redisReply *r, int err)
{
    health_t *h = arg;
    uint64_t seq = 0;
    bool known = err == 0 && r != NULL &&
                 (r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_STRING);

    if (known && r->type == REDIS_REPLY_STRING)
        seq = strtoull(r->str, NULL, 10);
    if (!ms_session_closed(h->session))
        reply_health(h->app, h->session, h->id, known ? &seq : NULL);
    ms_session_release(h->session, 0);
    free(h);
}


/* Reports the sync state; when Redis is reachable, how far behind. */
static void op_health(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    const char *argv[] = {"GET", app->layout.seq};
    size_t lens[] = {3, strlen(app->layout.seq)};
    health_t *h = ms_malloc(sizeof(*h));

    h->app = app;
    h->session = s;
    h->id = rq->id;
    ms_session_hold(s, 0);
    if (app->redis == NULL ||
        ms_redis_command(app->redis, 2, argv, lens, on_health_seq, h) < 0)
        on_health_seq(h, NULL, MS_EUNAVAIL);
}


static void op_hello(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    ms_error_t err;
    msgpack_packer *pk;

    if (rq->conn == NULL) {
        ms_reply_error(s, rq, MS_EINVAL, "hello needs 'conn'");
        return;
    }
    if (ms_request_check_id(app, rq->conn, "conn", &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    ms_session_bind(s, rq->conn->via.str.ptr, rq->conn->via.str.size);
    pk = ms_reply_ok(s, rq, 1);
    ms_pack_str(pk, "conn");
    msgpack_pack_str(pk, rq->conn->via.str.size);
    msgpack_pack_str_body(pk, rq->conn->via.str.ptr, rq->conn->via.str.size);
    ms_session_reply_end(s);
}


/*
 * Answers a read: from the cache when app is given (stale, and then how
 * many versions behind, as the mirror says), else from Redis (never
 * stale).
 */
static void reply_value(ms_session_t *s, const ms_request_t *rq, const char *mp,
                        size_t mp_len, uint64_t version, const ms_app_t *app)
{
    bool stale = app != NULL && ms_mirror_stale(app);
    uint64_t behind;
    msgpack_packer *pk = ms_reply_ok(s, rq, stale ? 4 : 3);

    ms_pack_str(pk, "value");
    if (mp != NULL)
        pk->callback(pk->data, mp, mp_len);
    else
        msgpack_pack_nil(pk);
    ms_pack_str(pk, "version");
    msgpack_pack_uint64(pk, version);
    ms_pack_str(pk, "stale");
    if (!stale) {
        msgpack_pack_false(pk);
        ms_session_reply_end(s);
        return;
    }
    msgpack_pack_true(pk);
    ms_pack_str(pk, "behind");
    if (ms_mirror_behind(app, &behind))
        msgpack_pack_uint64(pk, behind);
    else
        msgpack_pack_nil(pk);
    ms_session_reply_end(s);
}


static void reply_entry(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                        ms_kind_t kind, const char *id, size_t len)
{
    ms_cache_entry_t e;

    if (ms_cache_get(app->cache, kind, id, len, &e) < 0) {
        ms_reply_error(s, rq, MS_EINTERNAL, "cache read failed");
        return;
    }
    reply_value(s, rq, e.present ? e.mp : NULL, e.mp_len, e.version, app);
}


void ms_handlers_answer_value(ms_session_t *s, uint64_t req_id, const char *mp,
                              size_t mp_len, uint64_t version)
{
    ms_request_t rq = {.id = req_id, .has_id = true};

    reply_value(s, &rq, mp, mp_len, version, NULL);
}


void ms_handlers_answer_get(ms_app_t *app, ms_session_t *s, uint64_t req_id,
                            ms_kind_t kind, const char *id, size_t len)
{
    ms_request_t rq = {.id = req_id, .has_id = true};

    reply_entry(app, s, &rq, kind, id, len);
}


void ms_handlers_answer_error(ms_session_t *s, uint64_t req_id, int code,
                              const char *msg)
{
    ms_request_t rq = {.id = req_id, .has_id = true};

    ms_reply_error(s, &rq, code, msg);
}


/* Reads minVersion and timeout (milliseconds, default 1 s, at most 60 s). */
static int read_wait_options(const ms_request_t *rq, uint64_t *timeout,
                             ms_error_t *err)
{
    *timeout = 1000;
    if (rq->min_version != NULL &&
        rq->min_version->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return ms_error_set(err, MS_EINVAL,
                            "'minVersion' must be an unsigned integer");
    if (rq->timeout == NULL)
        return 0;
    if (rq->timeout->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        rq->timeout->via.u64 > 60000)
        return ms_error_set(err, MS_EINVAL,
                            "'timeout' must be 0 to 60000 milliseconds");
    *timeout = rq->timeout->via.u64;
    return 0;
}


/* consistency: "cache" (the default) or "strong" (read from Redis). */
static int read_consistency(const ms_request_t *rq, bool *strong,
                            ms_error_t *err)
{
    *strong = false;
    if (rq->consistency == NULL || key_is(rq->consistency, "cache"))
        return 0;
    if (key_is(rq->consistency, "strong")) {
        *strong = true;
        return 0;
    }
    return ms_error_set(err, MS_EINVAL,
                        "'consistency' must be \"cache\" or \"strong\"");
}


static void op_get(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                   ms_kind_t kind)
{
    ms_cache_entry_t e;
    ms_error_t err;
    uint64_t timeout;
    size_t reply_bytes;
    bool strong;
    const char *id;
    size_t len;

    if (ms_request_target(app, s, rq, kind, &id, &len, &err) < 0 ||
        read_wait_options(rq, &timeout, &err) < 0 ||
        read_consistency(rq, &strong, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    if (ms_cache_get(app->cache, kind, id, len, &e) < 0) {
        ms_reply_error(s, rq, MS_EINTERNAL, "cache read failed");
        return;
    }

    /* A reply made later counts against the client's output limit, at
     * the size the value has now (see ms_session_hold). */
    reply_bytes = REPLY_OVERHEAD + (e.present ? e.mp_len : 0);
    if (strong) {
        ms_direct_read(app, s, rq->id, kind, id, len,
                       rq->min_version != NULL ? rq->min_version->via.u64 : 0,
                       MS_EUNAVAIL, reply_bytes);
        return;
    }
    if (rq->min_version != NULL && e.version < rq->min_version->via.u64) {
        ms_waits_add(app, s, rq->id, kind, id, len, rq->min_version->via.u64,
                     timeout, reply_bytes);
        return;
    }
    reply_value(s, rq, e.present ? e.mp : NULL, e.mp_len, e.version, app);
}


static void on_write_done(void *arg, int code, const char *msg,
                          uint64_t version)
{
    pending_t *p = arg;
    ms_request_t rq = {.id = p->id, .has_id = true};

    if (!ms_session_closed(p->session)) {
        if (code < 0) {
            ms_reply_error(p->session, &rq, code, msg);
        } else {
            msgpack_packer *pk = ms_reply_ok(p->session, &rq, 1);

            ms_pack_str(pk, "version");
            msgpack_pack_uint64(pk, version);
            ms_session_reply_end(p->session);
        }
    }
    ms_session_release(p->session, 0);
    free(p);
}


/* A close done: a session that bound the connection lets it go. */
static void on_close_done(void *arg, int code, const char *msg,
                          uint64_t version)
{
    pending_t *p = arg;
    char *conn = p->conn;

    if (code == 0)
        ms_registry_forget(p->app, conn, p->conn_len);
    on_write_done(arg, code, msg, version);
    free(conn);
}


static void submit(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                   ms_kind_t kind, const char *id, size_t len,
                   ms_strategy_t strategy, json_t *update)
{
    pending_t *p = ms_calloc(1, sizeof(*p));

    p->session = s;
    p->id = rq->id;
    ms_session_hold(s, 0);
    ms_writes_submit(app, kind, id, len, strategy, update, on_write_done, p);
}


static void op_set(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                   ms_kind_t kind)
{
    ms_strategy_t strategy = MS_STRATEGY_REPLACE;
    json_t *update = NULL;
    ms_error_t err;
    const char *id;
    size_t len;

    if (ms_request_target(app, s, rq, kind, &id, &len, &err) < 0)
        goto failed;
    if (rq->value == NULL) {
        ms_error_set(&err, MS_EINVAL, "request has no 'value'");
        goto failed;
    }
    if (rq->strategy != NULL &&
        (rq->strategy->type != MSGPACK_OBJECT_STR ||
         ms_strategy_parse(rq->strategy->via.str.ptr,
                           rq->strategy->via.str.size, &strategy) < 0)) {
        ms_error_set(&err, MS_EINVAL,
                     "'strategy' must be \"replace\", \"merge\" or "
                     "\"deepMerge\"");
        goto failed;
    }
    if (ms_value_from_msgpack(rq->value, &app->limits, &update, &err) < 0)
        goto failed;

    /* A nil value clears the entry, whatever the strategy. */
    if (json_is_null(update)) {
        json_decref(update);
        update = NULL;
    }
    submit(app, s, rq, kind, id, len, strategy, update);
    return;

failed:
    ms_reply_error(s, rq, err.code, err.msg);
}


static void op_delete(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                      ms_kind_t kind)
{
    ms_error_t err;
    const char *id;
    size_t len;

    if (ms_request_target(app, s, rq, kind, &id, &len, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    submit(app, s, rq, kind, id, len, MS_STRATEGY_REPLACE, NULL);
}


static void op_conn_get(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_get(a, s, r, MS_KIND_CONN);
}
static void op_conn_set(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_set(a, s, r, MS_KIND_CONN);
}
/*
 * A connection's close: its metadata goes, and with it its place in
 * Mesh's registry and its rooms, in one step (schema/write.lua).
 */
static void op_conn_close(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    ms_error_t err;
    const char *id;
    size_t len;
    pending_t *p;

    if (ms_request_target(a, s, r, MS_KIND_CONN, &id, &len, &err) < 0) {
        ms_reply_error(s, r, err.code, err.msg);
        return;
    }
    p = ms_calloc(1, sizeof(*p));
    p->session = s;
    p->id = r->id;
    p->app = a;
    p->conn = ms_strndup(id, len);
    p->conn_len = len;
    ms_session_hold(s, 0);
    ms_writes_close_conn(a, id, len, NULL, on_close_done, p);
}
static void op_room_get(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_get(a, s, r, MS_KIND_ROOM);
}
static void op_room_set(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_set(a, s, r, MS_KIND_ROOM);
}
static void op_room_delete(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_delete(a, s, r, MS_KIND_ROOM);
}

static const ms_op_t core_ops[] = {
    {"conn.get", op_conn_get},     {"room.get", op_room_get},
    {"conn.set", op_conn_set},     {"room.set", op_room_set},
    {"conn.close", op_conn_close}, {"room.delete", op_room_delete},
    {"hello", op_hello},           {"ping", op_ping},
    {"health", op_health},         {NULL, NULL},
};

/* Every module's operations. */
static const ms_op_t *const op_tables[] = {core_ops, ms_watch_ops, ms_bulk_ops,
                                           ms_registry_ops};

/* Valid UTF-8 without control characters: fit for a one-line message. */
static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    }
    return ms_utf8_valid(s, n);
}


static void dispatch(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    const msgpack_object *op = rq->op;
    char msg[96];

    for (size_t t = 0; t < sizeof(op_tables) / sizeof(op_tables[0]); t++) {
        for (const ms_op_t *o = op_tables[t]; o->name != NULL; o++) {
            if (key_is(op, o->name)) {
                o->fn(app, s, rq);
                return;
            }
        }
    }
    /* The name is echoed only when it is short, printable UTF-8. */
    if (op->via.str.size <= 40 && printable(op->via.str.ptr, op->via.str.size))
        snprintf(msg, sizeof(msg), "unknown op '%.*s'", (int)op->via.str.size,
                 op->via.str.ptr);
    else
        snprintf(msg, sizeof(msg), "unknown op");
    ms_reply_error(s, rq, MS_EUNKNOWNOP, msg);
}


void ms_handlers_session_closed(ms_app_t *app, ms_session_t *s)
{
    ms_watch_session_closed(app, s);
    ms_registry_session_closed(app, s);
}


void ms_handlers_frame(ms_app_t *app, ms_session_t *s, const char *body,
                       size_t len)
{
    msgpack_unpack_return rc;
    msgpack_object map;
    ms_request_t rq;
    ms_error_t err;
    size_t off = 0;

    memset(&rq, 0, sizeof(rq));

    /*
     * msgpack-c decodes at most 32 levels: the request map and a value of
     * MS_VALUE_DEPTH_CAP. The configured, lower, limit is the value
     * conversion's to enforce, once the id is known.
     */
    if (ms_msgpack_check(body, len, MS_VALUE_DEPTH_CAP + 1, &err) < 0) {
        rq.has_id = err.code == MS_ETOOLARGE &&
                    ms_msgpack_map_uint(body, len, "id", &rq.id) == 1;
        if (err.code == MS_ETOOLARGE)
            snprintf(err.msg, sizeof(err.msg),
                     "value nests deeper than %d levels", app->cfg->max_depth);
        ms_reply_error(s, &rq, err.code, err.msg);
        return;
    }
    rc = msgpack_unpack(body, len, &off, ms_session_zone(s), &map);
    if (rc != MSGPACK_UNPACK_SUCCESS && rc != MSGPACK_UNPACK_EXTRA_BYTES) {
        ms_reply_error(s, NULL, MS_EINVAL, "frame is not msgpack");
        goto done;
    }
    if (map.type != MSGPACK_OBJECT_MAP) {
        ms_reply_error(s, NULL, MS_EINVAL, "request must be a map");
        goto done;
    }
    if (parse_request(&map, &rq, &err) < 0) {
        ms_reply_error(s, &rq, err.code, err.msg);
        goto done;
    }
    dispatch(app, s, &rq);

done:
    ms_session_zone_done(s, len);
}
