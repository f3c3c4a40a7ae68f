/*
 * meshsync.h - libmeshsync, the C client of the meshsync sidecar.
 *
 * A meshsync_t is one blocking connection to a meshsyncd Unix socket.
 * Every call sends one request and waits for its reply. A call returns 0
 * on success, or -1 with the error kept on the handle: meshsync_errcode()
 * gives the protocol's code ("invalid_request", "too_large",
 * "unavailable", ... or "io" and "protocol" for local failures) and
 * meshsync_errmsg() a one-line message. A code the daemon sends that this
 * library does not know is passed on as it is.
 *
 * After an "io" or "protocol" error the connection is unusable: it is
 * closed and every later call fails at once with the same error (so does
 * running out of memory while a reply is arriving). Other errors
 * leave it usable. Some errors are found locally, before anything is sent:
 * bad arguments and values that are not valid JSON or msgpack give
 * "invalid_request"; a value nesting deeper than 31 levels or a request
 * frame over 1 MiB gives "too_large". Every other limit is the daemon's.
 *
 * Values go in and come out as JSON text (MESHSYNC_JSON) or as a msgpack
 * buffer (MESHSYNC_MSGPACK). The library never logs, never exits, never
 * aborts and never raises SIGPIPE; a handle must not be used by two
 * threads at once.
 */
#ifndef MESHSYNC_H
#define MESHSYNC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MESHSYNC_API __attribute__((visibility("default")))
#else
#define MESHSYNC_API
#endif

/* The daemon's default socket path, also used by meshsync_connect(NULL). */
#define MESHSYNC_DEFAULT_SOCKET "/run/meshsync/meshsync.sock"

typedef struct meshsync meshsync_t;

typedef enum { MESHSYNC_JSON = 0, MESHSYNC_MSGPACK = 1 } meshsync_format_t;

typedef enum {
    MESHSYNC_REPLACE = 0,
    MESHSYNC_MERGE = 1,
    MESHSYNC_DEEP_MERGE = 2
} meshsync_strategy_t;

/*
 * A value read from the sidecar. For MESHSYNC_JSON, data is compact,
 * NUL-terminated JSON text on one line ("null" for a missing entry); for
 * MESHSYNC_MSGPACK it is one msgpack object of len bytes, not
 * NUL-terminated (0xc0, nil, when missing).
 * version is the entry's version (0 if never written); stale is 1 when
 * the sidecar was not caught up with Redis when it answered, and then
 * behind says by how many versions (writes anywhere) its cache trailed
 * Redis, as far as it knew, or is -1 when it could not know (Redis
 * unreachable); 0 when not stale. Release data with meshsync_value_free().
 */
typedef struct meshsync_value {
    char *data;
    size_t len;
    uint64_t version;
    int stale;
    int64_t behind;
} meshsync_value_t;

/*
 * Connects to the socket at path (NULL or "": $MESHSYNC_SOCKET if set and
 * not empty, else the default). Always returns a handle unless memory runs
 * out (NULL); a connect failure, a path too long for a Unix socket
 * included, leaves an "io" error on it, so check meshsync_errcode(). Free
 * with meshsync_free() (NULL is accepted).
 */
MESHSYNC_API meshsync_t *meshsync_connect(const char *path);
MESHSYNC_API void meshsync_free(meshsync_t *ms);

/*
 * The last call's error code and message: a NULL code and "" when it
 * succeeded. The strings belong to the handle and stay valid until its
 * next call. For a NULL handle (meshsync_connect() out of memory) they are
 * "internal" and "out of memory".
 */
MESHSYNC_API const char *meshsync_errcode(const meshsync_t *ms);
MESHSYNC_API const char *meshsync_errmsg(const meshsync_t *ms);

/*
 * Time allowed for each call, sending the request and waiting for the
 * reply, in milliseconds (default 5000; 0 or less waits forever). Running
 * out is an "io" error that closes the connection, since the late reply
 * would otherwise answer the next call.
 */
MESHSYNC_API void meshsync_set_timeout(meshsync_t *ms, int timeout_ms);

/* Checks that the sidecar answers. */
/*
 * With strong set, every get on this handle reads from Redis instead of
 * the sidecar's cache (consistency "strong"): slower, never stale, and it
 * fails with "unavailable" when the sidecar cannot reach Redis.
 */
MESHSYNC_API void meshsync_set_strong(meshsync_t *ms, int strong);

MESHSYNC_API int meshsync_ping(meshsync_t *ms);

/*
 * Asks the sidecar how it is doing. On success out->data holds a JSON
 * object: {"state": "live" | "catching_up" | "down", "ready": true only
 * when live, "seq": the highest version the sidecar knows, "redisSeq":
 * Redis's sequence or null when unreachable, "lag": their difference or
 * null, "conns": N, "rooms": N, "scrubber": whether it runs the scrub,
 * "keyspaceEvents": true, false or null, "adopted": N outside writes it
 * versioned, "cacheFailing": whether its cache file cannot be written}.
 * Release with meshsync_value_free().
 */
MESHSYNC_API int meshsync_health(meshsync_t *ms, meshsync_value_t *out);

/* Binds this session to a connection id: conn calls may then pass NULL. */
MESHSYNC_API int meshsync_hello(meshsync_t *ms, const char *conn);

/*
 * Reads a connection's metadata from the sidecar's cache into *out, which
 * is zeroed first and filled only on success. conn NULL means the
 * connection bound by meshsync_hello().
 */
MESHSYNC_API int meshsync_conn_get(meshsync_t *ms, const char *conn,
                                   meshsync_format_t format,
                                   meshsync_value_t *out);

/*
 * As meshsync_conn_get(), but first waits until the sidecar's cache holds
 * at least min_version of the entry, at most timeout_ms milliseconds (0
 * to 60000; less than 0 means the daemon's default, 1000). Pass the
 * version a set returned, possibly through another sidecar, to read that
 * write or a later one. Past the wait the call fails with "timeout" and
 * the handle stays usable. The wait is added to the handle's timeout
 * (meshsync_set_timeout()) for this call; timeout_ms above 60000 gives
 * "invalid_request".
 */
MESHSYNC_API int meshsync_conn_get_min(meshsync_t *ms, const char *conn,
                                       uint64_t min_version, int timeout_ms,
                                       meshsync_format_t format,
                                       meshsync_value_t *out);

/*
 * Sets a connection's metadata with a strategy; data holds len bytes of
 * one value in the given format (JSON null or msgpack nil clears it).
 * JSON is parsed and converted here; msgpack is checked to be one
 * well-formed object and sent as it is, the daemon judging its types.
 * version (optional) receives the entry's new version. conn NULL means
 * the connection bound by meshsync_hello().
 */
MESHSYNC_API int meshsync_conn_set(meshsync_t *ms, const char *conn,
                                   meshsync_format_t format, const char *data,
                                   size_t len, meshsync_strategy_t strategy,
                                   uint64_t *version);

/*
 * Registers a connection as owned by the sidecar's instance, in Mesh's
 * registry (conn NULL: the bound connection). bind 1 ties it to this
 * session: it is closed when the session ends; 0 does not; -1 takes the
 * sidecar's default (bound when the session said hello).
 */
MESHSYNC_API int meshsync_conn_open(meshsync_t *ms, const char *conn, int bind);

/*
 * Closes a connection (conn NULL: the bound connection): its metadata,
 * its place in Mesh's registry and its room memberships go together.
 */
MESHSYNC_API int meshsync_conn_close(meshsync_t *ms, const char *conn,
                                     uint64_t *version);

/* As the conn functions above, for a room; room must not be NULL. */
MESHSYNC_API int meshsync_room_get(meshsync_t *ms, const char *room,
                                   meshsync_format_t format,
                                   meshsync_value_t *out);
MESHSYNC_API int meshsync_room_get_min(meshsync_t *ms, const char *room,
                                       uint64_t min_version, int timeout_ms,
                                       meshsync_format_t format,
                                       meshsync_value_t *out);
MESHSYNC_API int meshsync_room_set(meshsync_t *ms, const char *room,
                                   meshsync_format_t format, const char *data,
                                   size_t len, meshsync_strategy_t strategy,
                                   uint64_t *version);
/* Removes a room's metadata. */
MESHSYNC_API int meshsync_room_delete(meshsync_t *ms, const char *room,
                                      uint64_t *version);

/*
 * One entry of a list page: its id (NUL-terminated, id_len bytes), its
 * value in the format asked for (data and len as in meshsync_value_t;
 * never a missing entry) and its version.
 */
typedef struct meshsync_item {
    char *id;
    size_t id_len;
    char *data;
    size_t len;
    uint64_t version;
} meshsync_item_t;

/*
 * A page of a list: count entries in id byte order; next is the id to
 * pass as the after of the following page, or NULL when this page is the
 * last; stale and behind as in meshsync_value_t. Release with
 * meshsync_page_free().
 */
typedef struct meshsync_page {
    meshsync_item_t *items;
    size_t count;
    char *next;
    int stale;
    int64_t behind;
} meshsync_page_t;

/*
 * Reads one page of every connection's metadata from the sidecar's cache
 * into *out, which is zeroed first and filled only on success: the
 * entries (deleted ones left out) whose ids follow after in byte order
 * (after NULL or "": from the first), at most limit of them (1 to 10000;
 * 0: the sidecar's default, 1000). A page may hold fewer than limit and
 * still not be the last: it also ends at about 1 MiB. To read everything,
 * call again with after = out->next until next is NULL.
 */
MESHSYNC_API int meshsync_conn_list(meshsync_t *ms, const char *after,
                                    size_t limit, meshsync_format_t format,
                                    meshsync_page_t *out);
MESHSYNC_API int meshsync_room_list(meshsync_t *ms, const char *after,
                                    size_t limit, meshsync_format_t format,
                                    meshsync_page_t *out);

/*
 * Reads one page of the connections in a room (from the sidecar's cache
 * of Mesh's membership sets), each with its metadata (data "null" when it
 * has none), as meshsync_conn_list() pages.
 */
MESHSYNC_API int meshsync_room_members(meshsync_t *ms, const char *room,
                                       const char *after, size_t limit,
                                       meshsync_format_t format,
                                       meshsync_page_t *out);

/*
 * Puts a connection in a room, or takes it out, in Mesh's membership sets
 * (conn NULL: the bound connection). version (optional) receives the
 * change's version, or 0 when nothing changed (already in, or not in).
 */
MESHSYNC_API int meshsync_room_join(meshsync_t *ms, const char *room,
                                    const char *conn, uint64_t *version);
MESHSYNC_API int meshsync_room_leave(meshsync_t *ms, const char *room,
                                     const char *conn, uint64_t *version);

/* Frees a page's items and next and zeroes it; safe on a zeroed page. */
MESHSYNC_API void meshsync_page_free(meshsync_page_t *page);

/*
 * Reads n connections' metadata from the sidecar's cache in one request
 * (at most 1000 ids): out, an array of n values the caller provides, is
 * zeroed first and filled only on success, out[i] answering conns[i] as
 * meshsync_conn_get() would (a missing entry is "null" or nil). A reply
 * that would pass about 8 MiB is refused with "too_large": ask for fewer.
 * Release the values with meshsync_values_free().
 */
MESHSYNC_API int meshsync_conn_mget(meshsync_t *ms, const char *const *conns,
                                    size_t n, meshsync_format_t format,
                                    meshsync_value_t *out);
MESHSYNC_API int meshsync_room_mget(meshsync_t *ms, const char *const *rooms,
                                    size_t n, meshsync_format_t format,
                                    meshsync_value_t *out);

/* meshsync_value_free() on each of n values (not the array itself). */
MESHSYNC_API void meshsync_values_free(meshsync_value_t *values, size_t n);

/* Frees a value's data and zeroes it; safe on a zeroed value. */
MESHSYNC_API void meshsync_value_free(meshsync_value_t *v);

/* Parses "replace", "merge", "deepMerge": 0, or -1 if unknown. */
MESHSYNC_API int meshsync_strategy_parse(const char *s,
                                         meshsync_strategy_t *out);

/* --- watch: changes pushed by the sidecar --------------------------- */

typedef enum { MESHSYNC_CONN = 0, MESHSYNC_ROOM = 1 } meshsync_kind_t;

/*
 * An event pushed to a watching handle. A change (reset 0): kind and id
 * (NUL-terminated, id_len bytes) name the entry, data holds its new value
 * as compact JSON text on one line ("null" when it was deleted), len its
 * length, and version the change's version. A reset (reset 1; id and
 * data NULL): the sidecar could not deliver every change (its change log
 * no longer reached back, Redis lost its data, or this library's queue
 * overflowed): read again what you care about; changes after version
 * follow. Release with meshsync_event_free().
 */
typedef struct meshsync_event {
    int reset;
    meshsync_kind_t kind;
    char *id;
    size_t id_len;
    char *data;
    size_t len;
    uint64_t version;
} meshsync_event_t;

/*
 * Adds to the handle's watch set the nrooms rooms and nconns connections
 * named (an array may be NULL when its count is 0; at most 10000 ids in
 * all per call), and with all set, every entry. *version (optional)
 * receives the version after which changes are pushed: every change to
 * a watched entry with a later version arrives once, in version order,
 * through meshsync_next_event(). The handle may go on making other calls
 * meanwhile: events that arrive while a call waits for its reply are
 * queued (see meshsync_next_event()).
 */
MESHSYNC_API int meshsync_watch(meshsync_t *ms, const char *const *rooms,
                                size_t nrooms, const char *const *conns,
                                size_t nconns, int all, uint64_t *version);

/*
 * Removes the ids named from the watch set, and with all set the "every
 * entry" of meshsync_watch(); with nothing named (both counts 0, all 0),
 * everything. No change after *version (optional) to what was removed is
 * pushed; events already queued stay queued.
 */
MESHSYNC_API int meshsync_unwatch(meshsync_t *ms, const char *const *rooms,
                                  size_t nrooms, const char *const *conns,
                                  size_t nconns, int all, uint64_t *version);

/*
 * Takes the next event, waiting at most timeout_ms milliseconds for one
 * (0: not at all; less than 0: as long as it takes). Returns 1 with *ev
 * filled, 0 when none came in time (not an error: the handle stays
 * usable), or -1 on an error ("io" or "protocol": the connection is
 * gone; events queued before the failure are still handed out first).
 * The library queues up to 65536 events (64 MiB of ids and JSON); past
 * that it drops the queued ones and queues one reset event in their
 * place, carrying the newest dropped version.
 */
MESHSYNC_API int meshsync_next_event(meshsync_t *ms, meshsync_event_t *ev,
                                     int timeout_ms);

/* Frees an event's id and data and zeroes it; safe on a zeroed event. */
MESHSYNC_API void meshsync_event_free(meshsync_event_t *ev);

#ifdef __cplusplus
}
#endif

#endif
