/*
 * mirror.c - keeps the cache equal to Redis (see mirror.h): a sync when
 * the links come up (catch-up from the change log, or a full load),
 * change events in between. Entry points are the two Redis callbacks and
 * ms_mirror_rebuild(). Loop thread only.
 */
#include "mirror.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "frame.h"
#include "waits.h"
#include "writes.h"
#include "log.h"
#include "registry.h"
#include "scrub.h"
#include "watch.h"

/* The COUNT hint per SCAN/HSCAN batch of a load. */
#define LOAD_BATCH    "500"
#define LOAD_RETRY_MS 1000

typedef enum { PHASE_CONNS = 0, PHASE_ROOMS, PHASE_MEMBERS } phase_t;

static const char *const phase_name[] = {"conn", "room", "member"};

struct ms_mirror_s {
    bool live;   /* the Redis links are up */
    bool loaded; /* a load finished since they came up */
    bool ready_logged;
    unsigned gen; /* counts loads; stale batch replies are dropped */
    phase_t phase;
    bool have_seq;
    uint64_t seq;             /* the sequence when the load began */
    uint64_t load_epoch;      /* the epoch its first batch read, 0: none */
    uint64_t started;         /* uv_now() when the load began */
    uint64_t entries[2];      /* loaded per kind */
    uint64_t skipped;         /* values that could not be read */
    uint64_t members;         /* memberships loaded */
    uint64_t high;            /* the highest version Redis is known to have
                                 handed out (events, loads, our writes) */
    uint64_t last_event;      /* the channel's last version since links up */
    unsigned rebuilds;        /* times the sequence was seen going back */
    uint64_t held_at_start;   /* the cache's highest version at load start */
    const char *logged_state; /* the state last logged */
    bool positioned;    /* applied is known (else only a full load will do) */
    uint64_t applied;   /* every change up to this version is in the cache */
    uint64_t epoch;     /* the history the cache comes from (sync.lua) */
    uint64_t unsaved;   /* changes applied since applied was last saved */
    uint64_t caught;    /* changes read from the log by this catch-up */
    char run_id[48];    /* the Redis server process last synced with */
    uint64_t saved_run; /* run_prefix() of the run_id in the cache file */
    unsigned cache_failures;   /* changes the cache could not take */
    unsigned failures_at_sync; /* cache_failures when this sync began */
    bool cache_failing;        /* since the last sync that completed */
    uv_timer_t retry;          /* restarts a failed load */
    uv_timer_t every;   /* checks the history while live (--history-check-ms):
                           a FLUSHALL no write follows shows nowhere else */
    int open_timers;    /* while closing: handles not yet closed */
    unsigned load_gen;  /* gen of a load waiting for the index fill */
    bool checking;      /* a history check is in flight (check_gen) */
    bool check_again;   /* and a change under the position came since */
    unsigned check_gen; /* gen when that check was sent */
};

/* Changes per catch-up batch; how often the position is saved. */
#define SYNC_BATCH   "500"
#define SYNC_BATCH_N 500
#define SAVE_EVERY   1000

/* What a batch request carries to its reply. */
typedef struct batch_s {
    ms_app_t *app;
    unsigned gen;
    uint64_t from; /* a catch-up batch: the first version asked for */
} batch_t;

bool ms_mirror_stale(const ms_app_t *app)
{
    return app->mirror == NULL || !(app->mirror->live && app->mirror->loaded);
}


bool ms_mirror_behind(const ms_app_t *app, uint64_t *versions)
{
    const ms_mirror_t *m = app->mirror;

    if (m == NULL || !m->live)
        return false;
    *versions = m->high > m->applied ? m->high - m->applied : 0;
    return true;
}


const char *ms_mirror_state(const ms_app_t *app)
{
    const ms_mirror_t *m = app->mirror;

    if (m == NULL || !m->live)
        return "down";
    return m->loaded ? "live" : "catching_up";
}


/* Logs the state when it differs from the one logged last. */
static void log_state(ms_app_t *app)
{
    const char *state = ms_mirror_state(app);

    if (state == app->mirror->logged_state)
        return;
    app->mirror->logged_state = state;
    ms_log_info("sync state", "state=%s", state);
}


/*
 * Converts a value from Redis for the cache. A value that is not JSON
 * meshsync can hold (written by hand, or too deep) cannot be served; it is
 * cached as absent rather than left at an older value, and logged.
 */
static void apply_value(ms_app_t *app, ms_kind_t kind, const char *id,
                        size_t id_len, uint64_t version, const char *json,
                        size_t json_len, ms_apply_mode_t mode)
{
    const char *own = NULL;
    char *mp = NULL;
    size_t mp_len = 0;
    ms_error_t err;
    int rc;

    /* Our own write's message: the same text gives the same msgpack. */
    if (mode == MS_APPLY_NEWER && json != NULL &&
        ms_writes_own_value(app, kind, id, id_len, json, json_len, &own,
                            &mp_len)) {
        rc = ms_cache_apply_soon(app->cache, kind, id, id_len, version, json,
                                 json_len, own, mp_len);
        goto applied;
    }
    if (json != NULL && ms_value_json_to_msgpack(json, json_len, &app->limits,
                                                 &mp, &mp_len, &err) < 0) {
        char shown[80];

        app->mirror->skipped++;
        ms_log_warn("unreadable value in Redis, treated as absent",
                    "kind=%s id=\"%s\" error=\"%s\"", ms_kind_name(kind),
                    ms_log_escape(id, id_len, shown, sizeof(shown)), err.msg);
        json = NULL;
        json_len = 0;
    }
    rc = mode == MS_APPLY_NEWER
             ? ms_cache_apply_soon(app->cache, kind, id, id_len, version, json,
                                   json_len, mp, mp_len)
             : ms_cache_apply(app->cache, kind, id, id_len, version, json,
                              json_len, mp, mp_len, mode);
applied:
    if (rc == 1) {
        ms_waits_entry_changed(app, kind, id, id_len, version);
        ms_writes_entry_changed(app, kind, id, id_len);
    } else if (rc < 0) {
        ms_mirror_cache_failed(app, version);
    }
    free(mp);
}


static void load_next(ms_app_t *app, const char *cursor, size_t cursor_len);
static void load_start(ms_app_t *app);
static void sync_start(ms_app_t *app);

static uint64_t apply_change(ms_app_t *app, const char *payload, size_t len,
                             bool from_channel);

static void on_retry(uv_timer_t *t)
{
    ms_app_t *app = t->data;

    if (app->mirror->live && !app->mirror->loaded)
        sync_start(app);
}


/* A load that failed while the links stay up is tried again shortly. */
static void load_failed(ms_app_t *app, const char *why)
{
    /* While the cache cannot be written, this repeats every second. */
    ms_log(app->mirror->cache_failing ? MS_LOG_DEBUG : MS_LOG_WARN,
           "resync failed", "reason=\"%s\" retry_ms=%d", why, LOAD_RETRY_MS);
    uv_timer_start(&app->mirror->retry, on_retry, LOAD_RETRY_MS, 0);
}


/*
 * The cache file keeps the first 15 hex digits of the Redis run_id (60
 * bits fit its integers): enough to tell two server processes apart.
 */
static uint64_t run_prefix(const char *run_id, size_t len)
{
    char head[16];

    if (len > 15)
        len = 15;
    memcpy(head, run_id, len);
    head[len] = '\0';
    return strtoull(head, NULL, 16);
}


/*
 * The position (applied) and the history it belongs to (epoch) go into
 * the cache file, so that a restart can catch up from the change log
 * instead of loading everything. A position saved a little behind is
 * harmless: replaying changes is idempotent under the version guard.
 */
static void save_position(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    /* Rows still only in memory would be skipped by a catch-up. */
    if (ms_cache_ahead(app->cache))
        return;
    m->unsaved = 0;
    m->saved_run = run_prefix(m->run_id, strlen(m->run_id));
    if (ms_cache_meta_set(app->cache, "applied", m->applied) < 0 ||
        ms_cache_meta_set(app->cache, "epoch", m->epoch) < 0 ||
        ms_cache_meta_set(app->cache, "run_id", m->saved_run) < 0)
        ms_log(m->cache_failing ? MS_LOG_DEBUG : MS_LOG_ERROR,
               "cannot save the sync position", NULL);
}


/*
 * The cache holds everything up to snapshot, and the change events seen
 * since (the channel delivers them in order): it is caught up.
 */
static void sync_done(ms_app_t *app, uint64_t snapshot)
{
    ms_mirror_t *m = app->mirror;

    /*
     * Caught up means caught up in the file too. The cache commits its
     * writes in groups (cache.h): one lost since the sync began may have
     * held part of it, and the position is saved only after the rest
     * is in.
     */
    if (ms_cache_flush(app->cache) < 0)
        ms_mirror_cache_failed(app, 0);
    if (m->cache_failures == m->failures_at_sync) {
        m->applied = snapshot > m->last_event ? snapshot : m->last_event;
        m->positioned = true;
        save_position(app);
        if (ms_cache_flush(app->cache) < 0)
            ms_mirror_cache_failed(app, 0);
    }
    if (m->cache_failures != m->failures_at_sync) {
        load_failed(app, "cache write failed");
        return;
    }
    m->loaded = true;
    if (m->cache_failing) {
        m->cache_failing = false;
        ms_log_info("cache caught up after failed writes", NULL);
    }
    log_state(app);
    ms_waits_recheck(app);
    if (!m->ready_logged) {
        m->ready_logged = true;
        ms_log_info("ready", "socket=\"%s\"", app->cfg->socket_path);
    }
}


static void load_done(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;
    int gone = ms_cache_resync_end(app->cache, m->seq);

    if (gone < 0) {
        load_failed(app, "cache write failed");
        return;
    }
    ms_log_info("resync done",
                "conns=%" PRIu64 " rooms=%" PRIu64 " members=%" PRIu64
                " removed=%d unreadable=%" PRIu64 " seq=%" PRIu64
                " ms=%" PRIu64,
                m->entries[MS_KIND_CONN], m->entries[MS_KIND_ROOM], m->members,
                gone, m->skipped, m->seq, uv_now(app->loop) - m->started);

    /* The cache holds this history now (after a flush, a new one). */
    if (m->load_epoch != 0)
        m->epoch = m->load_epoch;

    /* Entries the load found gone were tombstoned without a word: the
     * waiting reads are looked at again in sync_done. */
    sync_done(app, m->seq);
}


/*
 * Every cached version is meaningless once Redis's sequence has started
 * over: forget them all. The caller loads everything again.
 */
static int forget_everything(ms_app_t *app, uint64_t seq)
{
    ms_mirror_t *m = app->mirror;
    int64_t held = ms_cache_max_version(app->cache);

    ms_log_warn("Redis sequence went back, rebuilding the cache",
                "seq=%" PRIu64 " cached=%" PRId64, seq, held);
    ms_watch_history_changed(app);
    m->high = seq;
    m->last_event = 0;
    m->rebuilds++;
    m->applied = 0;
    m->positioned = false;
    m->epoch = 0; /* the next sync adopts the new history's epoch */
    save_position(app);
    return ms_cache_clear(app->cache);
}


/*
 * Versions come from Redis's sequence, so what the cache held when the
 * load began cannot be above the sequence a batch reads later, unless
 * Redis lost its data (restarted without persistence, flushed, failed
 * over to a replica that missed writes) and the sequence started again.
 * Events applied since the load began may well be above the batch's
 * sequence (they travel on the other link): they are not compared.
 */
static int check_sequence(ms_app_t *app, uint64_t seq)
{
    if (app->mirror->held_at_start <= seq) {
        ms_mirror_saw_version(app, seq);
        return 0;
    }

    /* Events applied meanwhile went with the cache: load from the start. */
    if (forget_everything(app, seq) < 0)
        return -1;
    load_start(app);
    return 1;
}


/*
 * Applies one batch: {cursor, seq, {id, json, version, ...}}. A loaded
 * value is Redis's state as of the batch's sequence, so it replaces any
 * cached state no newer than that, whatever its own version (values a
 * Mesh server wrote have version 0).
 */
/*
 * Applies a batch of memberships, {room, conn, ...}: as for values, a
 * membership the load saw holds unless the cache knows a newer change.
 */
static void apply_members(ms_app_t *app, const redisReply *items, uint64_t seq)
{
    for (size_t i = 0; i + 1 < items->elements; i += 2) {
        const redisReply *room = items->element[i];
        const redisReply *conn = items->element[i + 1];

        if (room->type != REDIS_REPLY_STRING ||
            conn->type != REDIS_REPLY_STRING)
            continue;
        if (ms_cache_member_load(app->cache, room->str, room->len, conn->str,
                                 conn->len, seq) < 0)
            ms_mirror_cache_failed(app, 0);
        app->mirror->members++;
    }
}


static int apply_batch(ms_app_t *app, const redisReply *r)
{
    ms_mirror_t *m = app->mirror;
    ms_kind_t kind = m->phase == PHASE_CONNS ? MS_KIND_CONN : MS_KIND_ROOM;
    const redisReply *items = r->element[2];
    uint64_t seq = (uint64_t)r->element[1]->integer;
    uint64_t epoch = strtoull(r->element[3]->str, NULL, 10);
    ms_cache_entry_t e;
    unsigned failures;
    int rc;

    if (!m->have_seq) {
        m->seq = seq;
        m->have_seq = true;
        m->load_epoch = epoch;
        rc = check_sequence(app, seq);
        if (rc != 0)
            return rc;
    }

    /*
     * Another epoch than the cache's, or than the first batch's (a flush
     * deletes it, the next sync.lua makes a new one), or a sequence gone
     * back: Redis lost its data, and what was read before went with it.
     */
    if ((m->epoch != 0 && epoch != m->epoch) || epoch != m->load_epoch ||
        seq < m->seq) {
        ms_log_warn("Redis lost its data during the load, loading again",
                    "epoch=%" PRIu64 " seq=%" PRIu64, epoch, seq);
        if (forget_everything(app, seq) < 0)
            return -1;
        load_start(app);
        return 1;
    }
    failures = m->cache_failures;
    if (ms_cache_begin(app->cache) < 0)
        return -1;
    if (m->phase == PHASE_MEMBERS) {
        apply_members(app, items, seq);
        goto commit;
    }
    for (size_t i = 0; i + 2 < items->elements; i += 3) {
        const redisReply *id = items->element[i];
        const redisReply *json = items->element[i + 1];
        const redisReply *ver = items->element[i + 2];

        if (id->type != REDIS_REPLY_STRING ||
            json->type != REDIS_REPLY_STRING ||
            ver->type != REDIS_REPLY_INTEGER || ver->integer < 0)
            continue;
        if (ms_cache_get(app->cache, kind, id->str, id->len, &e) < 0 ||
            e.version > seq)
            continue;
        apply_value(app, kind, id->str, id->len, (uint64_t)ver->integer,
                    json->str, json->len, MS_APPLY_ALWAYS);
        m->entries[kind]++;
    }
commit:
    if (ms_cache_commit(app->cache) < 0 || failures != m->cache_failures)
        return -1;
    return 0;
}


static bool batch_shape_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           r->element[1]->type == REDIS_REPLY_INTEGER &&
           r->element[2]->type == REDIS_REPLY_ARRAY &&
           r->element[3]->type == REDIS_REPLY_STRING;
}


static void on_batch(void *arg, redisReply *r, int status)
{
    batch_t *b = arg;
    ms_app_t *app = b->app;
    ms_mirror_t *m = app->mirror;
    bool current = m != NULL && b->gen == m->gen && m->live;
    int rc;

    (void)status;
    free(b);
    if (!current)
        return; /* a newer load has started, or the links dropped */
    if (r == NULL) {
        load_failed(app, "Redis connection lost");
        return;
    }
    if (!batch_shape_ok(r)) {
        if (r->type == REDIS_REPLY_ERROR)
            ms_log_error("load script failed", "error=\"%.*s\"", (int)r->len,
                         r->str);
        load_failed(app, "unexpected reply from load script");
        return;
    }
    rc = apply_batch(app, r);
    if (rc < 0) {
        load_failed(app, "cache write failed");
        return;
    }
    if (rc > 0)
        return; /* the load started over */

    if (strcmp(r->element[0]->str, "0") != 0) {
        load_next(app, r->element[0]->str, r->element[0]->len);
    } else if (m->phase != PHASE_MEMBERS) {
        m->phase++;
        load_next(app, "0", 1);
    } else {
        load_done(app);
    }
}


static void load_next(ms_app_t *app, const char *cursor, size_t cursor_len)
{
    const ms_layout_t *l = &app->layout;
    batch_t *b = ms_malloc(sizeof(*b));
    const char *argv[12] = {
        l->conn_meta,    l->conn_versions,  l->room_versions,
        l->seq,          l->epoch,          phase_name[app->mirror->phase],
        cursor,          LOAD_BATCH,        l->room_prefix,
        l->room_pattern, l->members_prefix, l->members_pattern};
    size_t argvlen[12];

    for (int i = 0; i < 12; i++)
        argvlen[i] = strlen(argv[i]);
    argvlen[6] = cursor_len;
    b->app = app;
    b->gen = app->mirror->gen;
    if (ms_redis_script(app->redis, MS_SCRIPT_LOAD, 5, 12, argv, argvlen,
                        on_batch, b) < 0) {
        free(b);
        load_failed(app, "Redis not reachable");
    }
}


static void load_begin(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;
    int64_t max;

    m->phase = PHASE_CONNS;
    m->have_seq = false;
    m->entries[0] = m->entries[1] = 0;
    m->skipped = 0;
    m->members = 0;
    m->started = uv_now(app->loop);
    max = ms_cache_max_version(app->cache);
    m->held_at_start = max > 0 ? (uint64_t)max : 0;
    if (max < 0) {
        load_failed(app, "cache not readable");
        return;
    }
    if (ms_cache_resync_begin(app->cache) < 0) {
        ms_mirror_cache_failed(app, 0);
        load_failed(app, "cache write failed");
        return;
    }
    ms_log_info("resync started", NULL);
    log_state(app);
    load_next(app, "0", 1);
}


/*
 * A load writes to memory alone when memory holds all the cache file
 * (cache.h), many times faster than row by row into the file. After the
 * cache opens, or loses a transaction, the index fills from the file in
 * steps: a load waits for that (a fraction of a second per 100,000
 * entries, with reads served meanwhile) unless the fill fails.
 */
static void load_start(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    uv_timer_stop(&m->retry);
    m->gen++;
    m->loaded = false;
    m->load_gen = 0;
    if (!ms_cache_filled(app->cache)) {
        m->load_gen = m->gen;
        ms_log_debug("resync waits for the cache index to fill", NULL);
        log_state(app);
        return;
    }
    load_begin(app);
}


void ms_mirror_cache_filled(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    if (m == NULL || m->load_gen == 0 || m->load_gen != m->gen || !m->live)
        return;
    m->load_gen = 0;
    load_begin(app);
}


static void sync_next(ms_app_t *app, uint64_t from);

/* A catch-up cannot be made: load everything instead. */
static void sync_to_load(ms_app_t *app, const char *why)
{
    /*
     * Until a load completes, no catch-up may build on the old position,
     * not even after a restart half-way through the load.
     */
    app->mirror->positioned = false;
    ms_watch_history_changed(app);
    if (ms_cache_meta_set(app->cache, "run_id", 0) < 0)
        ms_mirror_cache_failed(app, 0);

    /* While the cache cannot be written, this repeats every second. */
    ms_log(app->mirror->cache_failing ? MS_LOG_DEBUG : MS_LOG_INFO,
           "full resync needed", "reason=\"%s\"", why);
    load_start(app);
}


/*
 * Remembers the Redis process; true when it is another one than at the
 * last sync (a restart or a failover: recent history may have changed),
 * or, at start-up, than the one the cache file was last synced with.
 */
static bool new_server(ms_mirror_t *m, const redisReply *run_id)
{
    bool changed = m->run_id[0] != '\0'
                       ? strlen(m->run_id) != run_id->len ||
                             memcmp(m->run_id, run_id->str, run_id->len) != 0
                       : m->saved_run != run_prefix(run_id->str, run_id->len);

    memcpy(m->run_id, run_id->str, run_id->len);
    m->run_id[run_id->len] = '\0';
    return changed;
}


/*
 * Checks that Redis holds the history the cache comes from. Returns 0 to
 * go on catching up, or 1 when a full load was started instead.
 */
static int sync_check(ms_app_t *app, uint64_t epoch, uint64_t seq,
                      uint64_t oldest, uint64_t from, bool restarted,
                      bool catching_up)
{
    ms_mirror_t *m = app->mirror;

    if (m->epoch != 0 && epoch != m->epoch) {
        ms_log_warn("Redis holds another history (epoch changed)",
                    "cached_epoch=%" PRIu64 " epoch=%" PRIu64, m->epoch, epoch);
        if (forget_everything(app, seq) < 0) {
            load_failed(app, "cache write failed");
            return 1;
        }
    }
    if (m->epoch != epoch) {
        m->epoch = epoch;
        save_position(app);
    }
    if (!m->positioned) {
        sync_to_load(app, "no position to catch up from");
        return 1;
    }
    if (restarted) {
        sync_to_load(app, "Redis restarted or failed over");
        return 1;
    }
    /*
     * from - 1 is the position when the sync was sent: channel events
     * handled since (during a history check) may be newer than the
     * sequence this reply read.
     */
    if (seq < from - 1) {
        if (forget_everything(app, seq) == 0)
            sync_to_load(app, "sequence went back");
        else
            load_failed(app, "cache write failed");
        return 1;
    }

    /* The log must still hold the first change wanted, unless none is. */
    if (catching_up && seq >= from && (oldest == 0 || oldest > from)) {
        sync_to_load(app, "the change log no longer reaches back");
        return 1;
    }
    return 0;
}


static bool sync_shape_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements == 6 &&
           r->element[5]->type == REDIS_REPLY_INTEGER &&
           r->element[5]->integer >= 0 &&
           r->element[4]->type == REDIS_REPLY_STRING &&
           r->element[4]->len < sizeof(((ms_mirror_t *)0)->run_id) &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           r->element[1]->type == REDIS_REPLY_INTEGER &&
           r->element[1]->integer >= 0 &&
           r->element[2]->type == REDIS_REPLY_INTEGER &&
           r->element[2]->integer >= 0 &&
           r->element[3]->type == REDIS_REPLY_ARRAY;
}


/*
 * Applies a batch of changes read from the log, raising *last to the
 * highest version among them. Returns 0 or a negative code.
 */
static int sync_apply(ms_app_t *app, const redisReply *changes, uint64_t *last)
{
    unsigned failures = app->mirror->cache_failures;

    if (ms_cache_begin(app->cache) < 0)
        return MS_EINTERNAL;
    for (size_t i = 0; i < changes->elements; i++) {
        const redisReply *c = changes->element[i];
        uint64_t v;

        if (c->type != REDIS_REPLY_STRING)
            continue;
        v = apply_change(app, c->str, c->len, false);
        if (v > *last)
            *last = v;
        app->mirror->caught++;
    }
    if (ms_cache_commit(app->cache) < 0 ||
        failures != app->mirror->cache_failures)
        return MS_EINTERNAL;
    return 0;
}


/*
 * The reply to sync.lua for a batch of the current generation: checks it
 * against the cached history (sync_check). Returns 0 to go on, or 1 when
 * it was stale, or failed, or a full load was started instead.
 */
static int sync_reply(batch_t *b, const redisReply *r, bool catching_up,
                      uint64_t *seq)
{
    ms_app_t *app = b->app;
    ms_mirror_t *m = app->mirror;
    uint64_t epoch, oldest;

    if (m == NULL || b->gen != m->gen || !m->live)
        return 1;
    if (r == NULL || !sync_shape_ok(r)) {
        load_failed(app, r == NULL ? "Redis connection lost"
                                   : "unexpected reply from sync script");
        return 1;
    }
    epoch = strtoull(r->element[0]->str, NULL, 10);
    *seq = (uint64_t)r->element[1]->integer;
    oldest = (uint64_t)r->element[2]->integer;
    ms_mirror_saw_version(app, *seq);
    return sync_check(app, epoch, *seq, oldest, b->from,
                      new_server(m, r->element[4]), catching_up);
}


int ms_mirror_read_log(ms_app_t *app, uint64_t from, const char *count,
                       ms_redis_reply_cb cb, void *arg)
{
    const ms_layout_t *l = &app->layout;
    char first[24];
    const char *argv[5] = {l->epoch, l->seq, l->log, first, count};
    size_t argvlen[5];

    snprintf(first, sizeof(first), "%" PRIu64, from);
    for (int i = 0; i < 5; i++)
        argvlen[i] = strlen(argv[i]);
    if (app->redis == NULL)
        return MS_EUNAVAIL;
    return ms_redis_script(app->redis, MS_SCRIPT_SYNC, 3, 5, argv, argvlen, cb,
                           arg);
}


/* Reads the log for this generation; false if Redis cannot be asked. */
static bool sync_send(ms_app_t *app, uint64_t from, const char *count,
                      ms_redis_reply_cb cb)
{
    batch_t *b = ms_malloc(sizeof(*b));

    b->app = app;
    b->gen = app->mirror->gen;
    b->from = from;
    if (ms_mirror_read_log(app, from, count, cb, b) < 0) {
        free(b);
        return false;
    }
    return true;
}


static void on_sync(void *arg, redisReply *r, int status)
{
    batch_t *b = arg;
    ms_app_t *app = b->app;
    ms_mirror_t *m = app->mirror;
    uint64_t seq, from = b->from, last;
    int rc = sync_reply(b, r, true, &seq);

    (void)status;
    free(b);
    if (rc != 0)
        return;

    last = from - 1;
    if ((uint64_t)r->element[5]->integer > last)
        last = (uint64_t)r->element[5]->integer;
    if (sync_apply(app, r->element[3], &last) < 0) {
        load_failed(app, "cache write failed");
        return;
    }
    if (r->element[3]->elements >= SYNC_BATCH_N) {
        sync_next(app, last + 1);
        return;
    }
    ms_log_info("caught up from the change log",
                "changes=%" PRIu64 " from=%" PRIu64 " seq=%" PRIu64
                " ms=%" PRIu64,
                m->caught, m->applied + 1, seq, uv_now(app->loop) - m->started);
    sync_done(app, seq);
}


static void sync_next(ms_app_t *app, uint64_t from)
{
    if (!sync_send(app, from, SYNC_BATCH, on_sync))
        load_failed(app, "Redis not reachable");
}


/*
 * After the links come up, or a gap in the change events: read back from
 * the change log what the cache misses, or load everything when the log
 * cannot tell (see sync_check). Reads are stale meanwhile.
 */
static void sync_start(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    m->failures_at_sync = m->cache_failures;
    uv_timer_stop(&m->retry);
    m->gen++;
    m->loaded = false;
    m->caught = 0;
    m->started = uv_now(app->loop);
    log_state(app);
    sync_next(app, m->applied + 1);
}


static void history_check(ms_app_t *app);

static void on_check(void *arg, redisReply *r, int status)
{
    batch_t *b = arg;
    ms_app_t *app = b->app;
    ms_mirror_t *m = app->mirror;
    uint64_t seq;
    int rc;

    (void)status;
    if (m != NULL && b->gen == m->gen && m->live) {
        m->checking = false;

        /* A check that failed proved nothing: a catch-up checks the
         * same, and is tried again until it works (reads stale). */
        if (r == NULL || !sync_shape_ok(r)) {
            const char *why = r == NULL ? "no reply" : "unexpected reply";

            if (r != NULL && r->type == REDIS_REPLY_ERROR)
                why = r->str;
            ms_log_warn("history check failed, catching up instead",
                        "error=\"%s\"", why);
            free(b);
            sync_start(app);
            return;
        }
    }
    rc = sync_reply(b, r, false, &seq);
    free(b);
    if (rc == 0 && m->check_again)
        history_check(app);
}


/*
 * A change under the position is most likely one that was under way
 * while a load or catch-up read past it, but it may also come from a
 * sequence that started over (a flush this sidecar saw nothing else of).
 * sync.lua, asked for no changes, tells them apart by the epoch and the
 * server's run_id. After a load while writes flow, thousands of such
 * changes arrive back to back: one check is in flight at a time, and one
 * more follows it if any came meanwhile. Reads stay served throughout.
 */
static void history_check(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    if (m->checking && m->check_gen == m->gen) {
        m->check_again = true;
        return;
    }
    m->check_again = false;
    m->check_gen = m->gen;
    m->checking = sync_send(app, m->applied + 1, "0", on_check);
}


void ms_mirror_rebuild(ms_app_t *app, uint64_t seq)
{
    ms_mirror_t *m = app->mirror;

    if (m == NULL)
        return;
    if (forget_everything(app, seq) < 0 || !m->live)
        return;

    /* A load under way read versions from before the reset: start over. */
    load_start(app);
}


void ms_mirror_on_state(void *arg, bool live)
{
    ms_app_t *app = arg;
    ms_mirror_t *m = app->mirror;

    if (live == m->live)
        return;
    m->live = live;
    ms_scrub_on_live(app, live);
    ms_registry_on_live(app, live);
    ms_watch_on_live(app, live);
    if (live) {
        sync_start(app);
        return;
    }
    m->loaded = false;
    m->last_event = 0;
    m->gen++;
    log_state(app);
}


void ms_mirror_cache_failed(ms_app_t *app, uint64_t version)
{
    ms_mirror_t *m = app->mirror;

    if (m == NULL)
        return;
    m->cache_failures++;

    /* The change must be read again: the position goes back before it. A
     * value without a version (from a load) needs a load. */
    if (version == 0)
        m->positioned = false;
    else if (version - 1 < m->applied)
        m->applied = version - 1;
    if (!m->cache_failing) {
        m->cache_failing = true;
        ms_log_error("cache write failed: serving what it holds, stale, "
                     "retrying",
                     "version=%" PRIu64 " retry_ms=%d", version, LOAD_RETRY_MS);
    }

    /* A sync under way sees the failure itself; otherwise start one. */
    if (m->loaded) {
        m->loaded = false;
        log_state(app);
        if (m->live)
            uv_timer_start(&m->retry, on_retry, LOAD_RETRY_MS, 0);
    }
}


void ms_mirror_cache_persisted(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    if (m != NULL && m->loaded && m->positioned)
        save_position(app);
}


bool ms_mirror_cache_failing(const ms_app_t *app)
{
    return app->mirror != NULL && app->mirror->cache_failing;
}


void ms_mirror_saw_version(ms_app_t *app, uint64_t version)
{
    if (app->mirror != NULL && version > app->mirror->high)
        app->mirror->high = version;
}


uint64_t ms_mirror_applied(const ms_app_t *app)
{
    return app->mirror != NULL && app->mirror->positioned ? app->mirror->applied
                                                          : 0;
}


uint64_t ms_mirror_high(const ms_app_t *app)
{
    return app->mirror != NULL ? app->mirror->high : 0;
}


bool ms_mirror_history(const ms_app_t *app, char *epoch, size_t size,
                       const char **run_id)
{
    const ms_mirror_t *m = app->mirror;

    if (m == NULL || !m->positioned || m->epoch == 0 || m->run_id[0] == '\0')
        return false;
    snprintf(epoch, size, "%" PRIu64, m->epoch);
    *run_id = m->run_id;
    return true;
}


unsigned ms_mirror_rebuilds(const ms_app_t *app)
{
    return app->mirror != NULL ? app->mirror->rebuilds : 0;
}


/*
 * Writes take their versions from one INCR inside the same script that
 * publishes, so the channel carries strictly increasing versions: one
 * that does not increase means the sequence started over; one that skips
 * ahead means messages were lost (or a write failed half-way), and the
 * change log fills the gap.
 */
static void channel_event(ms_app_t *app, uint64_t version)
{
    ms_mirror_t *m = app->mirror;

    if (m->last_event != 0 && version <= m->last_event)
        ms_mirror_rebuild(app, version);
    m->last_event = version;
    ms_mirror_saw_version(app, version);
    if (!m->loaded || !m->positioned)
        return;

    /*
     * Not above the position: a message that was under way while a load
     * ran (harmless, and the likely case: the cache is not marked stale),
     * or Redis's sequence starting over after a flush that this sidecar
     * has seen nothing else of. A sync tells them apart (the flush took
     * the epoch with it).
     */
    if (version <= m->applied) {
        history_check(app);
        return;
    }
    if (version == m->applied + 1) {
        /* Saved before this change is applied: never ahead of the cache. */
        if (++m->unsaved >= SAVE_EVERY)
            save_position(app);
        m->applied = version;
        return;
    }
    if (version > m->applied + 1) {
        ms_log_warn("gap in change events, catching up from the log",
                    "applied=%" PRIu64 " got=%" PRIu64, m->applied, version);
        sync_start(app);
    }
}


static bool str_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);

    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}


/* [version, "join" or "leave", room, conn]: a membership change. */
static void apply_membership(ms_app_t *app, const msgpack_object *f,
                             uint64_t version)
{
    int rc = ms_cache_member_apply(
        app->cache, f[2].via.str.ptr, f[2].via.str.size, f[3].via.str.ptr,
        f[3].via.str.size, version, str_is(&f[1], "join"));

    if (rc < 0)
        ms_mirror_cache_failed(app, version);
}


/*
 * Applies one change message from the channel or the log: [version,
 * kind, id, json or false, existed, closed] for an entry (existed, whether
 * it had a value before, and closed, a connection's close that also took
 * it out of its rooms, may be missing), or [version, "join" or "leave",
 * room, conn] for a membership. Returns its version, or 0 when malformed.
 */
static uint64_t apply_change(ms_app_t *app, const char *payload, size_t len,
                             bool from_channel)
{
    msgpack_unpacked up;
    const msgpack_object *f;
    ms_cache_entry_t e;
    ms_kind_t kind = MS_KIND_CONN;
    uint64_t version = 0;
    bool existed = true, closed = false, membership;
    size_t off = 0, n;

    msgpack_unpacked_init(&up);
    if (ms_msgpack_check(payload, len, 1, NULL) < 0 ||
        msgpack_unpack_next(&up, payload, len, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_ARRAY || up.data.via.array.size < 4 ||
        up.data.via.array.size > 6)
        goto bad;
    f = up.data.via.array.ptr;
    n = up.data.via.array.size;
    if ((n >= 5 && f[4].type != MSGPACK_OBJECT_BOOLEAN) ||
        (n == 6 && f[5].type != MSGPACK_OBJECT_BOOLEAN))
        goto bad;
    existed = n < 5 || f[4].via.boolean;
    closed = n == 6 && f[5].via.boolean;
    membership = str_is(&f[1], "join") || str_is(&f[1], "leave");
    if (f[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[0].via.u64 == 0 ||
        f[1].type != MSGPACK_OBJECT_STR || f[2].type != MSGPACK_OBJECT_STR ||
        !(f[3].type == MSGPACK_OBJECT_STR ||
          (!membership && f[3].type == MSGPACK_OBJECT_BOOLEAN &&
           !f[3].via.boolean)) ||
        (membership && n != 4))
        goto bad;
    if (str_is(&f[1], "conn"))
        kind = MS_KIND_CONN;
    else if (str_is(&f[1], "room"))
        kind = MS_KIND_ROOM;
    else if (!membership)
        goto bad;
    version = f[0].via.u64;
    if (from_channel) {
        if (membership)
            ms_scrub_saw_membership(app, f[2].via.str.ptr, f[2].via.str.size,
                                    str_is(&f[1], "join"));
        else
            ms_scrub_saw_change(app, kind, f[2].via.str.ptr, f[2].via.str.size,
                                f[3].type != MSGPACK_OBJECT_STR, existed);
        channel_event(app, version);
    }
    if (membership) {
        apply_membership(app, f, version);
        goto done;
    }
    if (closed && kind == MS_KIND_CONN &&
        ms_cache_member_drop_conn(app->cache, f[2].via.str.ptr,
                                  f[2].via.str.size, version) < 0)
        ms_mirror_cache_failed(app, version);

    /* Our own writes come back too; skip converting them again. */
    if (ms_cache_get(app->cache, kind, f[2].via.str.ptr, f[2].via.str.size,
                     &e) == 0 &&
        e.version >= version)
        goto done;
    apply_value(app, kind, f[2].via.str.ptr, f[2].via.str.size, version,
                f[3].type == MSGPACK_OBJECT_STR ? f[3].via.str.ptr : NULL,
                f[3].type == MSGPACK_OBJECT_STR ? f[3].via.str.size : 0,
                MS_APPLY_NEWER);
    goto done;

bad:
    ms_log_warn("malformed change message ignored", "bytes=%zu from=%s", len,
                from_channel ? "channel" : "log");
done:
    msgpack_unpacked_destroy(&up);
    return version;
}


void ms_mirror_on_message(void *arg, const char *channel, size_t channel_len,
                          const char *payload, size_t len)
{
    ms_app_t *app = arg;
    const char *ours = app->layout.channel;

    if (app->mirror == NULL)
        return;
    if (channel_len == strlen(ours) &&
        memcmp(channel, ours, channel_len) == 0) {
        (void)apply_change(app, payload, len, true);
        ms_watch_on_change(app, payload, len);
    } else {
        ms_scrub_on_keyspace(app, channel, channel_len, payload, len);
    }
}


static void on_every(uv_timer_t *t)
{
    ms_app_t *app = t->data;
    ms_mirror_t *m = app->mirror;

    if (m->live && m->loaded && m->positioned)
        history_check(app);
}


void ms_mirror_init(ms_app_t *app)
{
    ms_mirror_t *m = ms_calloc(1, sizeof(*app->mirror));

    app->mirror = m;
    uv_timer_init(app->loop, &m->retry);
    m->retry.data = app;
    uv_timer_init(app->loop, &m->every);
    m->every.data = app;
    if (app->cfg->history_check != 0)
        uv_timer_start(&m->every, on_every, app->cfg->history_check,
                       app->cfg->history_check);

    /*
     * Where the cache file says it stopped, a start catches up from the
     * change log like a reconnect. Writes made straight into Redis while
     * the daemon was down are not in the log: the scrub (scrub.h) finds
     * and versions them, which puts them there. With the scrub off, only
     * a full load would see them: a start then loads everything.
     */
    if (ms_cache_meta_get(app->cache, "epoch", &m->epoch) < 0 ||
        ms_cache_meta_get(app->cache, "applied", &m->applied) < 0 ||
        ms_cache_meta_get(app->cache, "run_id", &m->saved_run) < 0) {
        m->epoch = m->applied = m->saved_run = 0;
    }
    m->positioned =
        m->epoch != 0 && m->saved_run != 0 && app->cfg->scrub_interval != 0;
}


static void on_timer_closed(uv_handle_t *h)
{
    ms_mirror_t *m = h->data;

    if (--m->open_timers == 0)
        free(m);
}


void ms_mirror_close(ms_app_t *app)
{
    ms_mirror_t *m = app->mirror;

    if (m->loaded)
        save_position(app);

    /* Late batch replies find no mirror and stop there. */
    app->mirror = NULL;
    m->open_timers = 2;
    m->retry.data = m;
    m->every.data = m;
    uv_close((uv_handle_t *)&m->retry, on_timer_closed);
    uv_close((uv_handle_t *)&m->every, on_timer_closed);
}
