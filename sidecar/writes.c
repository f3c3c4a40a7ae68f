/*
 * writes.c - the write pipeline (see writes.h). Entry points:
 * ms_writes_init(), ms_writes_submit(), ms_writes_entry_changed(),
 * ms_writes_close() and ms_writes_free(). Loop thread.
 *
 * Each entry with writes under way has a queue, found through a tsearch()
 * tree keyed by (kind, id). Only the queue's head is in flight.
 */
#include "writes.h"

#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "alloc.h"
#include "waits.h"
#include "log.h"
#include "mirror.h"

typedef struct write_s write_t;

/* The writes queued on one entry. */
typedef struct queue_s {
    ms_kind_t kind;
    char *id;
    size_t id_len;
    char *hash_key; /* the Redis hash holding the value */
    size_t hash_key_len;
    char *turn_key; /* the entry's turn (see schema/write.lua) */
    size_t turn_key_len;
    write_t *head, *tail;
} queue_t;

struct write_s {
    ms_app_t *app;
    queue_t *queue;
    write_t *next;
    ms_strategy_t strategy;
    json_t *update; /* NULL: delete */
    bool close;     /* a connection's close: also leaves the registry */
    char *owner;    /* for a close: the instance expected to own it */
    ms_write_done_cb cb;
    void *arg;
    unsigned attempts;
    uint64_t floor;    /* the highest version known when last sent */
    unsigned rebuilds; /* the mirror's rebuild count then */
    bool have_base;    /* base_* below came from a conflict reply */
    char *base;        /* JSON text the merge is computed from, or NULL */
    size_t base_len;
    char *json; /* JSON text being written, NULL for a delete */
    size_t json_len;
    msgpack_sbuffer mp;  /* the same value as msgpack, for the cache */
    unsigned turn_waits; /* times it waited for another sidecar's turn */
    bool has_timer;      /* timer initialised: free w in its close callback */
    uv_timer_t timer;    /* ends a wait for another sidecar's turn */
    LIST_ENTRY(write_s) waiting; /* in ms_writes_s.waiting while waiting */
};

struct ms_writes_s {
    void *queues; /* tsearch root */
    /* Queue heads waiting for another sidecar's turn. */
    LIST_HEAD(, write_s) waiting;
};

/* How long a turn lasts, and how long a refused write waits at most
 * before it tries again (it usually goes as soon as the entry changes). */
#define TURN_MS        "100"
#define TURN_WAIT_MS   10
#define TURN_WAITS_MAX 300

static int compare_queues(const void *a, const void *b)
{
    const queue_t *x = a, *y = b;

    return ms_entry_compare(x->kind, x->id, x->id_len, y->kind, y->id,
                            y->id_len);
}


/* An entry's hash in Mesh's layout, and its turn key (write.lua). */
static char *hash_key(const ms_layout_t *l, ms_kind_t kind, const char *id,
                      size_t id_len, size_t *len)
{
    if (kind == MS_KIND_ROOM)
        return ms_layout_key(l->room_prefix, NULL, id, id_len, len);
    return ms_layout_key(l->conn_meta, NULL, "", 0, len);
}


static char *turn_key(const ms_layout_t *l, ms_kind_t kind, const char *id,
                      size_t id_len, size_t *len)
{
    return ms_layout_key(l->turn_prefix,
                         kind == MS_KIND_ROOM ? "room:" : "conn:", id, id_len,
                         len);
}


static queue_t *queue_find_or_add(ms_app_t *app, ms_kind_t kind, const char *id,
                                  size_t id_len)
{
    queue_t key = {.kind = kind, .id = (char *)id, .id_len = id_len};
    queue_t **found = tfind(&key, &app->writes->queues, compare_queues);
    queue_t *q;

    if (found != NULL)
        return *found;
    q = ms_calloc(1, sizeof(*q));
    q->kind = kind;
    q->id = ms_strndup(id, id_len);
    q->id_len = id_len;
    q->hash_key = hash_key(&app->layout, kind, id, id_len, &q->hash_key_len);
    q->turn_key = turn_key(&app->layout, kind, id, id_len, &q->turn_key_len);
    if (tsearch(q, &app->writes->queues, compare_queues) == NULL)
        ms_oom();
    return q;
}


static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}


static void write_free(write_t *w)
{
    json_decref(w->update);
    free(w->base);
    free(w->json);
    msgpack_sbuffer_destroy(&w->mp);
    free(w->owner);
    if (w->has_timer)
        uv_close((uv_handle_t *)&w->timer, on_timer_closed);
    else
        free(w);
}


static int write_start(write_t *w, ms_error_t *err);

/* Answers the queue's head and takes it off the queue. */
static void write_pop(queue_t *q, int code, const char *msg, uint64_t version)
{
    write_t *w = q->head;

    q->head = w->next;
    if (q->head == NULL)
        q->tail = NULL;
    w->cb(w->arg, code, msg, version);
    write_free(w);
}


/*
 * Starts the queue's head; writes that fail before reaching Redis are
 * answered at once and the next one tried, in a loop rather than by
 * recursion so that a long queue meeting a Redis outage stays shallow.
 */
static void queue_run(ms_app_t *app, queue_t *q)
{
    ms_error_t err;

    while (q->head != NULL) {
        if (write_start(q->head, &err) == 0)
            return;
        write_pop(q, err.code, err.msg, 0);
    }
    tdelete(q, &app->writes->queues, compare_queues);
    free(q->id);
    free(q->hash_key);
    free(q->turn_key);
    free(q);
}


/*
 * Reads the value the strategy applies to: the current value returned by
 * a failed compare-and-set, else the cached one. *current is NULL when
 * the entry is absent.
 */
static int load_base(write_t *w, json_t **current, ms_error_t *err)
{
    ms_app_t *app = w->app;
    queue_t *q = w->queue;
    ms_cache_entry_t e;

    *current = NULL;
    if (!w->have_base) {
        if (ms_cache_get_json(app->cache, q->kind, q->id, q->id_len, &e) < 0)
            return ms_error_set(err, MS_EINTERNAL, "cache read failed");
        free(w->base);
        w->base = e.present ? ms_strndup(e.json, e.json_len) : NULL;
        w->base_len = e.present ? e.json_len : 0;
    }
    if (w->base == NULL)
        return 0;

    /*
     * A stored value that is not JSON we can hold (written by hand) reads
     * as absent, so a merge treats it as absent too: it replaces it. The
     * compare-and-set still checks against its exact text.
     */
    if (ms_value_parse(w->base, w->base_len, &app->limits, current, err) < 0)
        *current = NULL;
    return 0;
}


static void on_script_reply(void *arg, redisReply *reply, int err);

int ms_writes_call(ms_app_t *app, const ms_write_call_t *w,
                   ms_redis_reply_cb cb, void *arg)
{
    const ms_layout_t *l = &app->layout;
    bool room = w->kind == MS_KIND_ROOM;
    size_t hash_len = w->hash_key_len, turn_len = w->turn_key_len;
    char *hash = NULL, *turn = NULL;
    char log_len[24];
    const char *argv[18];
    size_t argvlen[18];
    int rc = 0;

    if (w->hash_key == NULL)
        hash = hash_key(l, w->kind, w->id, w->id_len, &hash_len);
    if (w->turn_key == NULL)
        turn = turn_key(l, w->kind, w->id, w->id_len, &turn_len);
    snprintf(log_len, sizeof(log_len), "%u", app->cfg->log_length);

    /* KEYS, then ARGV, as schema/write.lua lists them. */
    argv[0] = hash != NULL ? hash : w->hash_key;
    argv[1] = ms_layout_versions(l, w->kind);
    argv[2] = l->seq;
    argv[3] = turn != NULL ? turn : w->turn_key;
    argv[4] = l->log;
    argv[5] = room ? "data" : w->id;
    argv[6] = w->id;
    argv[7] = l->channel;
    argv[8] = ms_kind_name(w->kind);
    argv[9] = w->check;
    argv[10] = w->base != NULL ? w->base : "";
    argv[11] = w->op;
    argv[12] = w->json != NULL ? w->json : "";
    argv[13] = app->cfg->instance_id;
    argv[14] = TURN_MS;
    argv[15] = log_len;
    argv[16] = l->key_prefix;
    argv[17] = w->owner != NULL ? w->owner : "";

    /* Keys, ids and texts carry their lengths: never strlen()'d. */
    for (int i = 0; i < 18; i++) {
        bool sized = i == 0 || i == 3 || i == 5 || i == 6 || i == 10 || i == 12;

        argvlen[i] = sized ? 0 : strlen(argv[i]);
    }
    argvlen[0] = hash_len;
    argvlen[3] = turn_len;
    argvlen[5] = room ? 4 : w->id_len;
    argvlen[6] = w->id_len;
    argvlen[10] = w->base != NULL ? w->base_len : 0;
    argvlen[12] = w->json != NULL ? w->json_len : 0;
    if (app->redis == NULL || ms_redis_script(app->redis, MS_SCRIPT_WRITE, 5,
                                              18, argv, argvlen, cb, arg) < 0)
        rc = MS_EUNAVAIL;
    free(hash);
    free(turn);
    return rc;
}


/*
 * The cache takes the value as msgpack too. Packing the tree gives the
 * bytes converting the dumped text would (Jansson keeps key order, and
 * reals are dumped to round-trip), without parsing it again.
 */
static int pack_written(write_t *w, const json_t *result, ms_error_t *err)
{
    msgpack_packer pk;

    w->mp.size = 0;
    msgpack_packer_init(&pk, &w->mp, msgpack_sbuffer_write);
    if (ms_value_pack(result, &pk) < 0)
        return ms_error_set(err, MS_ENOMEM, "out of memory");
    return 0;
}


/* Computes the value to store and sends it to Redis. */
static int write_start(write_t *w, ms_error_t *err)
{
    ms_app_t *app = w->app;
    queue_t *q = w->queue;
    bool merging = w->update != NULL && w->strategy != MS_STRATEGY_REPLACE;
    json_t *current = NULL, *result;
    ms_write_call_t call;
    int rc;

    if (merging && (rc = load_base(w, &current, err)) < 0)
        return rc;
    result = merging ? ms_strategy_apply(w->strategy, current, w->update)
                     : json_incref(w->update);
    json_decref(current);

    free(w->json);
    w->json = NULL;
    if (result != NULL) {
        rc = ms_value_dump(result, &app->limits, &w->json, &w->json_len, err);
        if (rc == 0)
            rc = pack_written(w, result, err);
        json_decref(result);
        if (rc < 0)
            return rc;
    }

    w->attempts++;
    w->floor = ms_mirror_high(app);
    w->rebuilds = ms_mirror_rebuilds(app);
    call = (ms_write_call_t){
        .kind = q->kind,
        .id = q->id,
        .id_len = q->id_len,
        .hash_key = q->hash_key,
        .hash_key_len = q->hash_key_len,
        .turn_key = q->turn_key,
        .turn_key_len = q->turn_key_len,
        .check = !merging          ? "any"
                 : w->base == NULL ? "absent"
                                   : "equal",
        .base = w->base,
        .base_len = w->base_len,
        .op = w->json != NULL ? "set"
              : w->close      ? "close"
                              : "del",
        .json = w->json,
        .json_len = w->json_len,
        .owner = w->owner,
    };
    if (ms_writes_call(app, &call, on_script_reply, w) < 0)
        return ms_error_set(err, MS_EUNAVAIL, "Redis is not reachable");
    return 0;
}


/* Puts what was written into the cache so a read here sees it at once. */
static void apply_written(write_t *w, uint64_t version)
{
    ms_app_t *app = w->app;
    queue_t *q = w->queue;
    const char *mp = w->json != NULL ? w->mp.data : NULL;
    size_t mp_len = w->json != NULL ? w->mp.size : 0;
    int rc;

    rc = ms_cache_apply_soon(app->cache, q->kind, q->id, q->id_len, version,
                             w->json, w->json_len, mp, mp_len);

    /*
     * Redis's INCR ran after the write was sent, so its version is above
     * every version known then, unless the sequence started over (and no
     * rebuild has been made for that meanwhile). After the rebuild the
     * write goes into the emptied cache.
     */
    if (version <= w->floor && w->rebuilds == ms_mirror_rebuilds(app)) {
        ms_mirror_rebuild(app, version);
        rc = ms_cache_apply(app->cache, q->kind, q->id, q->id_len, version,
                            w->json, w->json_len, mp, mp_len, MS_APPLY_NEWER);
    }
    /* A close took the connection out of its rooms too. */
    if (w->close && rc >= 0 &&
        ms_cache_member_drop_conn(app->cache, q->id, q->id_len, version) < 0)
        rc = MS_EINTERNAL;
    ms_mirror_saw_version(app, version);
    if (rc == 1)
        ms_waits_entry_changed(app, q->kind, q->id, q->id_len, version);
    else if (rc < 0)
        ms_mirror_cache_failed(app, version);
}


static uint64_t reply_uint(const redisReply *r)
{
    return r->type == REDIS_REPLY_INTEGER && r->integer > 0
               ? (uint64_t)r->integer
               : 0;
}


static void waiting_remove(write_t *w)
{
    uv_timer_stop(&w->timer);
    LIST_REMOVE(w, waiting);
}


/* Tries a waiting write again, merging into what the cache now holds. */
static void wait_over(write_t *w)
{
    ms_app_t *app = w->app;
    queue_t *q = w->queue;
    ms_error_t err;

    waiting_remove(w);
    w->have_base = false;
    if (write_start(w, &err) < 0) {
        write_pop(q, err.code, err.msg, 0);
        queue_run(app, q);
    }
}


static void on_wait_timer(uv_timer_t *t)
{
    wait_over(t->data);
}


/*
 * Another sidecar lost a race on this entry and has its turn: wait until
 * its write reaches the cache (ms_writes_entry_changed), or a short
 * while, then try again.
 */
static int wait_for_turn(write_t *w, ms_error_t *err)
{
    ms_writes_t *ws = w->app->writes;

    if (++w->turn_waits > TURN_WAITS_MAX)
        return ms_error_set(err, MS_ECONFLICT,
                            "another sidecar kept the entry's turn too long");
    if (!w->has_timer) {
        uv_timer_init(w->app->loop, &w->timer);
        w->timer.data = w;
        w->has_timer = true;
    }
    uv_timer_start(&w->timer, on_wait_timer, TURN_WAIT_MS, 0);
    LIST_INSERT_HEAD(&ws->waiting, w, waiting);
    return 0;
}


/*
 * A failed compare-and-set returns the entry's current value: the next
 * attempt merges into that, without waiting for the change event.
 */
static int retry_after_conflict(write_t *w, redisReply *reply, ms_error_t *err)
{
    redisReply *cur = reply->element[1];
    redisReply *reason = reply->element[3];

    if (reason->type == REDIS_REPLY_STRING && strcmp(reason->str, "turn") == 0)
        return wait_for_turn(w, err);
    if (reason->type == REDIS_REPLY_STRING && strcmp(reason->str, "moved") == 0)
        return ms_error_set(err, MS_ECONFLICT,
                            "the connection belongs to another instance now");
    if (w->attempts >= w->app->cfg->merge_retries)
        return ms_error_set(err, MS_ECONFLICT,
                            "gave up after %u conflicting concurrent writes",
                            w->attempts);
    free(w->base);
    w->base = NULL;
    w->base_len = 0;
    if (cur->type == REDIS_REPLY_STRING) {
        w->base = ms_strndup(cur->str, cur->len);
        w->base_len = cur->len;
    }
    w->have_base = true;
    ms_log_debug("merge conflict, retrying", "attempt=%u", w->attempts);
    return write_start(w, err);
}


bool ms_writes_own_value(ms_app_t *app, ms_kind_t kind, const char *id,
                         size_t id_len, const char *json, size_t json_len,
                         const char **mp, size_t *mp_len)
{
    queue_t key = {.kind = kind, .id = (char *)id, .id_len = id_len};
    queue_t **found;
    const write_t *w;

    if (app->writes == NULL)
        return false;
    found = tfind(&key, &app->writes->queues, compare_queues);
    if (found == NULL)
        return false;
    w = (*found)->head;
    if (w->json == NULL || w->json_len != json_len ||
        memcmp(w->json, json, json_len) != 0)
        return false;
    *mp = w->mp.data;
    *mp_len = w->mp.size;
    return true;
}


void ms_writes_entry_changed(ms_app_t *app, ms_kind_t kind, const char *id,
                             size_t id_len)
{
    queue_t key = {.kind = kind, .id = (char *)id, .id_len = id_len};
    queue_t **found;

    if (app->writes == NULL || LIST_EMPTY(&app->writes->waiting))
        return;
    found = tfind(&key, &app->writes->queues, compare_queues);
    if (found != NULL && (*found)->head->has_timer &&
        uv_is_active((uv_handle_t *)&(*found)->head->timer))
        wait_over((*found)->head);
}


static void on_script_reply(void *arg, redisReply *reply, int status)
{
    write_t *w = arg;
    queue_t *q = w->queue;
    ms_app_t *app = w->app;
    uint64_t version = 0;
    ms_error_t err = {0, ""};

    if (reply == NULL && status == MS_ETIMEOUT) {
        ms_error_set(&err, MS_ETIMEOUT,
                     "Redis did not answer in time; the write may or may "
                     "not have been made");
    } else if (reply == NULL) {
        ms_error_set(&err, MS_EUNAVAIL,
                     "Redis connection lost; the write may or may not have "
                     "been made");
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
               reply_uint(reply->element[0]) == 1) {
        version = reply_uint(reply->element[1]);
        apply_written(w, version);
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 4 &&
               reply->element[0]->type == REDIS_REPLY_INTEGER &&
               reply->element[0]->integer == 0) {
        if (retry_after_conflict(w, reply, &err) == 0)
            return;
    } else {
        ms_log_error("unexpected reply from write script", "type=%d",
                     reply->type);
        if (reply->type == REDIS_REPLY_ERROR)
            ms_log_error("write script failed", "error=\"%.*s\"",
                         (int)reply->len, reply->str);
        ms_error_set(&err, MS_EINTERNAL, "Redis refused the write");
    }
    write_pop(q, err.code, err.msg, version);
    queue_run(app, q);
}


static void submit(ms_app_t *app, ms_kind_t kind, const char *id, size_t id_len,
                   ms_strategy_t strategy, json_t *update, bool close,
                   const char *owner, ms_write_done_cb cb, void *arg)
{
    write_t *w = ms_calloc(1, sizeof(*w));
    queue_t *q = queue_find_or_add(app, kind, id, id_len);

    w->app = app;
    w->queue = q;
    w->strategy = strategy;
    w->update = update;
    w->close = close;
    if (owner != NULL)
        w->owner = ms_strndup(owner, strlen(owner));
    w->cb = cb;
    w->arg = arg;

    if (q->tail != NULL) {
        q->tail->next = w;
        q->tail = w;
        return;
    }
    q->head = q->tail = w;
    queue_run(app, q);
}


void ms_writes_submit(ms_app_t *app, ms_kind_t kind, const char *id,
                      size_t id_len, ms_strategy_t strategy, json_t *update,
                      ms_write_done_cb cb, void *arg)
{
    submit(app, kind, id, id_len, strategy, update, false, NULL, cb, arg);
}


void ms_writes_close_conn(ms_app_t *app, const char *id, size_t id_len,
                          const char *owner, ms_write_done_cb cb, void *arg)
{
    submit(app, MS_KIND_CONN, id, id_len, MS_STRATEGY_REPLACE, NULL, true,
           owner, cb, arg);
}


void ms_writes_init(ms_app_t *app)
{
    app->writes = ms_calloc(1, sizeof(*app->writes));
}


/*
 * Called once Redis is closed (app->redis NULL): the writes still
 * waiting for a turn, and those queued behind them, fail unavailable.
 */
void ms_writes_close(ms_app_t *app)
{
    while (!LIST_EMPTY(&app->writes->waiting)) {
        write_t *w = LIST_FIRST(&app->writes->waiting);
        queue_t *q = w->queue;

        waiting_remove(w);
        write_pop(q, MS_EUNAVAIL, "the daemon is shutting down", 0);
        queue_run(app, q);
    }
}


/*
 * By now every write has been answered (in flight ones by ms_redis_close,
 * waiting ones by ms_writes_close), so no queue is left.
 */
void ms_writes_free(ms_app_t *app)
{
    free(app->writes);
    app->writes = NULL;
}
