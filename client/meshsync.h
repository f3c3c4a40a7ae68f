/*
 * meshsync.h - libmeshsync, the C client of the meshsync sidecar.
 *
 * A meshsync_t is one blocking connection to a meshsyncd Unix socket.
 * Every call sends one request and waits for its reply. A call returns 0
 * on success, or -1 with the error kept on the handle: meshsync_errcode()
 * gives the protocol's code ("invalid_request", "too_large",
 * "unavailable", ... or "io" and "protocol" for local failures) and
 * meshsync_errmsg() a one-line message. After an "io" or "protocol"
 * error the connection is unusable; other errors leave it usable.
 *
 * Values go in and come out as JSON text (MESHSYNC_JSON) or as a msgpack
 * buffer (MESHSYNC_MSGPACK). The library never logs, never exits and never
 * aborts; a handle must not be used by two threads at once.
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
 * A value read from the sidecar. For MESHSYNC_JSON, data is
 * NUL-terminated JSON text ("null" for a missing entry); for
 * MESHSYNC_MSGPACK it is one msgpack object (0xc0, nil, when missing).
 * version is the entry's version (0 if never written); stale is 1 when
 * the sidecar was not caught up with Redis when it answered. Release data
 * with meshsync_value_free().
 */
typedef struct meshsync_value {
    char *data;
    size_t len;
    uint64_t version;
    int stale;
} meshsync_value_t;

/*
 * Connects to the socket at path (NULL: $MESHSYNC_SOCKET, else the
 * default). Always returns a handle unless memory runs out (NULL); check
 * meshsync_errcode() for a connect failure. Free with meshsync_free().
 */
MESHSYNC_API meshsync_t *meshsync_connect(const char *path);
MESHSYNC_API void meshsync_free(meshsync_t *ms);

/* The last error's code and message; NULL code when the last call succeeded. */
MESHSYNC_API const char *meshsync_errcode(const meshsync_t *ms);
MESHSYNC_API const char *meshsync_errmsg(const meshsync_t *ms);

/* Timeout for each reply in milliseconds (default 5000; 0 waits forever). */
MESHSYNC_API void meshsync_set_timeout(meshsync_t *ms, int timeout_ms);

MESHSYNC_API int meshsync_ping(meshsync_t *ms);

/* Binds this session to a connection id: conn calls may then pass NULL. */
MESHSYNC_API int meshsync_hello(meshsync_t *ms, const char *conn);

/* conn NULL means the connection bound by meshsync_hello(). */
MESHSYNC_API int meshsync_conn_get(meshsync_t *ms, const char *conn,
                                   meshsync_format_t format,
                                   meshsync_value_t *out);

/*
 * Sets a connection's metadata with a strategy; data holds one value in
 * the given format (JSON "null" clears it). version (optional) receives
 * the entry's new version.
 */
MESHSYNC_API int meshsync_conn_set(meshsync_t *ms, const char *conn,
                                   meshsync_format_t format,
                                   const char *data, size_t len,
                                   meshsync_strategy_t strategy,
                                   uint64_t *version);

/* Removes a connection's metadata. */
MESHSYNC_API int meshsync_conn_close(meshsync_t *ms, const char *conn,
                                     uint64_t *version);

MESHSYNC_API int meshsync_room_get(meshsync_t *ms, const char *room,
                                   meshsync_format_t format,
                                   meshsync_value_t *out);
MESHSYNC_API int meshsync_room_set(meshsync_t *ms, const char *room,
                                   meshsync_format_t format,
                                   const char *data, size_t len,
                                   meshsync_strategy_t strategy,
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
