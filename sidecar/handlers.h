/*
 * handlers.h - the request handlers: decode one request frame, check its
 * fields, run the operation against the cache (reads) or the write
 * pipeline (writes), and pack the reply (schema/PROTOCOL.md).
 *
 * A request never affects another client: every problem with it becomes
 * an error reply on its own session. Loop thread only.
 */
#ifndef MS_HANDLERS_H
#define MS_HANDLERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "app.h"
#include "error.h"
#include "server.h"

/*
 * A decoded request: its id, and the fields the core operations use,
 * pointing into the frame (valid during the operation's call only).
 * Other fields are found with ms_request_field().
 */
typedef struct ms_request_s {
    uint64_t id;
    bool has_id;
    const msgpack_object *map; /* the whole request */
    const msgpack_object *op;
    const msgpack_object *conn;
    const msgpack_object *room;
    const msgpack_object *value;
    const msgpack_object *strategy;
    const msgpack_object *min_version;
    const msgpack_object *timeout;
    const msgpack_object *consistency;
} ms_request_t;

/*
 * An operation: called with the request once its id and op are checked;
 * it answers (now or later) through the functions below. Modules list
 * theirs in a table ending with {NULL, NULL}, which handlers.c consults.
 */
typedef void (*ms_op_fn)(ms_app_t *app, ms_session_t *s,
                         const ms_request_t *rq);
typedef struct ms_op_s {
    const char *name;
    ms_op_fn fn;
} ms_op_t;

/* The value of a key of the request map, or NULL. Keys are unique. */
const msgpack_object *ms_request_field(const ms_request_t *rq,
                                       const char *name);

/*
 * Checks a connection id or room name (a string, not empty, within
 * --max-id-bytes, UTF-8 without NUL); name is the field, for the message.
 */
int ms_request_check_id(const ms_app_t *app, const msgpack_object *o,
                        const char *name, ms_error_t *err) MS_MUST_CHECK;

/*
 * The entry a request names: its room, or its conn, or for a connection
 * without one, the connection bound to the session by hello.
 */
int ms_request_target(const ms_app_t *app, ms_session_t *s,
                      const ms_request_t *rq, ms_kind_t kind, const char **id,
                      size_t *len, ms_error_t *err) MS_MUST_CHECK;

/*
 * Starts a success reply {id, ok: true, ...} with room for n more
 * key/value pairs, to pack with the returned packer; end it with
 * ms_session_reply_end().
 */
msgpack_packer *ms_reply_ok(ms_session_t *s, const ms_request_t *rq, size_t n);

/* Sends {id, ok: false, error: {code, message}}; rq may be NULL. */
void ms_reply_error(ms_session_t *s, const ms_request_t *rq, int code,
                    const char *msg);

void ms_pack_str(msgpack_packer *pk, const char *s);

/*
 * Session s has ended (the client went, or was closed): each module lets
 * go of what it kept for it. Called once, before its memory goes.
 */
void ms_handlers_session_closed(ms_app_t *app, ms_session_t *s);

/* Handles one frame body received on session s. */
void ms_handlers_frame(ms_app_t *app, ms_session_t *s, const char *body,
                       size_t len);

/* Answers request req_id of s with the entry's value from the cache. */
void ms_handlers_answer_get(ms_app_t *app, ms_session_t *s, uint64_t req_id,
                            ms_kind_t kind, const char *id, size_t len);

/*
 * Answers request req_id of s with a value (msgpack bytes, NULL for nil)
 * read from Redis rather than the cache: never stale.
 */
void ms_handlers_answer_value(ms_session_t *s, uint64_t req_id, const char *mp,
                              size_t mp_len, uint64_t version);

/* Answers request req_id of s with an error. */
void ms_handlers_answer_error(ms_session_t *s, uint64_t req_id, int code,
                              const char *msg);

/* Sends {id: nil, ok: false, error} for a problem found below requests. */
void ms_handlers_reply_error(ms_session_t *s, int code, const char *msg);

#endif
