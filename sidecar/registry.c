/*
 * registry.c - Mesh's connection registry and instance liveness (see
 * registry.h): conn.open and bound connections, the heartbeat, the
 * reaper of dead instances, and the close of owned connections at
 * shutdown. Loop thread only.
 */
#define _GNU_SOURCE /* tdestroy, twalk_r */
#include "registry.h"

#include <inttypes.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "alloc.h"
#include "log.h"
#include "mirror.h"
#include "writes.h"

/* Mesh's cleanup lock lasts this long unless given back sooner. */
#define LOCK_MS "10000"
/* The COUNT hint per step of the search for dead instances. */
#define DEAD_BATCH "500"

/* A connection opened with bind, closed when its session ends. */
typedef struct bound_s {
    LIST_ENTRY(bound_s) link;
    ms_session_t *session;
    char *id;
    size_t len;
} bound_t;

/*
 * A set of strings (ids, instances), binary-safe, kept in a tree; a
 * connection to close also names the instance it belonged to.
 */
typedef struct str_s {
    char *s;
    size_t len;
    char *owner;
} str_t;

struct ms_registry_s {
    ms_app_t *app;
    bool live;
    bool stopping;
    bool busy;          /* the shutdown's closes are under way */
    bool reaping;       /* holds the cleanup lock and reaps */
    unsigned gen;       /* bumped when the links go: late replies are dropped */
    uint64_t last_beat; /* uv_hrtime() of the last heartbeat, 0: none yet */
    LIST_HEAD(, bound_s) bound;
    void *retry;    /* tree of str_t: bound closes to try again */
    void *dead;     /* tree of str_t: dead instances found by this reap */
    void *doomed;   /* tree of str_t: connections it closes */
    size_t ndead;   /* in dead */
    size_t ndoomed; /* in doomed */
    size_t waiting; /* replies or closes this reap still waits for */
    bool failed;    /* a close of this reap failed */
    bool locked;    /* this reap holds Mesh's cleanup lock */
    str_t **todo;   /* the doomed connections, to close in order */
    size_t ntodo;
    size_t next; /* the next one of todo to close */
    uint64_t reap_started;
    unsigned open_timers;
    uv_timer_t beat_timer;
    uv_timer_t reap_timer;
};

/* What a call carries to its reply. */
typedef struct call_s {
    ms_app_t *app;
    unsigned gen;
    ms_session_t *session; /* conn.open: the request's session */
    uint64_t req_id;
    bool bind;
    char *conn;
    size_t conn_len;
} call_t;

static call_t *call_new(ms_app_t *app)
{
    call_t *c = ms_calloc(1, sizeof(*c));

    c->app = app;
    c->gen = app->registry->gen;
    return c;
}


static void call_free(call_t *c)
{
    free(c->conn);
    free(c);
}


/* The reply belongs to the links and reap it was sent for. */
static bool call_current(const call_t *c)
{
    const ms_registry_t *r = c->app->registry;

    return r != NULL && c->gen == r->gen && r->live;
}


/*
 * Sends a step of schema/registry.lua with up to two arguments of its
 * own. Returns 0 (cb will be called), or MS_EUNAVAIL.
 */
static int step_call(ms_app_t *app, const char *step, const char *a,
                     size_t a_len, const char *b, ms_redis_reply_cb cb,
                     call_t *c)
{
    const ms_layout_t *l = &app->layout;
    const char *argv[7] = {
        l->connections,    l->instances,          step,
        l->key_prefix,     app->cfg->instance_id, a != NULL ? a : "",
        b != NULL ? b : ""};
    size_t argvlen[7];
    int argc = 5 + (a != NULL) + (b != NULL);

    /* a may be an id straight from a frame: not NUL-terminated. */
    for (int i = 0; i < 7; i++)
        argvlen[i] = i == 5 && a != NULL ? a_len : strlen(argv[i]);
    if (app->redis == NULL || ms_redis_script(app->redis, MS_SCRIPT_REGISTRY, 2,
                                              argc, argv, argvlen, cb, c) < 0)
        return MS_EUNAVAIL;
    return 0;
}


/* --- string sets ------------------------------------------------------- */

static int str_compare(const void *a, const void *b)
{
    const str_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int rc = memcmp(x->s, y->s, n);

    if (rc != 0)
        return rc;
    return x->len < y->len ? -1 : x->len > y->len;
}


/* Adds a copy of s; returns true if it was not there yet. */
static bool str_add(void **tree, const char *s, size_t len, const char *owner,
                    size_t owner_len)
{
    str_t key = {(char *)s, len, NULL};
    str_t *e;
    void *slot;

    if (tfind(&key, tree, str_compare) != NULL)
        return false;
    e = ms_malloc(sizeof(*e));
    e->s = ms_strndup(s, len);
    e->len = len;
    e->owner = owner != NULL ? ms_strndup(owner, owner_len) : NULL;
    slot = tsearch(e, tree, str_compare);
    if (slot == NULL)
        ms_oom();
    return true;
}


static void str_free(void *p)
{
    str_t *e = p;

    free(e->s);
    free(e->owner);
    free(e);
}


typedef struct walk_s {
    ms_app_t *app;
    void (*fn)(ms_app_t *app, const str_t *e);
} walk_t;

static void walk_cb(const void *node, VISIT which, void *closure)
{
    const walk_t *w = closure;

    if (which == postorder || which == leaf)
        w->fn(w->app, *(str_t *const *)node);
}


/* Calls fn for each string; fn must not change the tree. */
static void str_each(ms_app_t *app, void *tree,
                     void (*fn)(ms_app_t *app, const str_t *e))
{
    walk_t w = {app, fn};

    twalk_r(tree, walk_cb, &w);
}


/* --- closing connections ------------------------------------------------ */

static void close_bound(ms_app_t *app, const char *id, size_t len);

/*
 * A bound connection's close failed for want of Redis: it is tried again
 * when the links come back (a conflict means it moved: left alone).
 */
static void on_bound_closed(void *arg, int code, const char *msg,
                            uint64_t version)
{
    call_t *c = arg;
    ms_registry_t *r = c->app->registry;

    (void)version;
    if ((code == MS_EUNAVAIL || code == MS_ETIMEOUT) && r != NULL &&
        !r->stopping) {
        ms_log_warn("closing a bound connection failed, will retry",
                    "error=\"%s\"", msg);
        str_add(&r->retry, c->conn, c->conn_len, NULL, 0);
    } else if (code == MS_ECONFLICT) {
        ms_log_info("bound connection moved to another instance, left open",
                    NULL);
    } else if (code < 0) {
        ms_log_warn("closing a bound connection failed", "error=\"%s\"", msg);
    }
    call_free(c);
}


/* Closes a connection of this instance (only while it still is). */
static void close_bound(ms_app_t *app, const char *id, size_t len)
{
    call_t *c = call_new(app);

    c->conn = ms_strndup(id, len);
    c->conn_len = len;
    ms_writes_close_conn(app, id, len, app->cfg->instance_id, on_bound_closed,
                         c);
}


static void retry_one(ms_app_t *app, const str_t *e)
{
    close_bound(app, e->s, e->len);
}


/* The links are back: the closes that failed go again. */
static void retry_bound(ms_app_t *app)
{
    ms_registry_t *r = app->registry;
    void *retry = r->retry;

    /* A close failing again at once adds to a fresh tree. */
    r->retry = NULL;
    str_each(app, retry, retry_one);
    tdestroy(retry, str_free);
}


static void bound_remove(bound_t *b)
{
    LIST_REMOVE(b, link);
    free(b->id);
    free(b);
}


void ms_registry_forget(ms_app_t *app, const char *id, size_t len)
{
    ms_registry_t *r = app->registry;
    bound_t *b, *next;

    if (r == NULL)
        return;
    for (b = LIST_FIRST(&r->bound); b != NULL; b = next) {
        next = LIST_NEXT(b, link);
        if (b->len == len && memcmp(b->id, id, len) == 0)
            bound_remove(b);
    }
}


void ms_registry_session_closed(ms_app_t *app, ms_session_t *s)
{
    ms_registry_t *r = app->registry;
    bound_t *b, *next;

    if (r == NULL)
        return;
    for (b = LIST_FIRST(&r->bound); b != NULL; b = next) {
        next = LIST_NEXT(b, link);
        if (b->session != s)
            continue;

        /* At shutdown the owned connections are closed all together. */
        if (!r->stopping) {
            ms_log_debug("closing a bound connection", "conn_bytes=%zu",
                         b->len);
            close_bound(app, b->id, b->len);
        }
        bound_remove(b);
    }
}


/*
 * Answers a request Redis did not carry out: unreachable or too slow
 * (unavailable, timeout: worth a retry), or an error reply, say a key of
 * a foreign type (internal, with Redis's words: it will fail again).
 */
static void reply_redis_error(ms_session_t *s, const ms_request_t *rq,
                              const redisReply *reply, int err,
                              const char *what)
{
    char msg[200];

    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        snprintf(msg, sizeof(msg), "Redis refused %s: %.*s", what,
                 (int)(reply->len < 120 ? reply->len : 120), reply->str);
        ms_reply_error(s, rq, MS_EINTERNAL, msg);
        return;
    }
    ms_reply_error(s, rq, err == MS_ETIMEOUT ? MS_ETIMEOUT : MS_EUNAVAIL,
                   err == MS_ETIMEOUT ? "Redis did not answer in time"
                                      : "Redis is not reachable");
}


/* --- conn.open ---------------------------------------------------------- */

static void bind_conn(ms_app_t *app, ms_session_t *s, const char *id,
                      size_t len)
{
    ms_registry_t *r = app->registry;
    bound_t *b;

    LIST_FOREACH(b, &r->bound, link)
    {
        if (b->session == s && b->len == len && memcmp(b->id, id, len) == 0)
            return;
    }
    b = ms_malloc(sizeof(*b));
    b->session = s;
    b->id = ms_strndup(id, len);
    b->len = len;
    LIST_INSERT_HEAD(&r->bound, b, link);
}


static void on_opened(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_session_t *s = c->session;
    ms_request_t rq = {.id = c->req_id, .has_id = true};
    bool ok = err == 0 && reply != NULL && reply->type != REDIS_REPLY_ERROR;
    msgpack_packer *pk;

    if (!ok || app->registry == NULL) {
        if (!ms_session_closed(s))
            reply_redis_error(s, &rq, reply, err, "the registration");
        goto done;
    }

    /* The app went while Redis answered: nobody will close it later. */
    if (c->bind && ms_session_closed(s)) {
        close_bound(app, c->conn, c->conn_len);
        goto done;
    }
    if (c->bind)
        bind_conn(app, s, c->conn, c->conn_len);
    if (!ms_session_closed(s)) {
        pk = ms_reply_ok(s, &rq, 3);
        ms_pack_str(pk, "conn");
        msgpack_pack_str(pk, c->conn_len);
        msgpack_pack_str_body(pk, c->conn, c->conn_len);
        ms_pack_str(pk, "instance");
        ms_pack_str(pk, app->cfg->instance_id);
        ms_pack_str(pk, "bind");
        if (c->bind)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        ms_session_reply_end(s);
    }
done:
    ms_session_release(s, 0);
    call_free(c);
}


/*
 * conn.open {conn?, bind?}: registers the connection as this instance's.
 * bind defaults to true for a session that said hello.
 */
static void op_conn_open(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    const msgpack_object *bind = ms_request_field(rq, "bind");
    ms_error_t err;
    const char *id;
    size_t len;
    size_t hello_len;
    call_t *c;

    if (ms_request_target(app, s, rq, MS_KIND_CONN, &id, &len, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    if (bind != NULL && bind->type != MSGPACK_OBJECT_BOOLEAN) {
        ms_reply_error(s, rq, MS_EINVAL, "'bind' must be a boolean");
        return;
    }
    if (app->registry == NULL || app->registry->stopping) {
        ms_reply_error(s, rq, MS_EUNAVAIL, "the sidecar is stopping");
        return;
    }
    c = call_new(app);
    c->session = s;
    c->req_id = rq->id;
    c->bind = bind != NULL ? bind->via.boolean
                           : ms_session_conn(s, &hello_len) != NULL;
    c->conn = ms_strndup(id, len);
    c->conn_len = len;
    ms_session_hold(s, 0);
    if (step_call(app, "open", id, len, NULL, on_opened, c) < 0)
        on_opened(c, NULL, MS_EUNAVAIL);
}


int ms_registry_members_call(ms_app_t *app, const char *step, const char *room,
                             size_t room_len, const char *conn, size_t conn_len,
                             ms_redis_reply_cb cb, void *arg)
{
    const ms_layout_t *l = &app->layout;
    char log_len[24];
    const char *argv[9];
    size_t argvlen[9], k1, k2;
    char *k_room = ms_layout_key(l->members_prefix, NULL, room, room_len, &k1);
    char *k_conn =
        ms_layout_key(l->key_prefix, "connection:", conn, conn_len, &k2);
    int rc = 0;

    k_conn = ms_realloc(k_conn, k2 + 7);
    memcpy(k_conn + k2, ":rooms", 7);
    k2 += 6;
    snprintf(log_len, sizeof(log_len), "%u", app->cfg->log_length);

    /* KEYS, then ARGV, as schema/members.lua lists them. room and conn
     * may come straight from a frame: never strlen()'d. */
    argv[0] = k_room;
    argv[1] = k_conn;
    argv[2] = l->seq;
    argv[3] = l->log;
    argv[4] = step;
    argv[5] = room;
    argv[6] = conn;
    argv[7] = l->channel;
    argv[8] = log_len;
    for (int i = 0; i < 9; i++)
        argvlen[i] = i == 5   ? room_len
                     : i == 6 ? conn_len
                     : i == 0 ? k1
                     : i == 1 ? k2
                              : strlen(argv[i]);
    if (app->redis == NULL || ms_redis_script(app->redis, MS_SCRIPT_MEMBERS, 4,
                                              9, argv, argvlen, cb, arg) < 0)
        rc = MS_EUNAVAIL;
    free(k_room);
    free(k_conn);
    return rc;
}


/* --- room.join, room.leave ------------------------------------------- */

/* What a join or leave carries to its reply. */
typedef struct member_call_s {
    ms_app_t *app;
    ms_session_t *session;
    uint64_t req_id;
    bool join;
    char *room;
    size_t room_len;
    char *conn;
    size_t conn_len;
} member_call_t;

static void on_member(void *arg, redisReply *reply, int err)
{
    member_call_t *m = arg;
    ms_session_t *s = m->session;
    ms_request_t rq = {.id = m->req_id, .has_id = true};
    uint64_t version = 0;
    msgpack_packer *pk;
    bool ok = err == 0 && reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
              reply->elements == 2 &&
              reply->element[0]->type == REDIS_REPLY_INTEGER &&
              reply->element[1]->type == REDIS_REPLY_INTEGER &&
              reply->element[1]->integer >= 0;

    if (ok)
        version = (uint64_t)reply->element[1]->integer;

    /* Read-your-writes: this sidecar's cache has it before the reply. */
    if (ok && version > 0) {
        ms_mirror_saw_version(m->app, version);
        if (ms_cache_member_apply(m->app->cache, m->room, m->room_len, m->conn,
                                  m->conn_len, version, m->join) < 0)
            ms_mirror_cache_failed(m->app, version);
    }
    if (!ms_session_closed(s) && !ok) {
        reply_redis_error(s, &rq, reply, err, "the membership change");
    } else if (!ms_session_closed(s)) {
        pk = ms_reply_ok(s, &rq, 2);
        ms_pack_str(pk, "version");
        msgpack_pack_uint64(pk, version);
        ms_pack_str(pk, "changed");
        if (version > 0)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        ms_session_reply_end(s);
    }
    ms_session_release(s, 0);
    free(m->room);
    free(m->conn);
    free(m);
}


/*
 * room.join / room.leave {room, conn?}: puts the connection in Mesh's
 * sets <p>:room:<room> and <p>:connection:<conn>:rooms, or takes it out
 * (schema/members.lua), with a version every sidecar's cache applies.
 */
static void op_member(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                      bool join)
{
    member_call_t *m;
    ms_error_t err;
    const char *room, *conn;
    size_t room_len, conn_len;

    if (ms_request_target(app, s, rq, MS_KIND_ROOM, &room, &room_len, &err) <
            0 ||
        ms_request_target(app, s, rq, MS_KIND_CONN, &conn, &conn_len, &err) <
            0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    m = ms_calloc(1, sizeof(*m));
    m->app = app;
    m->session = s;
    m->req_id = rq->id;
    m->join = join;
    m->room = ms_strndup(room, room_len);
    m->room_len = room_len;
    m->conn = ms_strndup(conn, conn_len);
    m->conn_len = conn_len;
    ms_session_hold(s, 0);
    if (ms_registry_members_call(app, join ? "join" : "leave", room, room_len,
                                 conn, conn_len, on_member, m) < 0)
        on_member(m, NULL, MS_EUNAVAIL);
}


static void op_room_join(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_member(a, s, r, true);
}


static void op_room_leave(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_member(a, s, r, false);
}


const ms_op_t ms_registry_ops[] = {
    {"conn.open", op_conn_open},
    {"room.join", op_room_join},
    {"room.leave", op_room_leave},
    {NULL, NULL},
};


/* --- the heartbeat ------------------------------------------------------ */

static void on_beat(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;

    if (err == 0 && reply != NULL && reply->type == REDIS_REPLY_ERROR)
        ms_log_warn("heartbeat refused", "error=\"%.*s\"", (int)reply->len,
                    reply->str);
    call_free(c);
}


/*
 * A heartbeat that comes late means the loop stalled: past the TTL, other
 * instances may have reaped this one's connections. Said once per stall.
 */
static void beat_check_late(ms_app_t *app)
{
    ms_registry_t *r = app->registry;
    uint64_t now = uv_hrtime();
    uint64_t gap_ms = (now - r->last_beat) / 1000000;

    if (r->last_beat != 0 && gap_ms > 2 * (uint64_t)app->cfg->heartbeat + 500)
        ms_log_warn("event loop stalled: heartbeat late",
                    "gap_ms=%" PRIu64 " interval_ms=%u", gap_ms,
                    app->cfg->heartbeat);
    r->last_beat = now;
}


static void on_beat_timer(uv_timer_t *t)
{
    ms_app_t *app = t->data;
    char ttl[24];
    call_t *c = call_new(app);

    beat_check_late(app);
    snprintf(ttl, sizeof(ttl), "%u", app->cfg->heartbeat_ttl);
    if (step_call(app, "beat", ttl, strlen(ttl), NULL, on_beat, c) < 0)
        call_free(c);
}


/* --- reaping dead instances -------------------------------------------- */

/* Closes in flight at once: a big reap must not starve the heartbeat. */
#define REAP_INFLIGHT 256

static void on_unlocked(void *arg, redisReply *reply, int err)
{
    (void)reply;
    (void)err;
    call_free(arg);
}


/*
 * Renews (op "renew") or gives back (op "unlock") Mesh's cleanup lock if
 * this instance still holds it.
 */
static void lock_call(ms_app_t *app, bool renew)
{
    static const char *const script[] = {
        "if redis.call('GET', KEYS[1]) == ARGV[1] then "
        "return redis.call('DEL', KEYS[1]) end return 0",
        "if redis.call('GET', KEYS[1]) == ARGV[1] then "
        "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"};
    const ms_layout_t *l = &app->layout;
    const char *argv[] = {"EVAL",          script[renew],         "1",
                          l->cleanup_lock, app->cfg->instance_id, LOCK_MS};
    size_t lens[6];
    call_t *c = call_new(app);

    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    if (app->redis == NULL || ms_redis_command(app->redis, renew ? 6 : 5, argv,
                                               lens, on_unlocked, c) < 0)
        call_free(c);
}


/* Ends a reap, done or not; the lock goes back either way. */
static void reap_end(ms_app_t *app, const char *why)
{
    ms_registry_t *r = app->registry;

    if (why != NULL)
        ms_log_warn("reaping dead instances failed", "reason=\"%s\"", why);
    if (r->locked)
        lock_call(app, false);
    r->locked = false;
    r->reaping = false;
    r->waiting = 0;
    r->failed = false;
    free(r->todo);
    r->todo = NULL;
    r->ntodo = r->next = 0;
    tdestroy(r->dead, str_free);
    tdestroy(r->doomed, str_free);
    r->dead = r->doomed = NULL;
    r->ndead = r->ndoomed = 0;
}


/* A dead instance is forgotten (or beat again): the reap may end. */
static void on_gone(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_registry_t *r = app->registry;
    bool current = call_current(c);

    if (err == 0 && reply != NULL && reply->type == REDIS_REPLY_INTEGER &&
        reply->integer == 1)
        ms_log_info("dead instance reaped", "instance=\"%.*s\"",
                    (int)c->conn_len, c->conn);
    call_free(c);
    if (!current || !r->reaping || --r->waiting > 0)
        return;
    ms_log_info("reaping done", "instances=%zu conns=%zu ms=%" PRIu64, r->ndead,
                r->ndoomed, uv_now(app->loop) - r->reap_started);
    reap_end(app, NULL);
}


/*
 * A reap's step about one dead instance (named in the call's conn), its
 * reply counted in waiting. False when it could not be sent.
 */
static bool instance_step(ms_app_t *app, const char *step, const str_t *e,
                          ms_redis_reply_cb cb)
{
    call_t *c = call_new(app);

    c->conn = ms_strndup(e->s, e->len);
    c->conn_len = e->len;
    app->registry->waiting++;
    if (step_call(app, step, e->s, e->len, NULL, cb, c) == 0)
        return true;
    app->registry->waiting--;
    call_free(c);
    return false;
}


static void forget_instance(ms_app_t *app, const str_t *e)
{
    (void)instance_step(app, "gone", e, on_gone);
}


/*
 * Every close is answered: the dead instances go, then the lock, once
 * Redis has forgotten them.
 */
static void reap_finish(ms_app_t *app)
{
    ms_registry_t *r = app->registry;

    r->waiting = 0;
    str_each(app, r->dead, forget_instance);
    if (r->waiting == 0)
        reap_end(app, r->ndead > 0 ? "Redis not reachable" : NULL);
}


static void close_next(ms_app_t *app);

static void on_reap_closed(void *arg, int code, const char *msg,
                           uint64_t version)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_registry_t *r = app->registry;
    bool current = call_current(c);

    (void)version;
    call_free(c);
    if (!current || !r->reaping)
        return;

    /* Opened again elsewhere meanwhile (conflict): rightly left alone. */
    if (code < 0 && code != MS_ECONFLICT) {
        ms_log_debug("closing a dead instance's connection failed",
                     "error=\"%s\"", msg);
        r->failed = true;
    }
    r->waiting--;
    close_next(app);
}


/*
 * Keeps REAP_INFLIGHT closes going, renewing the lock as it goes; once
 * all are answered, the reap ends (the instances stay, for the next reap,
 * if a close failed).
 */
static void close_next(ms_app_t *app)
{
    ms_registry_t *r = app->registry;

    while (r->next < r->ntodo && r->waiting < REAP_INFLIGHT) {
        str_t *e = r->todo[r->next++];

        if (r->next % REAP_INFLIGHT == 0)
            lock_call(app, true);
        r->waiting++;
        ms_writes_close_conn(app, e->s, e->len, e->owner, on_reap_closed,
                             call_new(app));

        /* An answer given at once may have ended the reap. */
        if (!r->reaping)
            return;
    }
    if (r->waiting > 0 || r->next < r->ntodo)
        return;
    if (r->failed)
        reap_end(app, "a connection could not be closed");
    else
        reap_finish(app);
}


static void collect(const void *node, VISIT which, void *closure)
{
    ms_registry_t *r = closure;

    if (which == postorder || which == leaf)
        r->todo[r->ntodo++] = *(str_t *const *)node;
}


/* Everything to close is known: close it (through the write pipeline). */
static void reap_close(ms_app_t *app)
{
    ms_registry_t *r = app->registry;

    r->todo = ms_malloc((r->ndoomed + 1) * sizeof(*r->todo));
    r->ntodo = r->next = 0;
    twalk_r(r->doomed, collect, r);
    r->waiting = 0;
    r->failed = false;
    close_next(app);
}


/*
 * Adds the connections of a reply list: {conn, owner, ...} (stride 2),
 * or {conn, ...} of the given owner (stride 1).
 */
static void doom(ms_registry_t *r, const redisReply *list, size_t stride,
                 const char *owner, size_t owner_len)
{
    for (size_t i = 0; i + stride - 1 < list->elements; i += stride) {
        const redisReply *e = list->element[i];
        const redisReply *o = stride == 2 ? list->element[i + 1] : NULL;

        if (e->type != REDIS_REPLY_STRING ||
            (o != NULL && o->type != REDIS_REPLY_STRING))
            continue;
        if (str_add(&r->doomed, e->str, e->len, o != NULL ? o->str : owner,
                    o != NULL ? o->len : owner_len))
            r->ndoomed++;
    }
}


/* What a members step carries: the instance it lists. */
static void on_members(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    bool current = call_current(c);

    (void)err;
    if (current && app->registry->reaping) {
        if (reply != NULL && reply->type == REDIS_REPLY_ARRAY)
            doom(app->registry, reply, 1, c->conn, c->conn_len);
        else
            app->registry->failed = true;
        if (--app->registry->waiting == 0) {
            if (app->registry->failed)
                reap_end(app, "a dead instance's connections could not "
                              "be listed");
            else
                reap_close(app);
        }
    }
    call_free(c);
}


static void ask_members(ms_app_t *app, const str_t *e)
{
    if (!instance_step(app, "members", e, on_members))
        app->registry->failed = true;
}


static void dead_step(ms_app_t *app, const char *cursor, size_t len);

static bool dead_shape_ok(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           r->element[1]->type == REDIS_REPLY_ARRAY &&
           r->element[2]->type == REDIS_REPLY_ARRAY;
}


static void on_dead(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_registry_t *r = app->registry;
    bool current = call_current(c);

    (void)err;
    call_free(c);
    if (!current || !r->reaping)
        return;
    if (!dead_shape_ok(reply)) {
        reap_end(app, "unexpected reply from the search for dead instances");
        return;
    }
    for (size_t i = 0; i < reply->element[1]->elements; i++) {
        const redisReply *e = reply->element[1]->element[i];

        if (e->type == REDIS_REPLY_STRING &&
            str_add(&r->dead, e->str, e->len, NULL, 0))
            r->ndead++;
    }
    doom(r, reply->element[2], 2, NULL, 0);
    if (strcmp(reply->element[0]->str, "0") != 0) {
        dead_step(app, reply->element[0]->str, reply->element[0]->len);
        return;
    }

    /* A dead instance's own set may list connections the hash lacks. */
    if (r->ndead == 0) {
        reap_finish(app);
        return;
    }
    r->waiting = 0;
    r->failed = false;
    str_each(app, r->dead, ask_members);
    if (r->waiting == 0)
        reap_end(app, "Redis not reachable");
}


static void dead_step(ms_app_t *app, const char *cursor, size_t len)
{
    call_t *c = call_new(app);

    if (step_call(app, "dead", cursor, len, DEAD_BATCH, on_dead, c) < 0) {
        call_free(c);
        reap_end(app, "Redis not reachable");
    }
}


static void on_locked(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    bool current = call_current(c);

    (void)err;
    call_free(c);
    if (!current || app->registry->stopping)
        return;

    /* Another instance (a sidecar or a Mesh server) is reaping. */
    if (reply == NULL || reply->type != REDIS_REPLY_STATUS) {
        app->registry->reaping = false;
        return;
    }
    app->registry->locked = true;
    app->registry->reap_started = uv_now(app->loop);
    dead_step(app, "0", 1);
}


static void on_reap_timer(uv_timer_t *t)
{
    ms_app_t *app = t->data;
    ms_registry_t *r = app->registry;
    const ms_layout_t *l = &app->layout;
    const char *argv[] = {"SET", l->cleanup_lock, app->cfg->instance_id, "NX",
                          "PX",  LOCK_MS};
    size_t lens[6];
    call_t *c;

    if (r->reaping || !r->live || r->stopping)
        return;
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    /* Replies to an earlier reap must not count in this one. */
    r->gen++;
    c = call_new(app);
    r->reaping = true;
    if (app->redis == NULL ||
        ms_redis_command(app->redis, 6, argv, lens, on_locked, c) < 0) {
        r->reaping = false;
        call_free(c);
    }
}


/* --- links, shutdown ---------------------------------------------------- */

void ms_registry_on_live(ms_app_t *app, bool live)
{
    ms_registry_t *r = app->registry;

    if (r == NULL || live == r->live || r->stopping)
        return;
    r->live = live;
    r->gen++;
    if (!live) {
        uv_timer_stop(&r->beat_timer);
        uv_timer_stop(&r->reap_timer);
        if (r->reaping)
            reap_end(app, "Redis links down");
        return;
    }
    r->last_beat = 0;
    uv_timer_start(&r->beat_timer, on_beat_timer, 0, app->cfg->heartbeat);
    retry_bound(app);
    if (app->cfg->reap_interval > 0)
        uv_timer_start(&r->reap_timer, on_reap_timer, app->cfg->reap_interval,
                       app->cfg->reap_interval);
}


static void on_left(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_registry_t *r = c->app->registry;

    (void)reply;
    if (err == 0)
        ms_log_info("left the registry", NULL);
    call_free(c);
    if (r != NULL)
        r->busy = false;
}


static void leave(ms_app_t *app)
{
    call_t *c = call_new(app);

    if (step_call(app, "leave", NULL, 0, NULL, on_left, c) < 0) {
        call_free(c);
        app->registry->busy = false;
    }
}


static void on_own_closed(void *arg, int code, const char *msg,
                          uint64_t version)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_registry_t *r = app->registry;

    (void)version;
    call_free(c);
    if (code < 0)
        ms_log_warn("closing a connection at shutdown failed", "error=\"%s\"",
                    msg);
    if (r != NULL && r->busy && --r->waiting == 0)
        leave(app);
}


static void on_own_members(void *arg, redisReply *reply, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_registry_t *r = app->registry;

    (void)err;
    call_free(c);
    if (r == NULL)
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        r->busy = false;
        return;
    }
    ms_log_info("closing this instance's connections", "conns=%zu",
                reply->elements);
    r->waiting = 1; /* held until every close is submitted */
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];

        if (e->type != REDIS_REPLY_STRING)
            continue;
        r->waiting++;
        ms_writes_close_conn(app, e->str, e->len, app->cfg->instance_id,
                             on_own_closed, call_new(app));
    }
    if (--r->waiting == 0)
        leave(app);
}


void ms_registry_shutdown(ms_app_t *app)
{
    ms_registry_t *r = app->registry;
    call_t *c;

    if (r == NULL || r->stopping)
        return;
    r->stopping = true;
    uv_timer_stop(&r->beat_timer);
    uv_timer_stop(&r->reap_timer);
    if (r->reaping)
        reap_end(app, NULL);
    r->gen++;
    while (!LIST_EMPTY(&r->bound))
        bound_remove(LIST_FIRST(&r->bound));

    /* Without --close-on-exit the heartbeat just stops: other instances
     * reap what is left once it has run out. */
    if (!app->cfg->close_on_exit || !r->live)
        return;
    r->busy = true;
    c = call_new(app);
    if (step_call(app, "members", app->cfg->instance_id,
                  strlen(app->cfg->instance_id), NULL, on_own_members, c) < 0) {
        call_free(c);
        r->busy = false;
    }
}


bool ms_registry_busy(const ms_app_t *app)
{
    return app->registry != NULL && app->registry->busy;
}


void ms_registry_init(ms_app_t *app)
{
    ms_registry_t *r = ms_calloc(1, sizeof(*r));

    app->registry = r;
    r->app = app;
    LIST_INIT(&r->bound);
    uv_timer_init(app->loop, &r->beat_timer);
    uv_timer_init(app->loop, &r->reap_timer);
    r->beat_timer.data = r->reap_timer.data = app;
    r->open_timers = 2;
}


static void on_timer_closed(uv_handle_t *h)
{
    ms_registry_t *r = h->data;

    if (--r->open_timers == 0)
        free(r);
}


void ms_registry_close(ms_app_t *app)
{
    ms_registry_t *r = app->registry;

    if (r == NULL)
        return;
    if (r->reaping)
        reap_end(app, NULL);
    while (!LIST_EMPTY(&r->bound))
        bound_remove(LIST_FIRST(&r->bound));
    tdestroy(r->retry, str_free);

    /* Late replies find no registry and stop there. */
    app->registry = NULL;
    r->beat_timer.data = r->reap_timer.data = r;
    uv_close((uv_handle_t *)&r->beat_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->reap_timer, on_timer_closed);
}
