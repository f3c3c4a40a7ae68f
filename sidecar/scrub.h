/*
 * scrub.h - finds metadata written into Mesh's keys by someone other than
 * meshsync (a Mesh server, redis-cli) and versions it, so that it reaches
 * every sidecar's cache like any other write.
 *
 * Such a write publishes nothing and leaves the entry's version alone.
 * One sidecar at a time, the holder of a lease in Redis, looks for them
 * with schema/scrub.lua, which compares each value with the digest that
 * schema/write.lua stored beside its version, and "adopts" each one found
 * through write.lua: a new version, a change message, a log entry. It
 * scans everything when it takes the lease and every --scrub-interval-ms;
 * where Redis has keyspace notifications enabled (checked on every
 * connect) it also reacts to them: a room key named by a notification
 * that no change message explains is looked at within NOTIFY_DELAY_MS,
 * and the connections' hash, whose notifications do not name the field,
 * is scanned at most once per CONN_DELAY_MS, or per CONN_DELAY_TIMES the
 * duration of the last such scan if longer. Room memberships, which carry
 * no digest, are compared with the scrubber's own cache (while it is
 * caught up) at each full scan and for each room set a notification
 * names, and each difference versioned through schema/members.lua. Loop
 * thread only.
 */
#ifndef MS_SCRUB_H
#define MS_SCRUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"

void ms_scrub_init(ms_app_t *app);

/* Stops everything; the memory goes when the timers have closed. */
void ms_scrub_close(ms_app_t *app);

/*
 * At shutdown: gives the lease back, so that another sidecar takes it at
 * once rather than when it runs out. ms_scrub_releasing() is true until
 * Redis has answered (or could not).
 */
void ms_scrub_release(ms_app_t *app);
bool ms_scrub_releasing(const ms_app_t *app);

/* The mirror's links came up (live) or went down. */
void ms_scrub_on_live(ms_app_t *app, bool live);

/*
 * A change message for kind/id arrived on the change channel (deleted:
 * its value was false; existed: the entry had a value before): it
 * explains the keyspace notifications its write caused just before it.
 */
void ms_scrub_saw_change(ms_app_t *app, ms_kind_t kind, const char *id,
                         size_t id_len, bool deleted, bool existed);

/* The same for a membership message (join or leave of room). */
void ms_scrub_saw_membership(ms_app_t *app, const char *room, size_t len,
                             bool join);

/*
 * A message on a keyspace channel: the key is the channel name after the
 * "__keyspace@<db>__:" head, event the operation ("hset", "del", ...).
 */
void ms_scrub_on_keyspace(ms_app_t *app, const char *channel,
                          size_t channel_len, const char *event,
                          size_t event_len);

/* For the health op. */
typedef struct ms_scrub_stats_s {
    bool leader;      /* this sidecar holds the lease */
    int keyspace;     /* notifications usable: 1, not: 0, unknown: -1 */
    uint64_t passes;  /* full scans completed by this sidecar */
    uint64_t adopted; /* outside writes this sidecar versioned */
} ms_scrub_stats_t;

void ms_scrub_stats(const ms_app_t *app, ms_scrub_stats_t *out);

#endif
