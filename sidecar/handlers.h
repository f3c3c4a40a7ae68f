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

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "server.h"

/* Handles one frame body received on session s. */
void ms_handlers_frame(ms_app_t *app, ms_session_t *s, const char *body,
                       size_t len);

/*
 * Called by the mirror and the write pipeline after the cache took a new
 * version of an entry: answers the reads waiting for it (minVersion).
 */
void ms_handlers_entry_changed(ms_app_t *app, ms_kind_t kind, const char *id,
                               size_t len, uint64_t version);

/* Drops the reads of a session that closed while they waited. */
void ms_handlers_session_closed(ms_app_t *app, ms_session_t *s);

/* Drops every waiting read (at shutdown); their sessions are closing. */
void ms_handlers_close(ms_app_t *app);

/* Sends {id: nil, ok: false, error} for a problem found below requests. */
void ms_handlers_reply_error(ms_session_t *s, int code, const char *msg);

#endif
