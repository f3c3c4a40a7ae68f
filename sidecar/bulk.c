/*
 * bulk.c - bulk reads from the cache (see bulk.h): conn.list and
 * room.list page through the live entries of a kind in id byte order;
 * room.members pages through a room's members with their metadata;
 * conn.mget and room.mget read many entries in one request. All answer
 * at once from the cache, never from Redis.
 *
 * A list page is packed row by row as the cache's statement hands the
 * rows over, into a buffer of its own that holds about PAGE_BYTES at
 * most (its item count must precede the items), then copied into the
 * reply. An mget is packed the same way, so that a reply growing past
 * MGET_REPLY_MAX, or a cache read failing half-way, becomes an error
 * rather than half a reply.
 *
 * Entry point: the ms_bulk_ops table. Loop thread only.
 */
#include "bulk.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "mirror.h"

#define LIST_LIMIT_DEFAULT 1000
#define LIST_LIMIT_MAX     10000

/*
 * A page ends before an entry that would take it past this (it holds one
 * entry at least), so that a reply stays far below the client's 8 MiB
 * output limit (server.h) and the client's frame limit.
 */
#define PAGE_BYTES (1u << 20)

#define MGET_IDS_MAX 1000

/* An mget reply larger than this would fill the output limit alone. */
#define MGET_REPLY_MAX (8u << 20)

/* An item's bytes besides its id and value: array, string header, version. */
#define ITEM_OVERHEAD 15

/* A reply's bytes besides its items or values: the keys, stale, behind. */
#define REPLY_OVERHEAD 96

/* The page being packed by a list. */
typedef struct page_s {
    msgpack_sbuffer buf; /* the items, packed */
    msgpack_packer pk;
    size_t limit;
    size_t count;
    size_t last_id; /* where the last item's id starts in buf */
    size_t last_id_len;
    bool more; /* an entry follows the page */
} page_t;

/* The daemon aborts when memory runs out (alloc.h); so does packing. */
static void packed(int rc)
{
    if (rc != 0)
        ms_oom();
}


/* {..., stale, behind?}: as a get's reply says how fresh the cache is. */
static void pack_stale(const ms_app_t *app, msgpack_packer *pk, bool stale)
{
    uint64_t behind;

    ms_pack_str(pk, "stale");
    if (!stale) {
        msgpack_pack_false(pk);
        return;
    }
    msgpack_pack_true(pk);
    ms_pack_str(pk, "behind");
    if (ms_mirror_behind(app, &behind))
        msgpack_pack_uint64(pk, behind);
    else
        msgpack_pack_nil(pk);
}


/* A msgpack value as stored, or nil for none (a value is never empty). */
static void pack_value(msgpack_packer *pk, const char *mp, size_t len)
{
    if (mp == NULL || len == 0)
        packed(msgpack_pack_nil(pk));
    else
        packed(pk->callback(pk->data, mp, len));
}


/* --- list ------------------------------------------------------------- */

/* after (absent, nil or "": from the first) and limit, checked. */
static int read_list_args(const ms_request_t *rq, const char **after,
                          size_t *after_len, size_t *limit, ms_error_t *err)
{
    const msgpack_object *a = ms_request_field(rq, "after");
    const msgpack_object *l = ms_request_field(rq, "limit");

    /*
     * after is a cursor, the next of an earlier page: any id the cache
     * holds, also one that get would refuse (Redis may hold ids longer
     * than --max-id-bytes), so only its type is checked.
     */
    *after = NULL;
    *after_len = 0;
    if (a != NULL && a->type == MSGPACK_OBJECT_STR && a->via.str.size > 0) {
        *after = a->via.str.ptr;
        *after_len = a->via.str.size;
    } else if (a != NULL && a->type != MSGPACK_OBJECT_STR &&
               a->type != MSGPACK_OBJECT_NIL) {
        return ms_error_set(err, MS_EINVAL, "'after' must be an id (a string)");
    }

    *limit = LIST_LIMIT_DEFAULT;
    if (l == NULL)
        return 0;
    if (l->type != MSGPACK_OBJECT_POSITIVE_INTEGER || l->via.u64 == 0 ||
        l->via.u64 > LIST_LIMIT_MAX)
        return ms_error_set(err, MS_EINVAL,
                            "'limit' must be an integer from 1 to %d",
                            LIST_LIMIT_MAX);
    *limit = (size_t)l->via.u64;
    return 0;
}


/* Packs one entry as [id, value, version], or ends a full page. */
static int page_add_cb(void *arg, const char *id, size_t id_len,
                       const ms_cache_entry_t *e)
{
    page_t *p = arg;
    size_t item = ITEM_OVERHEAD + id_len + e->mp_len;

    /* The entry after a full page is not packed: it says there is more. */
    if (p->count == p->limit ||
        (p->count > 0 && p->buf.size + item > PAGE_BYTES)) {
        p->more = true;
        return 1;
    }
    packed(msgpack_pack_array(&p->pk, 3));
    packed(msgpack_pack_str(&p->pk, id_len));
    p->last_id = p->buf.size;
    p->last_id_len = id_len;
    packed(msgpack_pack_str_body(&p->pk, id, id_len));
    pack_value(&p->pk, e->mp, e->mp_len);
    packed(msgpack_pack_uint64(&p->pk, e->version));
    p->count++;
    return 0;
}


/* {items, next, stale, behind?}; next is nil once the page is the last. */
static void reply_page(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                       const page_t *p)
{
    bool stale = ms_mirror_stale(app);
    msgpack_packer *pk = ms_reply_ok(s, rq, stale ? 4 : 3);

    ms_pack_str(pk, "items");
    msgpack_pack_array(pk, (uint32_t)p->count);
    if (p->buf.size > 0)
        pk->callback(pk->data, p->buf.data, p->buf.size);
    ms_pack_str(pk, "next");
    if (p->more) {
        msgpack_pack_str(pk, p->last_id_len);
        msgpack_pack_str_body(pk, p->buf.data + p->last_id, p->last_id_len);
    } else {
        msgpack_pack_nil(pk);
    }
    pack_stale(app, pk, stale);
    ms_session_reply_end(s);
}


static void op_list(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                    ms_kind_t kind)
{
    page_t page = {0};
    ms_error_t err;
    const char *after;
    size_t after_len;
    int rc;

    if (read_list_args(rq, &after, &after_len, &page.limit, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    msgpack_sbuffer_init(&page.buf);
    msgpack_packer_init(&page.pk, &page.buf, msgpack_sbuffer_write);

    rc = ms_cache_list(app->cache, kind, after, after_len, page_add_cb, &page);
    if (rc < 0)
        ms_reply_error(s, rq, MS_EINTERNAL, "cache read failed");
    else
        reply_page(app, s, rq, &page);
    msgpack_sbuffer_destroy(&page.buf);
}


/*
 * room.members {room, after?, limit?}: a page of the connections in a
 * room (Mesh's <p>:room:<room> set, as mirrored), each with its metadata
 * (nil when it has none), in the same shape as a list's.
 */
static void op_room_members(ms_app_t *app, ms_session_t *s,
                            const ms_request_t *rq)
{
    page_t page = {0};
    ms_error_t err;
    const char *room, *after;
    size_t room_len, after_len;
    int rc;

    if (ms_request_target(app, s, rq, MS_KIND_ROOM, &room, &room_len, &err) <
            0 ||
        read_list_args(rq, &after, &after_len, &page.limit, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    msgpack_sbuffer_init(&page.buf);
    msgpack_packer_init(&page.pk, &page.buf, msgpack_sbuffer_write);

    rc = ms_cache_members(app->cache, room, room_len, after, after_len,
                          page_add_cb, &page);
    if (rc < 0)
        ms_reply_error(s, rq, MS_EINTERNAL, "cache read failed");
    else
        reply_page(app, s, rq, &page);
    msgpack_sbuffer_destroy(&page.buf);
}


/* --- mget ------------------------------------------------------------- */

/* The ids under name: an array of at most MGET_IDS_MAX valid ids. */
static int check_ids(const ms_app_t *app, const msgpack_object *ids,
                     const char *name, ms_error_t *err)
{
    char field[32];
    int rc;

    if (ids == NULL)
        return ms_error_set(err, MS_EINVAL, "request has no '%s'", name);
    if (ids->type != MSGPACK_OBJECT_ARRAY)
        return ms_error_set(err, MS_EINVAL, "'%s' must be an array of ids",
                            name);
    if (ids->via.array.size > MGET_IDS_MAX)
        return ms_error_set(err, MS_EINVAL,
                            "'%s' holds %u ids, more than %d in one request",
                            name, ids->via.array.size, MGET_IDS_MAX);
    for (uint32_t i = 0; i < ids->via.array.size; i++) {
        snprintf(field, sizeof(field), "%s[%u]", name, i);
        rc = ms_request_check_id(app, &ids->via.array.ptr[i], field, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}


/*
 * Packs every id's value (nil when absent) into values and its version
 * into versions, giving up once they would make a reply larger than
 * MGET_REPLY_MAX.
 */
static int mget_read(ms_app_t *app, ms_kind_t kind, const msgpack_object *ids,
                     msgpack_sbuffer *values, msgpack_sbuffer *versions,
                     ms_error_t *err)
{
    msgpack_packer vpk;
    msgpack_packer npk;
    ms_cache_entry_t e;

    msgpack_packer_init(&vpk, values, msgpack_sbuffer_write);
    msgpack_packer_init(&npk, versions, msgpack_sbuffer_write);
    for (uint32_t i = 0; i < ids->via.array.size; i++) {
        const msgpack_object *id = &ids->via.array.ptr[i];

        if (ms_cache_get(app->cache, kind, id->via.str.ptr, id->via.str.size,
                         &e) < 0)
            return ms_error_set(err, MS_EINTERNAL, "cache read failed");
        pack_value(&vpk, e.present ? e.mp : NULL, e.mp_len);
        packed(msgpack_pack_uint64(&npk, e.version));
        if (values->size + versions->size + REPLY_OVERHEAD > MGET_REPLY_MAX)
            return ms_error_set(err, MS_ETOOLARGE,
                                "the values of these %u ids pass the "
                                "%u-byte reply limit: ask for fewer",
                                ids->via.array.size, MGET_REPLY_MAX);
    }
    return 0;
}


/* {values, versions, stale, behind?} */
static void reply_mget(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                       uint32_t n, const msgpack_sbuffer *values,
                       const msgpack_sbuffer *versions)
{
    bool stale = ms_mirror_stale(app);
    msgpack_packer *pk = ms_reply_ok(s, rq, stale ? 4 : 3);

    ms_pack_str(pk, "values");
    msgpack_pack_array(pk, n);
    if (values->size > 0)
        pk->callback(pk->data, values->data, values->size);
    ms_pack_str(pk, "versions");
    msgpack_pack_array(pk, n);
    if (versions->size > 0)
        pk->callback(pk->data, versions->data, versions->size);
    pack_stale(app, pk, stale);
    ms_session_reply_end(s);
}


static void op_mget(ms_app_t *app, ms_session_t *s, const ms_request_t *rq,
                    ms_kind_t kind)
{
    const char *name = kind == MS_KIND_ROOM ? "rooms" : "conns";
    const msgpack_object *ids = ms_request_field(rq, name);
    msgpack_sbuffer values;
    msgpack_sbuffer versions;
    ms_error_t err;

    if (check_ids(app, ids, name, &err) < 0) {
        ms_reply_error(s, rq, err.code, err.msg);
        return;
    }
    msgpack_sbuffer_init(&values);
    msgpack_sbuffer_init(&versions);
    if (mget_read(app, kind, ids, &values, &versions, &err) < 0)
        ms_reply_error(s, rq, err.code, err.msg);
    else
        reply_mget(app, s, rq, ids->via.array.size, &values, &versions);
    msgpack_sbuffer_destroy(&versions);
    msgpack_sbuffer_destroy(&values);
}


static void op_conn_list(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_list(a, s, r, MS_KIND_CONN);
}
static void op_room_list(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_list(a, s, r, MS_KIND_ROOM);
}
static void op_conn_mget(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_mget(a, s, r, MS_KIND_CONN);
}
static void op_room_mget(ms_app_t *a, ms_session_t *s, const ms_request_t *r)
{
    op_mget(a, s, r, MS_KIND_ROOM);
}

const ms_op_t ms_bulk_ops[] = {
    {"room.members", op_room_members}, {"conn.list", op_conn_list},
    {"room.list", op_room_list},       {"conn.mget", op_conn_mget},
    {"room.mget", op_room_mget},       {NULL, NULL},
};
