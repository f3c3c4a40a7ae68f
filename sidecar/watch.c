/*
 * watch.c - the change feed and its watchers (see watch.h). Entry points:
 * the watch and unwatch operations, ms_watch_session_closed(), and the
 * mirror's hooks ms_watch_on_change() and ms_watch_on_live(). Loop thread
 * only.
 *
 * The feed keeps a position: every change up to it has been pushed. A
 * channel message one above it is pushed at once; one further above opens
 * a fill, which reads the change log from position + 1 in pages while
 * later channel messages are held; when a page comes back short, every
 * change up to the sequence read with it has been pushed, and the held
 * messages go on. A message at or under the position opens a check, a
 * fill that reads no changes. Redis's sequence, epoch and run_id, read
 * with each page, and channel versions that fail to rise tell when the
 * history itself changed (Redis lost its data): then watchers get a
 * reset.
 */
#include "watch.h"

#include <inttypes.h>
#include <search.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "alloc.h"
#include "frame.h"
#include "log.h"
#include "mirror.h"

/* Ids one watch or unwatch may name, both lists together. */
#define IDS_PER_REQUEST 10000

/* Entries one session may watch, so that no session grows without bound. */
#define IDS_PER_SESSION 100000

/*
 * Changes per page read from the log. A page is pushed in one loop turn,
 * before any of it can be written, so it stays under the output limit
 * even at the largest values (100 x 64 KiB < 8 MiB).
 */
#define FILL_PAGE   "100"
#define FILL_PAGE_N 100

/* Channel messages held during a fill; past either bound, a reset. */
#define HELD_MAX       100000
#define HELD_MAX_BYTES (64u << 20)

#define RETRY_MS 1000

typedef struct watcher_s watcher_t;
typedef struct member_s member_t;

/* An entry some sessions watch. */
typedef struct watched_s {
    ms_kind_t kind;
    char *id;
    size_t id_len;
    LIST_HEAD(, member_s) members;
} watched_t;

/* One session watching one entry. */
struct member_s {
    watcher_t *w;
    watched_t *e;
    LIST_ENTRY(member_s) of_entry;
    LIST_ENTRY(member_s) of_watcher;
};

/* A session that watches something. */
struct watcher_s {
    ms_session_t *s;
    bool all;
    bool cut;        /* no more pushes: it is being cut off */
    bool cut_listed; /* in feed->cutting */
    size_t count;    /* entries in members */
    LIST_HEAD(, member_s) members;
    LIST_ENTRY(watcher_s) link;     /* feed->watchers */
    LIST_ENTRY(watcher_s) all_link; /* feed->all, while all */
    LIST_ENTRY(watcher_s) cut_link; /* feed->cutting */
};

/* A channel message held while the log is read. */
typedef struct held_s {
    STAILQ_ENTRY(held_s) link;
    uint64_t version;
    size_t len;
    char payload[];
} held_t;

/* A change message, decoded; strings point into its bytes. */
typedef struct change_s {
    uint64_t version;
    ms_kind_t kind;
    const char *id;
    size_t id_len;
    const char *json; /* NULL when the entry was deleted */
    size_t json_len;
} change_t;

struct ms_watch_s {
    ms_app_t *app;
    void *entries;  /* tsearch root of watched_t, by entry */
    void *members;  /* tsearch root of member_t, by watcher and entry */
    void *sessions; /* tsearch root of watcher_t, by session */
    LIST_HEAD(, watcher_s) watchers;
    LIST_HEAD(, watcher_s) all;
    LIST_HEAD(, watcher_s) cutting;
    bool live;             /* the Redis links are up */
    uint64_t pos;          /* every change up to this version was pushed */
    uint64_t last_channel; /* the channel's last version since links up */
    bool know_history;     /* epoch and run_id below were read */
    char epoch[32];
    char run_id[48];
    bool filling;  /* the log must be read before anything newer goes */
    bool checking; /* that fill only checks the history (check_start) */
    unsigned gen;  /* counts fills: replies of older ones are dropped */
    uint64_t fill_changes;
    uint64_t fill_started;
    STAILQ_HEAD(, held_s) held;
    size_t held_count;
    size_t held_at_send; /* held when the last fill page was asked for */
    size_t held_bytes;
    uv_timer_t retry;
};

typedef ms_watch_t feed_t;

/* What a page request carries to its reply. */
typedef struct fill_s {
    ms_app_t *app;
    unsigned gen;
    uint64_t from;
} fill_t;

/* --- the watch sets ---------------------------------------------------- */

static int compare_entries(const void *a, const void *b)
{
    const watched_t *x = a, *y = b;

    return ms_entry_compare(x->kind, x->id, x->id_len, y->kind, y->id,
                            y->id_len);
}


static int compare_members(const void *a, const void *b)
{
    const member_t *x = a, *y = b;

    if (x->w != y->w)
        return (uintptr_t)x->w < (uintptr_t)y->w ? -1 : 1;
    return compare_entries(x->e, y->e);
}


static int compare_watchers(const void *a, const void *b)
{
    const watcher_t *x = a, *y = b;

    if (x->s == y->s)
        return 0;
    return (uintptr_t)x->s < (uintptr_t)y->s ? -1 : 1;
}


static void *find(const void *key, void *const *root,
                  int (*cmp)(const void *, const void *))
{
    void *const *found = tfind(key, root, cmp);

    return found != NULL ? *found : NULL;
}


static void insert(void *node, void **root,
                   int (*cmp)(const void *, const void *))
{
    if (tsearch(node, root, cmp) == NULL)
        ms_oom();
}


static void add_id(feed_t *f, watcher_t *w, ms_kind_t kind, const char *id,
                   size_t len)
{
    watched_t key = {.kind = kind, .id = (char *)id, .id_len = len};
    member_t mkey = {.w = w, .e = &key};
    watched_t *e;
    member_t *m;

    if (find(&mkey, &f->members, compare_members) != NULL)
        return;
    e = find(&key, &f->entries, compare_entries);
    if (e == NULL) {
        e = ms_calloc(1, sizeof(*e));
        e->kind = kind;
        e->id = ms_strndup(id, len);
        e->id_len = len;
        LIST_INIT(&e->members);
        insert(e, &f->entries, compare_entries);
    }
    m = ms_calloc(1, sizeof(*m));
    m->w = w;
    m->e = e;
    LIST_INSERT_HEAD(&e->members, m, of_entry);
    LIST_INSERT_HEAD(&w->members, m, of_watcher);
    insert(m, &f->members, compare_members);
    w->count++;
}


static void remove_member(feed_t *f, member_t *m)
{
    watched_t *e = m->e;

    tdelete(m, &f->members, compare_members);
    LIST_REMOVE(m, of_entry);
    LIST_REMOVE(m, of_watcher);
    m->w->count--;
    free(m);
    if (!LIST_EMPTY(&e->members))
        return;
    tdelete(e, &f->entries, compare_entries);
    free(e->id);
    free(e);
}


static void remove_id(feed_t *f, watcher_t *w, ms_kind_t kind, const char *id,
                      size_t len)
{
    watched_t key = {.kind = kind, .id = (char *)id, .id_len = len};
    member_t mkey = {.w = w, .e = &key};
    member_t *m = find(&mkey, &f->members, compare_members);

    if (m != NULL)
        remove_member(f, m);
}


static void set_all(feed_t *f, watcher_t *w, bool all)
{
    if (w->all == all)
        return;
    w->all = all;
    if (all)
        LIST_INSERT_HEAD(&f->all, w, all_link);
    else
        LIST_REMOVE(w, all_link);
}


static void drop_held(feed_t *f)
{
    held_t *h;

    while ((h = STAILQ_FIRST(&f->held)) != NULL) {
        STAILQ_REMOVE_HEAD(&f->held, link);
        free(h);
    }
    f->held_count = 0;
    f->held_bytes = 0;
}


/*
 * The version a feed starting now stands at: the mirror's position, up to
 * which the cache holds every change (not Redis's sequence, which a cache
 * still loading or catching up may not hold yet). The fill that follows
 * pushes what lies beyond, or a reset when the log cannot.
 */
static uint64_t current_version(const ms_app_t *app)
{
    return ms_mirror_applied(app);
}


static void fill_start(feed_t *f);
static void check_start(feed_t *f);

/* Drops the fill under way, if any, and what it held. */
static void fill_cancel(feed_t *f)
{
    f->gen++;
    f->filling = false;
    f->checking = false;
    uv_timer_stop(&f->retry);
    drop_held(f);
}


/*
 * The first watcher sets the feed's position: the newest version this
 * sidecar knows of. A fill follows at once, which pushes whatever Redis
 * holds beyond it and checks Redis's history against the mirror's (or
 * learns it, when the mirror knows none yet) for later checks.
 */
static void position(feed_t *f)
{
    const char *run_id;

    fill_cancel(f);
    f->pos = current_version(f->app);
    f->last_channel = 0;
    f->know_history =
        ms_mirror_history(f->app, f->epoch, sizeof(f->epoch), &run_id) &&
        strlen(run_id) < sizeof(f->run_id);
    if (f->know_history)
        memcpy(f->run_id, run_id, strlen(run_id) + 1);
    fill_start(f);
}


/* The watcher of session s; created (empty) when create is set. */
static watcher_t *watcher_of(feed_t *f, ms_session_t *s, bool create)
{
    watcher_t key = {.s = s};
    watcher_t *w = find(&key, &f->sessions, compare_watchers);

    if (w != NULL || !create)
        return w;
    if (LIST_EMPTY(&f->watchers))
        position(f);
    w = ms_calloc(1, sizeof(*w));
    w->s = s;
    LIST_INIT(&w->members);
    LIST_INSERT_HEAD(&f->watchers, w, link);
    insert(w, &f->sessions, compare_watchers);
    return w;
}


static void watcher_drop(feed_t *f, watcher_t *w)
{
    while (!LIST_EMPTY(&w->members))
        remove_member(f, LIST_FIRST(&w->members));
    set_all(f, w, false);
    if (w->cut_listed)
        LIST_REMOVE(w, cut_link);
    LIST_REMOVE(w, link);
    tdelete(w, &f->sessions, compare_watchers);
    free(w);
}


static void watcher_settle(feed_t *f, watcher_t *w)
{
    if (!w->all && w->count == 0)
        watcher_drop(f, w);
}

/* --- pushing ----------------------------------------------------------- */

/* Packing cannot fail half-way: out of memory ends the daemon. */
static int pack_write(void *data, const char *buf, size_t len)
{
    if (msgpack_sbuffer_write(data, buf, len) != 0)
        ms_oom();
    return 0;
}


static void pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}


/*
 * Queues a push frame (its body in frame) on w's session, unless the
 * session already holds so much unsent output that this would pass the
 * limit: then w is put on the list to cut off once the push is done
 * (cutting closes the session, which changes the lists being walked).
 */
static void push_to(feed_t *f, watcher_t *w, const msgpack_sbuffer *frame)
{
    msgpack_packer *pk;

    if (w->cut)
        return;
    if (ms_session_unsent(w->s) + frame->size + MS_FRAME_HEADER >
        ms_session_output_limit()) {
        w->cut = true;
        w->cut_listed = true;
        LIST_INSERT_HEAD(&f->cutting, w, cut_link);
        return;
    }
    pk = ms_session_reply_begin(w->s);
    pk->callback(pk->data, frame->data, frame->size);
    ms_session_reply_end(w->s);
}


static void cut_pending(feed_t *f)
{
    watcher_t *w;

    while ((w = LIST_FIRST(&f->cutting)) != NULL) {
        LIST_REMOVE(w, cut_link);
        w->cut_listed = false;

        /* Closing the session drops w through ms_watch_session_closed. */
        ms_session_cut(w->s, "watcher does not read: unsent output over "
                             "the limit");
    }
}


/*
 * The value of a change as msgpack, converted once for every watcher. A
 * value meshsync cannot hold is pushed as nil, as the cache holds it.
 */
static void pack_value(feed_t *f, msgpack_packer *pk, const change_t *c)
{
    char *mp = NULL;
    size_t mp_len = 0;
    ms_error_t err;
    char shown[80];
    int rc;

    if (c->json == NULL) {
        msgpack_pack_nil(pk);
        return;
    }
    rc = ms_value_json_to_msgpack(c->json, c->json_len, &f->app->limits, &mp,
                                  &mp_len, &err);
    if (rc == MS_ENOMEM)
        ms_oom();
    if (rc < 0) {
        ms_log_warn("unreadable value in a change, pushed as nil",
                    "kind=%s id=\"%s\" version=%" PRIu64 " error=\"%s\"",
                    ms_kind_name(c->kind),
                    ms_log_escape(c->id, c->id_len, shown, sizeof(shown)),
                    c->version, err.msg);
        msgpack_pack_nil(pk);
        return;
    }
    pk->callback(pk->data, mp, mp_len);
    free(mp);
}


/* {push: "change", kind, id, value, version} */
static void pack_change(feed_t *f, msgpack_sbuffer *sb, const change_t *c)
{
    msgpack_packer pk;
    const char *kind = ms_kind_name(c->kind);

    msgpack_packer_init(&pk, sb, pack_write);
    msgpack_pack_map(&pk, 5);
    pack_str(&pk, "push", 4);
    pack_str(&pk, "change", 6);
    pack_str(&pk, "kind", 4);
    pack_str(&pk, kind, strlen(kind));
    pack_str(&pk, "id", 2);
    pack_str(&pk, c->id, c->id_len);
    pack_str(&pk, "value", 5);
    pack_value(f, &pk, c);
    pack_str(&pk, "version", 7);
    msgpack_pack_uint64(&pk, c->version);
}


/* Pushes one change, above the position, to whoever watches its entry. */
static void deliver(feed_t *f, const change_t *c)
{
    watched_t key = {.kind = c->kind, .id = (char *)c->id, .id_len = c->id_len};
    watched_t *e = find(&key, &f->entries, compare_entries);
    msgpack_sbuffer frame;
    watcher_t *w;
    member_t *m;

    f->pos = c->version;
    if (LIST_EMPTY(&f->all) && e == NULL)
        return;
    msgpack_sbuffer_init(&frame);
    pack_change(f, &frame, c);
    for (w = LIST_FIRST(&f->all); w != NULL; w = LIST_NEXT(w, all_link))
        push_to(f, w, &frame);

    /* Those watching everything had it already. */
    for (m = e != NULL ? LIST_FIRST(&e->members) : NULL; m != NULL;
         m = LIST_NEXT(m, of_entry)) {
        if (!m->w->all)
            push_to(f, m->w, &frame);
    }
    msgpack_sbuffer_destroy(&frame);
    cut_pending(f);
}


/*
 * Tells every watcher that changes up to f->pos may have been missed:
 * it must read again what it cares about; changes after pos follow.
 */
static void reset(feed_t *f, uint64_t version, const char *why)
{
    msgpack_sbuffer frame;
    msgpack_packer pk;
    watcher_t *w;

    ms_log_warn("watchers reset",
                "reason=\"%s\" from=%" PRIu64 " version=%" PRIu64, why, f->pos,
                version);
    f->pos = version;
    msgpack_sbuffer_init(&frame);
    msgpack_packer_init(&pk, &frame, pack_write);
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "push", 4);
    pack_str(&pk, "reset", 5);
    pack_str(&pk, "version", 7);
    msgpack_pack_uint64(&pk, version);
    for (w = LIST_FIRST(&f->watchers); w != NULL; w = LIST_NEXT(w, link))
        push_to(f, w, &frame);
    msgpack_sbuffer_destroy(&frame);
    cut_pending(f);
}

/* --- change messages ---------------------------------------------------- */

/* What a message on the change channel or in the log is to watchers. */
typedef enum {
    MESSAGE_BAD = -1, /* no version can be read: the mirror logs it */
    MESSAGE_OTHER,    /* takes a version, pushes nothing (a membership) */
    MESSAGE_CHANGE    /* a connection's or room's value changed */
} message_t;

static bool str_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);

    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}


/*
 * Decodes [version, kind, id, json or false, ...] into c, pointing into
 * payload (and up, which the caller destroys). Elements past the fourth
 * (existed, closed) do not matter here; messages of other kinds
 * ([version, "join", room, conn], ...) still count in the sequence.
 */
static message_t decode_message(const char *payload, size_t len,
                                msgpack_unpacked *up, change_t *c)
{
    const msgpack_object *f;
    size_t off = 0;

    if (ms_msgpack_check(payload, len, MS_VALUE_DEPTH_CAP, NULL) < 0 ||
        msgpack_unpack_next(up, payload, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        up->data.type != MSGPACK_OBJECT_ARRAY || up->data.via.array.size < 2)
        return MESSAGE_BAD;
    f = up->data.via.array.ptr;
    if (f[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || f[0].via.u64 == 0)
        return MESSAGE_BAD;
    c->version = f[0].via.u64;
    if (up->data.via.array.size < 4 ||
        !(str_is(&f[1], "conn") || str_is(&f[1], "room")) ||
        f[2].type != MSGPACK_OBJECT_STR ||
        !(f[3].type == MSGPACK_OBJECT_STR ||
          (f[3].type == MSGPACK_OBJECT_BOOLEAN && !f[3].via.boolean)))
        return MESSAGE_OTHER;
    c->kind = str_is(&f[1], "room") ? MS_KIND_ROOM : MS_KIND_CONN;
    c->id = f[2].via.str.ptr;
    c->id_len = f[2].via.str.size;
    c->json = f[3].type == MSGPACK_OBJECT_STR ? f[3].via.str.ptr : NULL;
    c->json_len = f[3].type == MSGPACK_OBJECT_STR ? f[3].via.str.size : 0;
    return MESSAGE_CHANGE;
}


/* The next message in the sequence: pushed if it is a change. */
static void advance(feed_t *f, message_t kind, const change_t *c)
{
    if (kind == MESSAGE_CHANGE)
        deliver(f, c);
    else
        f->pos = c->version;
}


/* Takes a message if it is above the position; older ones were pushed. */
static void deliver_message(feed_t *f, const char *payload, size_t len)
{
    msgpack_unpacked up;
    message_t kind;
    change_t c;

    msgpack_unpacked_init(&up);
    kind = decode_message(payload, len, &up, &c);
    if (kind != MESSAGE_BAD && c.version > f->pos)
        advance(f, kind, &c);
    msgpack_unpacked_destroy(&up);
}


/* Keeps a channel message until the fill under way is done. */
static void hold(feed_t *f, const char *payload, size_t len, uint64_t version)
{
    held_t *h;

    if (f->held_count >= HELD_MAX || f->held_bytes + len > HELD_MAX_BYTES) {
        /* What the held messages followed can no longer be told apart
         * from what they replace: start again from this message. */
        fill_cancel(f);
        reset(f, version - 1, "too many changes held while reading the log");
        deliver_message(f, payload, len);
        return;
    }
    h = ms_malloc(sizeof(*h) + len);
    h->version = version;
    h->len = len;
    memcpy(h->payload, payload, len);
    STAILQ_INSERT_TAIL(&f->held, h, link);
    f->held_count++;
    f->held_bytes += len;
}


/*
 * After a fill: the held messages go out in order. One that skips
 * versions again opens another fill (which reads at least up to it).
 */
static void drain(feed_t *f)
{
    held_t *h;

    while (!f->filling && (h = STAILQ_FIRST(&f->held)) != NULL) {
        if (h->version > f->pos + 1) {
            fill_start(f);
            return;
        }
        STAILQ_REMOVE_HEAD(&f->held, link);
        f->held_count--;
        f->held_bytes -= h->len;
        if (h->version == f->pos + 1)
            deliver_message(f, h->payload, h->len);
        free(h);
    }
}


void ms_watch_on_change(ms_app_t *app, const char *payload, size_t len)
{
    feed_t *f = app->watch;
    msgpack_unpacked up;
    message_t kind;
    change_t c;

    if (f == NULL || LIST_EMPTY(&f->watchers))
        return;
    msgpack_unpacked_init(&up);
    kind = decode_message(payload, len, &up, &c);
    if (kind == MESSAGE_BAD)
        goto done;

    /*
     * Versions are published in INCR order, so the channel's never fall
     * unless Redis's sequence started over (data lost): nothing kept is
     * comparable then. Compared on this link alone, so no race with
     * replies on the other.
     */
    if (f->last_channel != 0 && c.version <= f->last_channel) {
        fill_cancel(f);
        reset(f, c.version - 1, "Redis sequence went back");
    }
    f->last_channel = c.version;
    if (f->filling || !STAILQ_EMPTY(&f->held)) {
        hold(f, payload, len, c.version);
    } else if (c.version == f->pos + 1) {
        advance(f, kind, &c);
    } else if (c.version > f->pos + 1) {
        ms_log_debug("gap in change events, watchers wait for the log",
                     "pos=%" PRIu64 " got=%" PRIu64, f->pos, c.version);
        hold(f, payload, len, c.version);
        fill_start(f);
    } else {
        /*
         * Not above the position: a message under way when the feed was
         * placed or a fill read past it, or Redis's sequence starting
         * over (a flush) with no earlier message on this link to compare
         * with. A check tells them apart by the epoch and the run_id.
         */
        check_start(f);
    }
done:
    msgpack_unpacked_destroy(&up);
}

/* --- filling from the change log ---------------------------------------- */

static void on_fill(void *arg, redisReply *r, int err);
static void on_retry(uv_timer_t *t);

static void fill_send(feed_t *f, uint64_t from)
{
    fill_t *a = ms_malloc(sizeof(*a));

    f->held_at_send = f->held_count;
    a->app = f->app;
    a->gen = f->gen;
    a->from = from;
    if (ms_mirror_read_log(f->app, from, f->checking ? "0" : FILL_PAGE, on_fill,
                           a) < 0) {
        free(a);
        uv_timer_start(&f->retry, on_retry, RETRY_MS, 0);
    }
}


/* Reads the log from pos + 1 now, or as soon as the links are up. */
static void fill_begin(feed_t *f, bool checking)
{
    f->filling = true;
    f->checking = checking;
    f->fill_changes = 0;
    f->fill_started = uv_now(f->app->loop);
    if (f->live)
        fill_send(f, f->pos + 1);
}


static void fill_start(feed_t *f)
{
    fill_begin(f, false);
}


/*
 * A fill that reads no changes, only the history: later channel messages
 * are held meanwhile as for a fill, and go on when it ends, the position
 * unmoved unless the history changed (then a reset). After a fill while
 * the subscriber lags, each change under way would otherwise start a
 * fill of its own, reading the log page after page instead of the
 * channel.
 */
static void check_start(feed_t *f)
{
    fill_begin(f, true);
}


static void on_retry(uv_timer_t *t)
{
    feed_t *f = t->data;

    if (f->filling && f->live)
        fill_send(f, f->pos + 1);
}


static bool fill_shape_ok(const redisReply *r)
{
    return r->type == REDIS_REPLY_ARRAY && r->elements == 6 &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           r->element[0]->len < sizeof(((feed_t *)0)->epoch) &&
           r->element[1]->type == REDIS_REPLY_INTEGER &&
           r->element[1]->integer >= 0 &&
           r->element[2]->type == REDIS_REPLY_INTEGER &&
           r->element[2]->integer >= 0 &&
           r->element[3]->type == REDIS_REPLY_ARRAY &&
           r->element[4]->type == REDIS_REPLY_STRING &&
           r->element[4]->len < sizeof(((feed_t *)0)->run_id) &&
           r->element[5]->type == REDIS_REPLY_INTEGER &&
           r->element[5]->integer >= 0;
}


/*
 * Why the history the position belongs to is gone, or NULL. Remembers
 * the epoch and Redis process for the next page.
 */
static const char *history_changed(feed_t *f, const redisReply *r, uint64_t seq)
{
    const redisReply *epoch = r->element[0], *run_id = r->element[4];
    const char *why = NULL;

    if (f->know_history && strcmp(f->epoch, epoch->str) != 0)
        why = "Redis holds another history (epoch changed)";
    else if (f->know_history && strcmp(f->run_id, run_id->str) != 0)
        why = "Redis restarted or failed over";
    else if (seq < f->pos)
        why = "Redis sequence went back";
    memcpy(f->epoch, epoch->str, epoch->len + 1);
    memcpy(f->run_id, run_id->str, run_id->len + 1);
    f->know_history = true;
    return why;
}


/*
 * A message held before the fill's last page was asked for, and above
 * the sequence that page read, cannot be one Redis published: dropped,
 * or the feed would ask for it forever. (Messages held since may well be
 * newer than that read.) Nothing leaves the held list during a fill, so
 * those are the first held_at_send.
 */
static void drop_beyond(feed_t *f, uint64_t seq)
{
    held_t *h, *next;
    size_t n = f->held_at_send;

    for (h = STAILQ_FIRST(&f->held); h != NULL && n > 0; h = next, n--) {
        next = STAILQ_NEXT(h, link);
        if (h->version <= seq)
            continue;
        ms_log_warn("change message beyond Redis's sequence dropped",
                    "version=%" PRIu64 " seq=%" PRIu64, h->version, seq);
        STAILQ_REMOVE(&f->held, h, held_s, link);
        f->held_count--;
        f->held_bytes -= h->len;
        free(h);
    }
}


static void fill_done(feed_t *f, uint64_t seq)
{
    drop_beyond(f, seq);
    if (seq > f->pos)
        f->pos = seq;
    f->filling = false;
    f->checking = false;
    ms_log(f->fill_changes > 0 ? MS_LOG_INFO : MS_LOG_DEBUG,
           "watchers caught up from the change log",
           "changes=%" PRIu64 " version=%" PRIu64 " ms=%" PRIu64,
           f->fill_changes, f->pos, uv_now(f->app->loop) - f->fill_started);
    drain(f);
}


/* Pushes one page of changes; false when nobody watches any more. */
static bool fill_push(feed_t *f, const redisReply *changes)
{
    for (size_t i = 0; i < changes->elements; i++) {
        const redisReply *c = changes->element[i];

        if (c->type != REDIS_REPLY_STRING)
            continue;
        deliver_message(f, c->str, c->len);
        f->fill_changes++;
        if (LIST_EMPTY(&f->watchers))
            return false;
    }
    return true;
}


/*
 * One page: {epoch, seq, oldest, {change, ...}, run_id, last}. Versions
 * up to seq missing from the log were never published, so a short page
 * ends the fill at seq; a log that no longer holds the first version
 * wanted means a reset.
 */
static void fill_page(feed_t *f, const redisReply *r, uint64_t from)
{
    uint64_t seq = (uint64_t)r->element[1]->integer;
    uint64_t oldest = (uint64_t)r->element[2]->integer;
    uint64_t last = (uint64_t)r->element[5]->integer;
    const redisReply *changes = r->element[3];
    const char *why = history_changed(f, r, seq);

    if (why == NULL && f->checking) {
        drop_beyond(f, seq);
        f->filling = false;
        f->checking = false;
        drain(f);
        return;
    }
    if (why == NULL && seq >= from && (oldest == 0 || oldest > from))
        why = "the change log no longer reaches back";
    if (why != NULL) {
        /* Channel versions after this belong to the history read now. */
        f->last_channel = 0;
        reset(f, seq, why);
        fill_done(f, seq);
        return;
    }
    if (!fill_push(f, changes)) {
        f->filling = false;
        return;
    }
    if (changes->elements >= FILL_PAGE_N) {
        fill_send(f, (last > f->pos ? last : f->pos) + 1);
        return;
    }
    fill_done(f, seq);
}


static void on_fill(void *arg, redisReply *r, int err)
{
    fill_t *a = arg;
    feed_t *f = a->app->watch;
    bool current = f != NULL && a->gen == f->gen && f->filling;
    uint64_t from = a->from;

    (void)err;
    free(a);
    if (!current)
        return;
    if (LIST_EMPTY(&f->watchers)) {
        f->filling = false; /* the next first watcher positions anew */
        return;
    }
    if (r == NULL || !fill_shape_ok(r)) {
        ms_log_warn("watchers cannot read the change log, retrying",
                    "reason=\"%s\" retry_ms=%d",
                    r == NULL ? "Redis connection lost" : "unexpected reply",
                    RETRY_MS);
        uv_timer_start(&f->retry, on_retry, RETRY_MS, 0);
        return;
    }
    fill_page(f, r, from);
}


void ms_watch_history_changed(ms_app_t *app)
{
    feed_t *f = app->watch;

    /* A fill under way checks the history with each page anyway. */
    if (f == NULL || LIST_EMPTY(&f->watchers) || f->filling)
        return;
    check_start(f);
}


void ms_watch_on_live(ms_app_t *app, bool live)
{
    feed_t *f = app->watch;

    if (f == NULL)
        return;
    f->live = live;
    f->last_channel = 0;
    f->gen++; /* a page under way may miss what the drop lost */
    uv_timer_stop(&f->retry);
    if (LIST_EMPTY(&f->watchers))
        return;
    if (live)
        fill_start(f);
    else
        f->filling = true;
}

/* --- the operations ------------------------------------------------------ */

/* What a watch or unwatch names, checked before anything changes. */
typedef struct wanted_s {
    const msgpack_object *ids[2]; /* by kind: the conns and rooms arrays */
    bool all;                     /* all: true */
    bool any;                     /* rooms, conns or all given */
} wanted_t;

static const char *const list_names[2] = {"conns", "rooms"};

static int read_list(const ms_app_t *app, const msgpack_object *o,
                     const char *name, ms_error_t *err)
{
    char field[32];
    int rc;

    if (o->type != MSGPACK_OBJECT_ARRAY)
        return ms_error_set(err, MS_EINVAL, "'%s' must be an array of ids",
                            name);
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        snprintf(field, sizeof(field), "%s[%" PRIu32 "]", name, i);
        rc = ms_request_check_id(app, &o->via.array.ptr[i], field, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}


static int read_wanted(const ms_app_t *app, const ms_request_t *rq,
                       wanted_t *want, ms_error_t *err)
{
    const msgpack_object *all = ms_request_field(rq, "all");
    size_t n = 0;
    int rc;

    memset(want, 0, sizeof(*want));
    for (int k = 0; k < 2; k++) {
        want->ids[k] = ms_request_field(rq, list_names[k]);
        if (want->ids[k] == NULL)
            continue;
        want->any = true;
        rc = read_list(app, want->ids[k], list_names[k], err);
        if (rc < 0)
            return rc;
        n += want->ids[k]->via.array.size;
    }
    if (n > IDS_PER_REQUEST)
        return ms_error_set(err, MS_ETOOLARGE,
                            "more than %d ids in one request", IDS_PER_REQUEST);
    if (all != NULL && all->type != MSGPACK_OBJECT_BOOLEAN)
        return ms_error_set(err, MS_EINVAL, "'all' must be a boolean");
    want->any = want->any || all != NULL;
    want->all = all != NULL && all->via.boolean;
    return 0;
}


static size_t wanted_count(const wanted_t *want)
{
    size_t n = 0;

    for (int k = 0; k < 2; k++)
        n += want->ids[k] != NULL ? want->ids[k]->via.array.size : 0;
    return n;
}


/* Adds (or removes) every id the request names. */
static void apply_ids(feed_t *f, watcher_t *w, const wanted_t *want, bool add)
{
    for (int k = 0; k < 2; k++) {
        const msgpack_object *list = want->ids[k];

        for (uint32_t i = 0; list != NULL && i < list->via.array.size; i++) {
            const msgpack_object *o = &list->via.array.ptr[i];

            if (add)
                add_id(f, w, (ms_kind_t)k, o->via.str.ptr, o->via.str.size);
            else
                remove_id(f, w, (ms_kind_t)k, o->via.str.ptr, o->via.str.size);
        }
    }
}


static void reply_version(ms_session_t *s, const ms_request_t *rq,
                          uint64_t version)
{
    msgpack_packer *pk = ms_reply_ok(s, rq, 1);

    ms_pack_str(pk, "version");
    msgpack_pack_uint64(pk, version);
    ms_session_reply_end(s);
}


/* The version a reply names: changes after it are (or would be) pushed. */
static uint64_t reply_pos(const feed_t *f)
{
    return LIST_EMPTY(&f->watchers) ? current_version(f->app) : f->pos;
}


static void op_watch(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    feed_t *f = app->watch;
    wanted_t want;
    ms_error_t err;
    watcher_t *w;

    if (f == NULL) {
        ms_reply_error(s, rq, MS_EINTERNAL, "the daemon is shutting down");
        return;
    }
    if (read_wanted(app, rq, &want, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    w = watcher_of(f, s, false);
    if ((w != NULL ? w->count : 0) + wanted_count(&want) > IDS_PER_SESSION) {
        ms_error_set(&err, MS_ETOOLARGE, "a session may watch at most %d ids",
                     IDS_PER_SESSION);
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }

    /* Nothing to add: the reply only tells where the feed stands. */
    if (w == NULL && !want.all && wanted_count(&want) == 0) {
        reply_version(s, rq, reply_pos(f));
        return;
    }
    w = watcher_of(f, s, true);
    apply_ids(f, w, &want, true);
    if (want.all)
        set_all(f, w, true);
    reply_version(s, rq, f->pos);
    ms_log_debug("watch", "ids=%zu all=%s watching=%zu version=%" PRIu64,
                 wanted_count(&want), w->all ? "true" : "false", w->count,
                 f->pos);
}


static void op_unwatch(ms_app_t *app, ms_session_t *s, const ms_request_t *rq)
{
    feed_t *f = app->watch;
    wanted_t want;
    ms_error_t err;
    uint64_t version;
    watcher_t *w;

    if (f == NULL) {
        ms_reply_error(s, rq, MS_EINTERNAL, "the daemon is shutting down");
        return;
    }
    if (read_wanted(app, rq, &want, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }

    /* Taken first: the feed's position, even if this was its last watcher. */
    version = reply_pos(f);
    w = watcher_of(f, s, false);
    if (w != NULL && !want.any) {
        watcher_drop(f, w);
    } else if (w != NULL) {
        apply_ids(f, w, &want, false);
        if (want.all)
            set_all(f, w, false);
        watcher_settle(f, w);
    }
    reply_version(s, rq, version);
    ms_log_debug("unwatch", "ids=%zu everything=%s", wanted_count(&want),
                 want.any ? "false" : "true");
}


const ms_op_t ms_watch_ops[] = {
    {"watch", op_watch},
    {"unwatch", op_unwatch},
    {NULL, NULL},
};


void ms_watch_session_closed(ms_app_t *app, ms_session_t *s)
{
    watcher_t *w;

    if (app->watch == NULL)
        return;
    w = watcher_of(app->watch, s, false);
    if (w != NULL)
        watcher_drop(app->watch, w);
}

/* --- life cycle ---------------------------------------------------------- */

void ms_watch_init(ms_app_t *app)
{
    feed_t *f = ms_calloc(1, sizeof(*f));

    f->app = app;
    LIST_INIT(&f->watchers);
    LIST_INIT(&f->all);
    LIST_INIT(&f->cutting);
    STAILQ_INIT(&f->held);
    uv_timer_init(app->loop, &f->retry);
    f->retry.data = f;
    app->watch = f;
}


static void on_retry_closed(uv_handle_t *h)
{
    free(h->data);
}


void ms_watch_close(ms_app_t *app)
{
    feed_t *f = app->watch;

    if (f == NULL)
        return;
    while (!LIST_EMPTY(&f->watchers))
        watcher_drop(f, LIST_FIRST(&f->watchers));
    drop_held(f);

    /* Late page replies find no feed and stop there. */
    app->watch = NULL;
    uv_close((uv_handle_t *)&f->retry, on_retry_closed);
}
