/*
 * waits.h - reads waiting for a version: a get with minVersion that the
 * cache cannot answer yet is parked here, indexed by entry, until the
 * mirror or the write pipeline applies that version of the entry, or its
 * timeout passes. Loop thread only.
 */
#ifndef MS_WAITS_H
#define MS_WAITS_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "server.h"

/*
 * Parks request req_id of session s until entry kind/id reaches
 * min_version (then the read is answered from the cache) or timeout_ms
 * passes (then Redis is asked, see ms_direct_read). Holds the session
 * meanwhile, counting reply_bytes against its output limit.
 */
void ms_waits_add(ms_app_t *app, ms_session_t *s, uint64_t req_id,
                  ms_kind_t kind, const char *id, size_t len,
                  uint64_t min_version, uint64_t timeout_ms,
                  size_t reply_bytes);

/* The cache took version of entry kind/id: answers the reads it meets. */
void ms_waits_entry_changed(ms_app_t *app, ms_kind_t kind, const char *id,
                            size_t len, uint64_t version);

/*
 * Answers every read whose entry the cache now holds at the version it
 * waits for: after changes made without ms_waits_entry_changed(), such as
 * the tombstones that end a load.
 */
void ms_waits_recheck(ms_app_t *app);

/* Drops the reads of a session that closed. */
void ms_waits_session_closed(ms_app_t *app, ms_session_t *s);

/*
 * Ends every read (at shutdown) with "unavailable". Memory goes with the
 * timers' closing.
 */
void ms_waits_close(ms_app_t *app);

#endif
