/*
 * waits.c - parked minVersion reads (see waits.h). Each waiting read has
 * a timer and sits in two lists: its entry's, found through a tsearch()
 * tree so that a change looks only at the reads for that entry, and the
 * list of all reads, for sessions that close and for shutdown.
 */
#include "waits.h"

#include <inttypes.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "alloc.h"
#include "direct.h"
#include "handlers.h"

typedef struct waiter_s waiter_t;

/* The reads waiting on one entry. */
typedef struct entry_waits_s {
    ms_kind_t kind;
    char *id;
    size_t len;
    LIST_HEAD(, waiter_s) waiters;
} entry_waits_t;

struct waiter_s {
    LIST_ENTRY(waiter_s) all;      /* all reads */
    LIST_ENTRY(waiter_s) of_entry; /* this entry's reads */
    entry_waits_t *entry;
    ms_app_t *app;
    ms_session_t *session;
    uint64_t req_id;
    uint64_t min_version;
    size_t reply_bytes; /* held against the session's output limit */
    uv_timer_t timer;
};

struct ms_waits_s {
    void *entries; /* tsearch root of entry_waits_t */
    LIST_HEAD(, waiter_s) all;
};

static int compare_entries(const void *a, const void *b)
{
    const entry_waits_t *x = a, *y = b;

    return ms_entry_compare(x->kind, x->id, x->len, y->kind, y->id, y->len);
}


static ms_waits_t *waits_of(ms_app_t *app)
{
    if (app->waits == NULL)
        app->waits = ms_calloc(1, sizeof(*app->waits));
    return app->waits;
}


static entry_waits_t *entry_find(ms_waits_t *ws, ms_kind_t kind, const char *id,
                                 size_t len)
{
    entry_waits_t key = {.kind = kind, .id = (char *)id, .len = len};
    entry_waits_t **found = tfind(&key, &ws->entries, compare_entries);

    return found != NULL ? *found : NULL;
}


static entry_waits_t *entry_find_or_add(ms_waits_t *ws, ms_kind_t kind,
                                        const char *id, size_t len)
{
    entry_waits_t *e = entry_find(ws, kind, id, len);

    if (e != NULL)
        return e;
    e = ms_calloc(1, sizeof(*e));
    e->kind = kind;
    e->id = ms_strndup(id, len);
    e->len = len;
    if (tsearch(e, &ws->entries, compare_entries) == NULL)
        ms_oom();
    return e;
}


static void on_waiter_closed(uv_handle_t *h)
{
    waiter_t *w = h->data;

    ms_session_release(w->session, w->reply_bytes);
    free(w);
}


/* Takes w out of both lists and closes its timer. */
static void waiter_end(waiter_t *w)
{
    ms_waits_t *ws = w->app->waits;
    entry_waits_t *e = w->entry;

    LIST_REMOVE(w, all);
    LIST_REMOVE(w, of_entry);
    if (LIST_EMPTY(&e->waiters)) {
        tdelete(e, &ws->entries, compare_entries);
        free(e->id);
        free(e);
    }

    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, on_waiter_closed);
}


/* The cache did not get there in time: Redis may have it already. */
static void on_timeout(uv_timer_t *t)
{
    waiter_t *w = t->data;
    entry_waits_t *e = w->entry;

    if (!ms_session_closed(w->session))
        ms_direct_read(w->app, w->session, w->req_id, e->kind, e->id, e->len,
                       w->min_version, MS_ETIMEOUT, w->reply_bytes);
    waiter_end(w);
}


void ms_waits_add(ms_app_t *app, ms_session_t *s, uint64_t req_id,
                  ms_kind_t kind, const char *id, size_t len,
                  uint64_t min_version, uint64_t timeout_ms, size_t reply_bytes)
{
    ms_waits_t *ws = waits_of(app);
    waiter_t *w = ms_calloc(1, sizeof(*w));
    entry_waits_t *e = entry_find_or_add(ws, kind, id, len);

    w->app = app;
    w->session = s;
    w->req_id = req_id;
    w->min_version = min_version;
    w->reply_bytes = reply_bytes;
    w->entry = e;
    ms_session_hold(s, reply_bytes);
    uv_timer_init(app->loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_timeout, timeout_ms, 0);

    LIST_INSERT_HEAD(&ws->all, w, all);
    LIST_INSERT_HEAD(&e->waiters, w, of_entry);
}


void ms_waits_entry_changed(ms_app_t *app, ms_kind_t kind, const char *id,
                            size_t len, uint64_t version)
{
    entry_waits_t *e;
    waiter_t *w, *next;

    if (app->waits == NULL || LIST_EMPTY(&app->waits->all))
        return;
    e = entry_find(app->waits, kind, id, len);

    /* Ending the last waiter frees e: read the next one first. */
    for (w = e != NULL ? LIST_FIRST(&e->waiters) : NULL; w != NULL; w = next) {
        next = LIST_NEXT(w, of_entry);
        if (version < w->min_version)
            continue;
        if (!ms_session_closed(w->session))
            ms_handlers_answer_get(app, w->session, w->req_id, kind, id, len);
        waiter_end(w);
    }
}


void ms_waits_recheck(ms_app_t *app)
{
    waiter_t *w, *next;
    ms_cache_entry_t e;

    if (app->waits == NULL)
        return;
    for (w = LIST_FIRST(&app->waits->all); w != NULL; w = next) {
        entry_waits_t *en = w->entry;

        next = LIST_NEXT(w, all);
        if (ms_cache_get(app->cache, en->kind, en->id, en->len, &e) < 0 ||
            e.version < w->min_version)
            continue;
        if (!ms_session_closed(w->session))
            ms_handlers_answer_get(app, w->session, w->req_id, en->kind, en->id,
                                   en->len);
        waiter_end(w);
    }
}


void ms_waits_session_closed(ms_app_t *app, ms_session_t *s)
{
    waiter_t *w, *next;

    if (app->waits == NULL)
        return;
    for (w = LIST_FIRST(&app->waits->all); w != NULL; w = next) {
        next = LIST_NEXT(w, all);
        if (w->session == s)
            waiter_end(w);
    }
}


void ms_waits_close(ms_app_t *app)
{
    if (app->waits == NULL)
        return;
    while (!LIST_EMPTY(&app->waits->all)) {
        waiter_t *w = LIST_FIRST(&app->waits->all);

        if (!ms_session_closed(w->session))
            ms_handlers_answer_error(w->session, w->req_id, MS_EUNAVAIL,
                                     "the daemon is shutting down");
        waiter_end(w);
    }
    free(app->waits);
    app->waits = NULL;
}
