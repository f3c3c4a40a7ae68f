/*
 * scrub.c - versions the writes made into Mesh's keys outside meshsync
 * (see scrub.h): the lease, the scans, the keyspace-notification filter,
 * the membership comparison and the adoptions. Loop thread only.
 */
#include "scrub.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "mirror.h"
#include "registry.h"
#include "writes.h"

/* The lease: renewed every LEASE_RENEW_MS, lost LEASE_TTL_MS after. */
#define LEASE_RENEW_MS 1000
#define LEASE_TTL      "3000"

/* How long an unexplained notification waits for its change message. */
#define NOTIFY_DELAY_MS 20
/*
 * The shortest time between the starts of two scans of the connections'
 * hash that notifications ask for (a burst of writes costs one scan), and
 * its multiple of the last such scan's duration: with many connections,
 * Redis spends at most about a fifth of its time on these scans.
 */
#define CONN_DELAY_MS    1000
#define CONN_DELAY_TIMES 5

/* The COUNT hint per scan step; room names per "rooms" step. */
#define SCAN_BATCH "500"
#define ROOMS_MAX  500

/* Notifications waiting for their explanation, at most. */
#define PENDING_MAX 4096

typedef enum {
    STEP_CONN = 0, /* connections' values */
    STEP_ROOM,     /* room keys */
    STEP_CONNV,    /* connections' versions: deletes */
    STEP_ROOMV,    /* rooms' versions: deletes */
    STEP_MSET,     /* room membership sets, compared with the cache */
    STEP_DONE
} step_t;

static const char *const step_name[STEP_DONE] = {"conn", "room", "connv",
                                                 "roomv", "mset"};

/* A list of strings (ids, rooms), binary-safe. */
typedef struct member_s {
    char *s;
    size_t len;
} member_t;

typedef struct members_s {
    member_t *v;
    size_t n, cap;
} members_t;

/* What a notification was about: "hset" and the like, "hdel", "del". */
typedef enum { EV_SET, EV_HDEL, EV_DEL, EV_SADD, EV_SREM, EV_OTHER } event_t;

typedef struct pending_s {
    bool room;    /* a room key; else the connections' hash ... */
    bool members; /* ... or a room's membership set */
    event_t ev;
    char *id; /* the room name (rooms and sets only) */
    size_t id_len;
} pending_t;

struct ms_scrub_s {
    ms_app_t *app;
    bool live;
    bool leader;
    bool stopping;  /* shutting down: the lease is not taken again */
    bool releasing; /* the lease is being given back */
    int keyspace;   /* 1 usable, 0 not, -1 unknown */
    unsigned gen;   /* bumped when the lease or the links go: late
                       replies of scans started before are dropped */
    bool scanning;  /* a scan is under way */
    bool conn_only; /* ... of the connections only */
    bool want_full; /* a full scan was asked for meanwhile */
    bool want_conn; /* a connections scan was asked for */
    step_t step;
    uint64_t started; /* uv_now() when the scan began */
    uint64_t conn_ms; /* how long the last connections scan took */
    bool lease_error; /* the last lease call got an error reply */
    uint64_t found;   /* outside writes found by this scan */
    members_t seen;   /* rooms the membership scan saw */
    pending_t *pending;
    size_t npending;
    members_t rooms; /* room names to look at, from notifications */
    uint64_t passes;
    uint64_t adopted;
    unsigned open_timers;
    uv_timer_t lease_timer;  /* renews the lease */
    uv_timer_t pass_timer;   /* the periodic full scan */
    uv_timer_t notify_timer; /* settles notifications */
    uv_timer_t conn_timer;   /* the next connections scan */
};

/* What a scan step carries to its reply. */
typedef struct call_s {
    ms_app_t *app;
    unsigned gen;
} call_t;

static call_t *call_new(ms_app_t *app)
{
    call_t *c = ms_malloc(sizeof(*c));

    c->app = app;
    c->gen = app->scrub->gen;
    return c;
}


/* The reply belongs to the current lease and links. */
static bool call_current(call_t *c)
{
    ms_scrub_t *s = c->app->scrub;

    return s != NULL && c->gen == s->gen && s->live && s->leader;
}


/* --- adopting ---------------------------------------------------------- */

/* An adoption's reply: a refusal means the entry changed again, which a
 * later scan (or notification) looks at. */
static void on_adopted(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_scrub_t *s = c->app->scrub;

    if (s != NULL && err == 0 && r != NULL && r->type == REDIS_REPLY_ARRAY &&
        r->elements >= 2 && r->element[0]->type == REDIS_REPLY_INTEGER &&
        r->element[0]->integer == 1)
        s->adopted++;
    else if (r != NULL && r->type == REDIS_REPLY_ERROR)
        ms_log_warn("adopting an outside write failed", "error=\"%.*s\"",
                    (int)r->len, r->str);
    free(c);
}


/*
 * Versions an outside write through write.lua's "adopt" check: only if
 * Redis still holds json (or, json NULL, still nothing), so a write made
 * since the scan is never undone.
 */
static void adopt(ms_app_t *app, ms_kind_t kind, const char *id, size_t id_len,
                  const char *json, size_t json_len)
{
    ms_write_call_t w = {
        .kind = kind,
        .id = id,
        .id_len = id_len,
        .check = "adopt",
        .base = json,
        .base_len = json_len,
        .op = json != NULL ? "set" : "del",
        .json = json,
        .json_len = json_len,
    };
    call_t *c = call_new(app);

    if (ms_writes_call(app, &w, on_adopted, c) < 0)
        free(c);
}


/* Adopts each entry of a step's list {kind, id, JSON text or nil, ...}. */
static void adopt_found(ms_app_t *app, const redisReply *found)
{
    ms_scrub_t *s = app->scrub;

    for (size_t i = 0; i + 2 < found->elements; i += 3) {
        const redisReply *k = found->element[i];
        const redisReply *id = found->element[i + 1];
        const redisReply *json = found->element[i + 2];
        bool present = json->type == REDIS_REPLY_STRING;

        if (k->type != REDIS_REPLY_STRING || id->type != REDIS_REPLY_STRING)
            continue;
        s->found++;
        if (MS_LOG_DEBUG <= ms_log_level) {
            char shown[80];

            ms_log_debug("outside write found", "kind=%s id=\"%s\" value=%s",
                         k->str,
                         ms_log_escape(id->str, id->len, shown, sizeof(shown)),
                         present ? "set" : "deleted");
        }
        adopt(app, strcmp(k->str, "room") == 0 ? MS_KIND_ROOM : MS_KIND_CONN,
              id->str, id->len, present ? json->str : NULL,
              present ? json->len : 0);
    }
}


static bool step_shape_ok(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           r->element[1]->type == REDIS_REPLY_ARRAY;
}


/* --- memberships -------------------------------------------------------- */

/*
 * Memberships carry no digest: the scrubber compares Redis's sets with
 * its own cache, which holds every versioned join and leave, and
 * versions each difference through members.lua's "ajoin" or "aleave"
 * (which check that Redis still shows it).
 */
static void members_add(members_t *m, const char *s, size_t len)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 16;
        m->v = ms_realloc(m->v, m->cap * sizeof(*m->v));
    }
    m->v[m->n].s = ms_strndup(s, len);
    m->v[m->n++].len = len;
}


static void members_free(members_t *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->v[i].s);
    free(m->v);
    m->v = NULL;
    m->n = m->cap = 0;
}


/* Byte order, as SQLite's BINARY collation sorts the cache's ids. */
static int member_cmp(const void *a, const void *b)
{
    const member_t *x = a, *y = b;
    int rc = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);

    if (rc != 0)
        return rc;
    return x->len < y->len ? -1 : x->len > y->len;
}


static int cached_member_cb(void *arg, const char *id, size_t len,
                            const ms_cache_entry_t *e)
{
    (void)e;
    members_add(arg, id, len);
    return 0;
}


static void on_member_adopted(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_scrub_t *s = c->app->scrub;

    if (s != NULL && err == 0 && r != NULL && r->type == REDIS_REPLY_ARRAY &&
        r->elements == 2 && r->element[0]->type == REDIS_REPLY_INTEGER &&
        r->element[0]->integer == 1)
        s->adopted++;
    free(c);
}


static void adopt_member(ms_app_t *app, const char *room, size_t room_len,
                         const member_t *conn, bool join)
{
    call_t *c = call_new(app);

    app->scrub->found++;
    ms_log_debug("outside membership found", "change=%s",
                 join ? "join" : "leave");
    if (ms_registry_members_call(app, join ? "ajoin" : "aleave", room, room_len,
                                 conn->s, conn->len, on_member_adopted, c) < 0)
        free(c);
}


/* Versions every difference between Redis's set and the cache's. */
static void members_diff(ms_app_t *app, const char *room, size_t room_len,
                         const redisReply *set)
{
    members_t redis = {0}, cached = {0};
    size_t i = 0, j = 0;

    for (size_t k = 0; k < set->elements; k++) {
        if (set->element[k]->type == REDIS_REPLY_STRING)
            members_add(&redis, set->element[k]->str, set->element[k]->len);
    }
    if (redis.n > 1)
        qsort(redis.v, redis.n, sizeof(*redis.v), member_cmp);
    if (ms_cache_members(app->cache, room, room_len, NULL, 0, cached_member_cb,
                         &cached) < 0)
        goto done;
    while (i < redis.n || j < cached.n) {
        int cmp = i == redis.n    ? 1
                  : j == cached.n ? -1
                                  : member_cmp(&redis.v[i], &cached.v[j]);

        if (cmp < 0)
            adopt_member(app, room, room_len, &redis.v[i++], true);
        else if (cmp > 0)
            adopt_member(app, room, room_len, &cached.v[j++], false);
        else
            i++, j++;
    }
done:
    members_free(&redis);
    members_free(&cached);
}


/* A reply {room, {conn, ...}, ...}: each room compared; seen noted. */
static void members_compare(ms_app_t *app, const redisReply *rooms, bool note)
{
    ms_scrub_t *s = app->scrub;

    for (size_t i = 0; i + 1 < rooms->elements; i += 2) {
        const redisReply *room = rooms->element[i];
        const redisReply *set = rooms->element[i + 1];

        if (room->type != REDIS_REPLY_STRING || set->type != REDIS_REPLY_ARRAY)
            continue;
        if (note)
            members_add(&s->seen, room->str, room->len);
        members_diff(app, room->str, room->len, set);
    }
}


static void on_mroom(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    bool current = call_current(c);

    (void)err;
    free(c);
    if (current && !ms_mirror_stale(app) && r != NULL &&
        r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_ARRAY)
        members_compare(app, r->element[1], false);
}


static void cached_room_cb(void *arg, const char *room, size_t len)
{
    members_add(arg, room, len);
}


/* Asks for the sets of up to ROOMS_MAX rooms (step "mroom"). */
static void named_call(ms_app_t *app, const char *step, bool members,
                       const member_t *names, size_t n, ms_redis_reply_cb cb);

static void mroom_call(ms_app_t *app, const member_t *rooms, size_t n)
{
    named_call(app, "mroom", true, rooms, n, on_mroom);
}


/*
 * The set scan is over: rooms the cache has members of but the scan did
 * not see (their set is gone) are looked at by name.
 */
static void members_gone(ms_app_t *app)
{
    ms_scrub_t *s = app->scrub;
    members_t cached = {0}, gone = {0};

    if (ms_cache_member_rooms(app->cache, cached_room_cb, &cached) == 0) {
        if (s->seen.n > 1)
            qsort(s->seen.v, s->seen.n, sizeof(*s->seen.v), member_cmp);
        for (size_t i = 0; i < cached.n; i++) {
            if (s->seen.n == 0 ||
                bsearch(&cached.v[i], s->seen.v, s->seen.n, sizeof(*s->seen.v),
                        member_cmp) == NULL)
                members_add(&gone, cached.v[i].s, cached.v[i].len);
        }
        for (size_t i = 0; i < gone.n; i += ROOMS_MAX)
            mroom_call(app, gone.v + i,
                       gone.n - i < ROOMS_MAX ? gone.n - i : ROOMS_MAX);
    }
    members_free(&cached);
    members_free(&gone);
    members_free(&s->seen);
}


/* --- scanning ---------------------------------------------------------- */

static void scan_start(ms_app_t *app, bool conn_only);
static void scan_step(ms_app_t *app, const char *cursor, size_t cursor_len);

/* A scan ended (done, or failed): the one asked for meanwhile begins. */
static void scan_end(ms_app_t *app, bool done)
{
    ms_scrub_t *s = app->scrub;

    s->scanning = false;
    if (done && !s->conn_only)
        s->passes++;
    if (done && s->conn_only)
        s->conn_ms = uv_now(app->loop) - s->started;
    /* Scans of the connections can come every second: debug only. */
    if (done)
        ms_log(s->conn_only ? MS_LOG_DEBUG : MS_LOG_INFO, "scrub done",
               "scope=%s found=%" PRIu64 " ms=%" PRIu64,
               s->conn_only ? "conns" : "all", s->found,
               uv_now(app->loop) - s->started);
    if (s->want_full)
        scan_start(app, false);
    else if (s->want_conn && !uv_is_active((uv_handle_t *)&s->conn_timer))
        scan_start(app, true);
}


static void on_step(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    bool current = call_current(c);
    ms_scrub_t *s = app->scrub;

    (void)err;
    free(c);
    if (!current)
        return;
    if (!step_shape_ok(r)) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            ms_log_warn("scrub step failed", "error=\"%.*s\"", (int)r->len,
                        r->str);
        scan_end(app, false);
        return;
    }
    /*
     * Memberships are compared with this sidecar's cache: only when it is
     * caught up, or every change still on its way would look like a
     * difference (adopting one is harmless, but a storm is not).
     */
    if (s->step == STEP_MSET && !ms_mirror_stale(app))
        members_compare(app, r->element[1], true);
    else if (s->step != STEP_MSET)
        adopt_found(app, r->element[1]);
    if (strcmp(r->element[0]->str, "0") != 0) {
        scan_step(app, r->element[0]->str, r->element[0]->len);
        return;
    }
    if (s->step == STEP_MSET && !ms_mirror_stale(app))
        members_gone(app);

    /* Next step; a connections scan does only the two about them. */
    s->step = s->step == STEP_CONN && s->conn_only    ? STEP_CONNV
              : s->step == STEP_CONNV && s->conn_only ? STEP_DONE
                                                      : s->step + 1;
    if (s->step == STEP_DONE)
        scan_end(app, true);
    else
        scan_step(app, "0", 1);
}


static void scan_step(ms_app_t *app, const char *cursor, size_t cursor_len)
{
    const ms_layout_t *l = &app->layout;
    bool mset = app->scrub->step == STEP_MSET;
    const char *argv[9] = {l->conn_meta,
                           l->conn_versions,
                           l->room_versions,
                           l->scrubber,
                           step_name[app->scrub->step],
                           mset ? l->members_prefix : l->room_prefix,
                           mset ? l->members_pattern : l->room_pattern,
                           cursor,
                           SCAN_BATCH};
    size_t argvlen[9];
    call_t *c = call_new(app);

    for (int i = 0; i < 9; i++)
        argvlen[i] = strlen(argv[i]);
    argvlen[7] = cursor_len;
    if (app->redis == NULL || ms_redis_script(app->redis, MS_SCRIPT_SCRUB, 4, 9,
                                              argv, argvlen, on_step, c) < 0) {
        free(c);
        scan_end(app, false);
    }
}


/*
 * Scans everything, or only the connections (what their notifications
 * ask for). One scan at a time: one asked for meanwhile follows it.
 */
static void scan_start(ms_app_t *app, bool conn_only)
{
    ms_scrub_t *s = app->scrub;

    if (s->scanning) {
        if (conn_only)
            s->want_conn = true;
        else
            s->want_full = true;
        return;
    }
    if (!conn_only)
        s->want_full = false;
    s->want_conn = false;
    s->scanning = true;
    s->conn_only = conn_only;
    members_free(&s->seen);
    s->step = STEP_CONN;
    s->found = 0;
    s->started = uv_now(app->loop);
    scan_step(app, "0", 1);
}


/* --- keyspace notifications -------------------------------------------- */

static void pending_clear(ms_scrub_t *s)
{
    for (size_t i = 0; i < s->npending; i++)
        free(s->pending[i].id);
    s->npending = 0;
}


static void rooms_clear(ms_scrub_t *s)
{
    members_free(&s->rooms);
}


static void on_rooms(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    bool current = call_current(c);

    (void)err;
    free(c);
    if (current && step_shape_ok(r))
        adopt_found(app, r->element[1]);
}


/*
 * A scrub.lua step about rooms named (rooms: their values; mroom: their
 * membership sets), in one call.
 */
static void named_call(ms_app_t *app, const char *step, bool members,
                       const member_t *names, size_t n, ms_redis_reply_cb cb)
{
    const ms_layout_t *l = &app->layout;
    size_t argc = 9 + n;
    const char **argv = ms_malloc(argc * sizeof(*argv));
    size_t *argvlen = ms_malloc(argc * sizeof(*argvlen));
    call_t *c = call_new(app);

    /* KEYS, then ARGV, as schema/scrub.lua lists them. */
    argv[0] = l->conn_meta;
    argv[1] = l->conn_versions;
    argv[2] = l->room_versions;
    argv[3] = l->scrubber;
    argv[4] = step;
    argv[5] = members ? l->members_prefix : l->room_prefix;
    argv[6] = members ? l->members_pattern : l->room_pattern;
    argv[7] = "0";
    argv[8] = "0";
    for (size_t i = 0; i < 9; i++)
        argvlen[i] = strlen(argv[i]);
    for (size_t i = 0; i < n; i++) {
        argv[9 + i] = names[i].s;
        argvlen[9 + i] = names[i].len;
    }
    if (app->redis == NULL ||
        ms_redis_script(app->redis, MS_SCRIPT_SCRUB, 4, (int)argc, argv,
                        argvlen, cb, c) < 0)
        free(c);
    free(argv);
    free(argvlen);
}


/* Looks at the rooms that notifications named, in one script call. */
static void rooms_check(ms_app_t *app)
{
    ms_scrub_t *s = app->scrub;

    named_call(app, "rooms", false, s->rooms.v, s->rooms.n, on_rooms);
    rooms_clear(s);
}


static void room_wanted(ms_scrub_t *s, const char *id, size_t len)
{
    for (size_t i = 0; i < s->rooms.n; i++)
        if (s->rooms.v[i].len == len && memcmp(s->rooms.v[i].s, id, len) == 0)
            return;
    if (s->rooms.n == ROOMS_MAX)
        rooms_check(s->app);
    members_add(&s->rooms, id, len);
}


/*
 * Notifications ask for a scan of the connections: one now, then at
 * most one per CONN_DELAY_MS however many more ask.
 */
static void on_conn_timer(uv_timer_t *t);

static void conn_scan_wanted(ms_app_t *app)
{
    ms_scrub_t *s = app->scrub;
    uint64_t gap = s->conn_ms * CONN_DELAY_TIMES;

    s->want_conn = true;
    if (uv_is_active((uv_handle_t *)&s->conn_timer))
        return;
    scan_start(app, true);
    uv_timer_start(&s->conn_timer, on_conn_timer,
                   gap > CONN_DELAY_MS ? gap : CONN_DELAY_MS, 0);
}


static void on_conn_timer(uv_timer_t *t)
{
    ms_app_t *app = t->data;

    if (app->scrub->want_conn)
        conn_scan_wanted(app);
}


/*
 * The notifications no change message explained within NOTIFY_DELAY_MS
 * were outside writes: the rooms they name are looked at, the
 * connections' hash is scanned (no sooner than CONN_DELAY_MS after the
 * last such scan began).
 */
static void on_notify_timer(uv_timer_t *t)
{
    ms_app_t *app = t->data;
    ms_scrub_t *s = app->scrub;
    members_t sets = {0};
    bool conns = false;

    for (size_t i = 0; i < s->npending; i++) {
        if (s->pending[i].members)
            members_add(&sets, s->pending[i].id, s->pending[i].id_len);
        else if (s->pending[i].room)
            room_wanted(s, s->pending[i].id, s->pending[i].id_len);
        else
            conns = true;
    }
    pending_clear(s);
    if (s->rooms.n > 0)
        rooms_check(app);
    for (size_t i = 0; i < sets.n; i += ROOMS_MAX)
        mroom_call(app, sets.v + i,
                   sets.n - i < ROOMS_MAX ? sets.n - i : ROOMS_MAX);
    members_free(&sets);
    if (conns)
        conn_scan_wanted(app);
}


static event_t event_kind(const char *ev, size_t len)
{
    if ((len == 4 && memcmp(ev, "hset", 4) == 0) ||
        (len == 6 && memcmp(ev, "hsetnx", 6) == 0) ||
        (len == 7 && memcmp(ev, "hincrby", 7) == 0) ||
        (len == 12 && memcmp(ev, "hincrbyfloat", 12) == 0))
        return EV_SET;
    if (len == 4 && memcmp(ev, "hdel", 4) == 0)
        return EV_HDEL;
    if (len == 3 && memcmp(ev, "del", 3) == 0)
        return EV_DEL;
    if (len == 4 && memcmp(ev, "sadd", 4) == 0)
        return EV_SADD;
    if (len == 4 && memcmp(ev, "srem", 4) == 0)
        return EV_SREM;
    return EV_OTHER;
}


void ms_scrub_on_keyspace(ms_app_t *app, const char *channel,
                          size_t channel_len, const char *event,
                          size_t event_len)
{
    ms_scrub_t *s = app->scrub;
    const ms_layout_t *l = &app->layout;
    size_t head = strlen(l->ks_room), mhead = strlen(l->ks_members);
    pending_t *p;

    if (s == NULL || !s->leader)
        return;
    if (s->npending == PENDING_MAX) {
        /* Too many to sort out one by one: scan everything instead. */
        pending_clear(s);
        uv_timer_stop(&s->notify_timer);
        scan_start(app, false);
        return;
    }
    p = &s->pending[s->npending];
    p->members =
        channel_len > mhead && memcmp(channel, l->ks_members, mhead) == 0;
    p->room = !p->members && channel_len > head &&
              memcmp(channel, l->ks_room, head) == 0;
    if (p->members)
        head = mhead;
    p->ev = event_kind(event, event_len);
    p->id = p->room || p->members
                ? ms_strndup(channel + head, channel_len - head)
                : NULL;
    p->id_len = p->room || p->members ? channel_len - head : 0;
    s->npending++;
    if (!uv_is_active((uv_handle_t *)&s->notify_timer))
        uv_timer_start(&s->notify_timer, on_notify_timer, NOTIFY_DELAY_MS, 0);
}


static bool pending_is(const pending_t *p, bool room, const char *id,
                       size_t len, event_t ev)
{
    return !p->members && p->room == room && p->ev == ev &&
           (!room || (p->id_len == len && memcmp(p->id, id, len) == 0));
}


/*
 * write.lua's notifications come just before its change message, with
 * nothing in between (a script runs alone): an "hset", or an "hdel"
 * followed by a "del" when the hash became empty, or nothing for the
 * delete of an entry that had no value. Those are taken off the end of
 * the pending list.
 */
void ms_scrub_saw_change(ms_app_t *app, ms_kind_t kind, const char *id,
                         size_t id_len, bool deleted, bool existed)
{
    ms_scrub_t *s = app->scrub;
    bool room = kind == MS_KIND_ROOM;
    pending_t *last;

    if (s == NULL || s->npending == 0 || (deleted && !existed))
        return;
    last = &s->pending[s->npending - 1];
    if (deleted && pending_is(last, room, id, id_len, EV_DEL)) {
        free(last->id);
        if (--s->npending == 0)
            return;
        last--;
    }
    if (pending_is(last, room, id, id_len, deleted ? EV_HDEL : EV_SET)) {
        free(last->id);
        s->npending--;
    }
}


/*
 * members.lua's notifications come just before its message: an "sadd"
 * for a join, an "srem" (then a "del" when the set became empty) for a
 * leave; nothing for an adoption, which touches no set.
 */
void ms_scrub_saw_membership(ms_app_t *app, const char *room, size_t len,
                             bool join)
{
    ms_scrub_t *s = app->scrub;
    pending_t *last;

    if (s == NULL || s->npending == 0)
        return;
    last = &s->pending[s->npending - 1];
    if (!join && last->members && last->ev == EV_DEL && last->id_len == len &&
        memcmp(last->id, room, len) == 0) {
        free(last->id);
        if (--s->npending == 0)
            return;
        last--;
    }
    if (last->members && last->ev == (join ? EV_SADD : EV_SREM) &&
        last->id_len == len && memcmp(last->id, room, len) == 0) {
        free(last->id);
        s->npending--;
    }
}


/* --- the lease and the links ------------------------------------------- */

static void on_pass_timer(uv_timer_t *t)
{
    scan_start(t->data, false);
}


static void lose_lease(ms_app_t *app, const char *why)
{
    ms_scrub_t *s = app->scrub;

    s->gen++;
    s->scanning = false;
    s->want_full = s->want_conn = false;
    members_free(&s->seen);
    pending_clear(s);
    rooms_clear(s);
    uv_timer_stop(&s->pass_timer);
    uv_timer_stop(&s->notify_timer);
    uv_timer_stop(&s->conn_timer);
    if (s->leader)
        ms_log_info(s->stopping ? "scrub lease given back" : "scrub lease lost",
                    "reason=\"%s\"", why);
    s->leader = false;
}


static void on_lease(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_scrub_t *s = app->scrub;
    bool held = err == 0 && r != NULL && r->type == REDIS_REPLY_INTEGER &&
                r->integer == 1;

    free(c);
    if (s == NULL || !s->live || s->stopping)
        return;

    /* An error (the key of another type, say) turns the scrub off: said
     * once, not every second. */
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !s->lease_error)
        ms_log_warn("scrub lease unavailable, no sidecar scrubs",
                    "error=\"%.*s\"", (int)r->len, r->str);
    s->lease_error = r != NULL && r->type == REDIS_REPLY_ERROR;
    if (!held) {
        if (s->leader)
            lose_lease(app, s->lease_error ? "error from Redis"
                            : r != NULL    ? "held by another sidecar"
                                           : "Redis did not answer");
        return;
    }
    if (s->leader)
        return;

    /* Whatever was written outside while nobody watched is found now. */
    s->leader = true;
    ms_log_info("scrub lease taken", "interval_ms=%u",
                app->cfg->scrub_interval);
    scan_start(app, false);
    uv_timer_start(&s->pass_timer, on_pass_timer, app->cfg->scrub_interval,
                   app->cfg->scrub_interval);
}


/* Sends the "lease" or "release" step. Returns 0, or MS_EUNAVAIL. */
static int lease_call(ms_app_t *app, const char *step, ms_redis_reply_cb cb)
{
    const ms_layout_t *l = &app->layout;
    const char *argv[9] = {
        l->conn_meta, l->conn_versions, l->room_versions, l->scrubber,
        step,         l->room_prefix,   l->room_pattern,  app->cfg->instance_id,
        LEASE_TTL};
    size_t argvlen[9];
    call_t *c = call_new(app);

    for (int i = 0; i < 9; i++)
        argvlen[i] = strlen(argv[i]);
    if (app->redis == NULL || ms_redis_script(app->redis, MS_SCRIPT_SCRUB, 4, 9,
                                              argv, argvlen, cb, c) < 0) {
        free(c);
        return MS_EUNAVAIL;
    }
    return 0;
}


static void on_lease_timer(uv_timer_t *t)
{
    (void)lease_call(t->data, "lease", on_lease);
}


static void on_released(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_scrub_t *s = c->app->scrub;

    (void)r;
    (void)err;
    free(c);
    if (s != NULL)
        s->releasing = false;
}


void ms_scrub_release(ms_app_t *app)
{
    ms_scrub_t *s = app->scrub;

    if (s == NULL)
        return;
    s->stopping = true;
    uv_timer_stop(&s->lease_timer);
    if (!s->leader)
        return;
    lose_lease(app, "shutting down");
    s->releasing = lease_call(app, "release", on_released) == 0;
}


bool ms_scrub_releasing(const ms_app_t *app)
{
    return app->scrub != NULL && app->scrub->releasing;
}


/* Reads notify-keyspace-events: K (keyspace) and hash and generic
 * events (h and g, or A for all) are what the filter needs. */
static void on_keyspace_config(void *arg, redisReply *r, int err)
{
    call_t *c = arg;
    ms_app_t *app = c->app;
    ms_scrub_t *s = app->scrub;
    int usable = -1;

    (void)err;
    free(c);
    if (s == NULL)
        return;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        const char *f = r->element[1]->str;

        usable = strchr(f, 'K') != NULL &&
                 (strchr(f, 'A') != NULL ||
                  (strchr(f, 'h') != NULL && strchr(f, 'g') != NULL));
    }
    if (usable == s->keyspace)
        return;
    s->keyspace = usable;
    if (usable == 1)
        ms_log_info("keyspace notifications on", NULL);
    else
        ms_log_info("keyspace notifications off: outside writes are found "
                    "by the periodic scrub",
                    "notify_keyspace_events=\"%.*s\" needs=\"Kgh or KA\" "
                    "interval_ms=%u",
                    usable == 0 ? (int)r->element[1]->len : 10,
                    usable == 0 ? r->element[1]->str : "unreadable",
                    app->cfg->scrub_interval);
}


void ms_scrub_on_live(ms_app_t *app, bool live)
{
    ms_scrub_t *s = app->scrub;

    if (s == NULL || live == s->live || s->stopping)
        return;
    s->live = live;
    if (!live) {
        /* The lease runs out by itself; another sidecar takes it. */
        lose_lease(app, "Redis links down");
        uv_timer_stop(&s->lease_timer);
        return;
    }

    /* CONFIG SET does not survive a restart: asked on every connect. */
    {
        const char *argv[] = {"CONFIG", "GET", "notify-keyspace-events"};
        size_t lens[] = {6, 3, 22};
        call_t *c = call_new(app);

        if (app->redis == NULL || ms_redis_command(app->redis, 3, argv, lens,
                                                   on_keyspace_config, c) < 0)
            free(c);
    }
    uv_timer_start(&s->lease_timer, on_lease_timer, 0, LEASE_RENEW_MS);
}


void ms_scrub_stats(const ms_app_t *app, ms_scrub_stats_t *out)
{
    const ms_scrub_t *s = app->scrub;

    memset(out, 0, sizeof(*out));
    out->keyspace = -1;
    if (s == NULL)
        return;
    out->leader = s->leader;
    out->keyspace = s->keyspace;
    out->passes = s->passes;
    out->adopted = s->adopted;
}


static void timer_init(ms_app_t *app, uv_timer_t *t)
{
    uv_timer_init(app->loop, t);
    t->data = app;
    app->scrub->open_timers++;
}


void ms_scrub_init(ms_app_t *app)
{
    ms_scrub_t *s;

    /* An interval of 0 turns the scrub off. */
    if (app->cfg->scrub_interval == 0)
        return;
    s = ms_calloc(1, sizeof(*s));
    app->scrub = s;
    s->app = app;
    s->keyspace = -1;
    s->pending = ms_malloc(PENDING_MAX * sizeof(*s->pending));
    timer_init(app, &s->lease_timer);
    timer_init(app, &s->pass_timer);
    timer_init(app, &s->notify_timer);
    timer_init(app, &s->conn_timer);
}


static void on_timer_closed(uv_handle_t *h)
{
    ms_scrub_t *s = h->data;

    if (--s->open_timers > 0)
        return;
    free(s->pending);
    free(s);
}


static void timer_close(ms_scrub_t *s, uv_timer_t *t)
{
    t->data = s;
    uv_close((uv_handle_t *)t, on_timer_closed);
}


void ms_scrub_close(ms_app_t *app)
{
    ms_scrub_t *s = app->scrub;

    if (s == NULL)
        return;
    pending_clear(s);
    rooms_clear(s);
    members_free(&s->seen);

    /* Late replies find no scrub and stop there. */
    app->scrub = NULL;
    timer_close(s, &s->lease_timer);
    timer_close(s, &s->pass_timer);
    timer_close(s, &s->notify_timer);
    timer_close(s, &s->conn_timer);
}
