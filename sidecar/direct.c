/*
 * direct.c - reads from Redis (see direct.h).
 */
#include "direct.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "handlers.h"
#include "layout.h"

/* What a read carries to Redis's reply. */
typedef struct direct_s {
    ms_app_t *app;
    ms_session_t *session;
    uint64_t req_id;
    uint64_t min_version;
    int fail_code;
    size_t reply_bytes; /* held against the session's output limit */
} direct_t;

static void direct_fail(direct_t *d, const char *msg)
{
    if (!ms_session_closed(d->session))
        ms_handlers_answer_error(d->session, d->req_id, d->fail_code, msg);
}


/* {JSON text or nil, version}: answers with it, or says why not. */
static void answer(direct_t *d, const redisReply *r)
{
    const redisReply *json = r->element[0];
    uint64_t version = (uint64_t)r->element[1]->integer;
    char *mp = NULL, msg[120];
    size_t mp_len = 0;
    ms_error_t err;

    if (version < d->min_version) {
        snprintf(msg, sizeof(msg),
                 "neither the cache nor Redis holds version %" PRIu64
                 " yet (Redis has %" PRIu64 ")",
                 d->min_version, version);
        /* Redis answered: what is missing is the version, not Redis. */
        if (!ms_session_closed(d->session))
            ms_handlers_answer_error(d->session, d->req_id, MS_ETIMEOUT, msg);
        return;
    }

    /* Unreadable JSON reads as absent, as it does from the cache. */
    if (json->type == REDIS_REPLY_STRING &&
        ms_value_json_to_msgpack(json->str, json->len, &d->app->limits, &mp,
                                 &mp_len, &err) < 0)
        mp = NULL;
    if (!ms_session_closed(d->session))
        ms_handlers_answer_value(d->session, d->req_id, mp, mp_len, version);
    free(mp);
}


static void on_read(void *arg, redisReply *r, int status)
{
    direct_t *d = arg;

    (void)status;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        (r->element[0]->type == REDIS_REPLY_STRING ||
         r->element[0]->type == REDIS_REPLY_NIL) &&
        r->element[1]->type == REDIS_REPLY_INTEGER &&
        r->element[1]->integer >= 0)
        answer(d, r);
    else
        direct_fail(d, r == NULL ? "Redis cannot be reached"
                                 : "unexpected reply from Redis");
    ms_session_release(d->session, d->reply_bytes);
    free(d);
}


void ms_direct_read(ms_app_t *app, ms_session_t *s, uint64_t req_id,
                    ms_kind_t kind, const char *id, size_t len,
                    uint64_t min_version, int fail_code, size_t reply_bytes)
{
    const ms_layout_t *l = &app->layout;
    direct_t *d = ms_malloc(sizeof(*d));
    const char *argv[5];
    size_t argvlen[5];
    char *key;

    d->app = app;
    d->session = s;
    d->req_id = req_id;
    d->min_version = min_version;
    d->fail_code = fail_code;
    d->reply_bytes = reply_bytes;
    ms_session_hold(s, reply_bytes);

    key = kind == MS_KIND_ROOM
              ? ms_layout_key(l->room_prefix, NULL, id, len, &argvlen[0])
              : ms_layout_key(l->conn_meta, NULL, "", 0, &argvlen[0]);
    argv[0] = key;
    argv[1] = ms_layout_versions(l, kind);
    argvlen[1] = strlen(argv[1]);
    argv[2] = l->seq;
    argvlen[2] = strlen(l->seq);
    argv[3] = kind == MS_KIND_ROOM ? "data" : id;
    argvlen[3] = kind == MS_KIND_ROOM ? 4 : len;
    argv[4] = id;
    argvlen[4] = len;
    if (app->redis == NULL || ms_redis_script(app->redis, MS_SCRIPT_READ, 3, 5,
                                              argv, argvlen, on_read, d) < 0)
        on_read(d, NULL, MS_EUNAVAIL);
    free(key);
}
