/*
 * mirror.h - keeps the cache equal to Redis.
 *
 * When the Redis links become live (subscribed first, so nothing is
 * missed), or a change event skips versions, the mirror syncs
 * (schema/sync.lua): it reads what it missed from the change log, or,
 * when the log cannot tell (no position yet, trimmed log, another epoch
 * or Redis process), loads every connection and room entry with
 * schema/load.lua in batches, applying each under the version guard and
 * finally tombstoning what Redis no longer has. Meanwhile and afterwards,
 * every change event on the channel is applied if it is newer than the
 * cached entry. Until a sync has completed since the links last came up
 * (or since the cache failed to take a change), the cache may be behind:
 * ms_mirror_stale() says so. A start with a cache file catches up from
 * the position it records. Loop thread only.
 */
#ifndef MS_MIRROR_H
#define MS_MIRROR_H

#include <stdbool.h>
#include <stddef.h>

#include "app.h"

void ms_mirror_init(ms_app_t *app);

/*
 * Stops the mirror; its memory goes when its timer has closed, so a
 * batch reply arriving during shutdown still finds it. Call before
 * ms_redis_close().
 */
void ms_mirror_close(ms_app_t *app);

/* True unless the links are live and the load since then is done. */
bool ms_mirror_stale(const ms_app_t *app);

/*
 * How many versions the cache is behind Redis's sequence, as far as the
 * mirror knows: true with *versions set while the links are up, false
 * when they are down (then nobody knows).
 */
bool ms_mirror_behind(const ms_app_t *app, uint64_t *versions);

/*
 * "down" (a Redis link is not up), "catching_up" (links up, loading) or
 * "live" (caught up, following the change channel). Each change is
 * logged once as msg="sync state".
 */
const char *ms_mirror_state(const ms_app_t *app);

/*
 * Redis handed out a version (seq) at or below one the cache holds: its
 * sequence started over, so it lost its data (FLUSHALL, a restart without
 * persistence, a failover to a replica that missed writes). Every cached
 * version is meaningless then: the cache is emptied and loaded again.
 */
void ms_mirror_rebuild(ms_app_t *app, uint64_t seq);

/*
 * The highest version Redis is known to have handed out, and the way to
 * raise it: a write sent now must get a version above it, or Redis lost
 * its data.
 */
uint64_t ms_mirror_high(const ms_app_t *app);
void ms_mirror_saw_version(ms_app_t *app, uint64_t version);

/*
 * The cache file has caught up with memory after a full load (cache.h):
 * the sync position may go into it now.
 */
void ms_mirror_cache_persisted(ms_app_t *app);

/*
 * The cache's index has filled from the file, or the fill failed: a full
 * load that waited for it begins (see load_start in mirror.c).
 */
void ms_mirror_cache_filled(ms_app_t *app);

/*
 * The cache could not take the change of this version (0: a value
 * without one): a full disk, an I/O error. Reads go on from what the
 * cache holds, marked stale, while a catch-up from the change log is
 * tried every second; it succeeds once the cache takes writes again.
 * ms_mirror_cache_failing() is true from then until that catch-up.
 */
void ms_mirror_cache_failed(ms_app_t *app, uint64_t version);
bool ms_mirror_cache_failing(const ms_app_t *app);

/*
 * The position: every change up to this version is in the cache (0 when
 * no position is known, e.g. during a first load).
 */
uint64_t ms_mirror_applied(const ms_app_t *app);

/*
 * The history the position belongs to, when known: the epoch as
 * sync.lua writes it (into epoch, size bytes) and Redis's run_id (into
 * *run_id, valid until the next sync). False when either is unknown.
 */
bool ms_mirror_history(const ms_app_t *app, char *epoch, size_t size,
                       const char **run_id);

/* Counts rebuilds, so a write can tell one happened while it was sent. */
unsigned ms_mirror_rebuilds(const ms_app_t *app);

/*
 * Sends schema/sync.lua: the history (epoch, sequence, oldest logged
 * version, run_id) and up to count (decimal) changes of the change log
 * from version from, to cb with arg. 0, or MS_EUNAVAIL without Redis.
 */
int ms_mirror_read_log(ms_app_t *app, uint64_t from, const char *count,
                       ms_redis_reply_cb cb, void *arg);

/* The Redis link callbacks (ms_redis_callbacks_t, arg is the app). */
void ms_mirror_on_state(void *arg, bool live);
void ms_mirror_on_message(void *arg, const char *channel, size_t channel_len,
                          const char *payload, size_t len);

#endif
