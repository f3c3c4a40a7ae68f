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

#include "app.h"
#include "server.h"

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
