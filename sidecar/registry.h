/*
 * registry.h - Mesh's connection registry and instance liveness, kept in
 * Mesh's own keys (schema/registry.lua, schema/REDIS.md):
 *
 * - conn.open registers a connection as this instance's; opened with
 *   bind (the default after hello), it is closed when the session that
 *   opened it ends, so an app that crashes leaves no ghosts;
 * - a heartbeat every --heartbeat-ms, lasting --heartbeat-ttl-ms, says
 *   this instance lives;
 * - every --reap-interval-ms, under Mesh's cleanup lock, the connections
 *   of instances whose heartbeat is gone are closed (metadata, registry,
 *   rooms) and those instances forgotten, as Mesh's cleanup does;
 * - at shutdown (with --close-on-exit) the connections this instance
 *   owns are closed and it leaves the registry;
 * - room.join and room.leave put a connection in Mesh's room sets or take
 *   it out (schema/members.lua), versioned, so every cache holds the
 *   memberships that room.members reads.
 *
 * Closing goes through the write pipeline (ms_writes_close_conn), so
 * every sidecar's cache hears of it. Loop thread only.
 */
#ifndef MS_REGISTRY_H
#define MS_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

#include "handlers.h"

/*
 * The operations of this module (see handlers.h): conn.open, room.join,
 * room.leave.
 */
extern const ms_op_t ms_registry_ops[];

void ms_registry_init(ms_app_t *app);

/* Stops the timers; memory goes when they have closed. */
void ms_registry_close(ms_app_t *app);

/*
 * Calls schema/members.lua (step "join", "leave", "ajoin" or "aleave")
 * for conn in room. Returns 0 (cb will be called), or MS_EUNAVAIL.
 */
int ms_registry_members_call(ms_app_t *app, const char *step, const char *room,
                             size_t room_len, const char *conn, size_t conn_len,
                             ms_redis_reply_cb cb, void *arg) MS_MUST_CHECK;

/* The Redis links came up (live) or went down. */
void ms_registry_on_live(ms_app_t *app, bool live);

/* Session s has ended: the connections it opened with bind are closed. */
void ms_registry_session_closed(ms_app_t *app, ms_session_t *s);

/* conn.close of id is under way: no session closes it again. */
void ms_registry_forget(ms_app_t *app, const char *id, size_t len);

/*
 * The start of a clean stop: with --close-on-exit, closes every
 * connection this instance owns, then leaves the registry.
 * ms_registry_busy() is true until that is done (or Redis failed).
 */
void ms_registry_shutdown(ms_app_t *app);
bool ms_registry_busy(const ms_app_t *app);

#endif
