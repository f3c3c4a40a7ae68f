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
 * null, "conns": N, "rooms": N}. Release with meshsync_value_free().
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

/* Frees a value's data and zeroes it; safe on a zeroed value. */
MESHSYNC_API void meshsync_value_free(meshsync_value_t *v);

/* Parses "replace", "merge", "deepMerge": 0, or -1 if unknown. */
MESHSYNC_API int meshsync_strategy_parse(const char *s,
                                         meshsync_strategy_t *out);

#ifdef __cplusplus
}
#endif

#endif
