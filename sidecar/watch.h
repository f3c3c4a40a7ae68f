/*
 * watch.h - push frames of changes to sessions that asked for them (the watch
 * and unwatch operations). Loop thread only.
 *
 * One feed serves every watcher. It follows the change channel in version
 * order and, where versions skip or the links were down, reads the missing
 * changes from the change log (schema/sync.lua, in pages) before anything
 * newer, keeping channel messages meanwhile. A watcher therefore gets every
 * change after the version its watch reply named, once and in order, or a
 * reset frame when that cannot be done (log trimmed, Redis lost its data,
 * too much kept meanwhile). Each change is converted to msgpack and packed
 * once, whatever the number of watchers. A watcher whose unsent output
 * would pass the server's output limit is cut off (ms_session_cut()).
 */
#ifndef MS_WATCH_H
#define MS_WATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "handlers.h"

/* The operations of this module (see handlers.h). */
extern const ms_op_t ms_watch_ops[];

/*
 * Creates the feed (one per daemon). ms_watch_close() ends it, after the
 * server has closed its sessions and before the Redis links go; its
 * memory goes when its timer has closed.
 */
void ms_watch_init(ms_app_t *app);
void ms_watch_close(ms_app_t *app);

/* Session s has ended: its watches go with it. */
void ms_watch_session_closed(ms_app_t *app, ms_session_t *s);

/*
 * The mirror's hooks: a message on the change channel (called after the
 * mirror has applied it, so that a watcher reading back a pushed change
 * finds it in the cache), and the Redis links going up or down.
 */
void ms_watch_on_change(ms_app_t *app, const char *payload, size_t len);
void ms_watch_on_live(ms_app_t *app, bool live);

/*
 * The mirror found that Redis's history is not its cache's (a flush, a
 * restart): the feed checks its own against Redis, and resets watchers
 * unless it already has. A flush no write follows shows nowhere else.
 */
void ms_watch_history_changed(ms_app_t *app);

#endif
