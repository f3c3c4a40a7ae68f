/*
 * layout.h - the names of the Redis keys and channel meshsync uses, all
 * under one configurable prefix (schema/REDIS.md describes them).
 *
 * Mesh's own keys:
 *   <prefix>:connection-meta        hash, connection id -> JSON
 *   <prefix>:roommeta:<room>        hash, field "data" -> JSON
 * meshsync's keys:
 *   <prefix>:meshsync:seq           global write sequence (INCR)
 *   <prefix>:meshsync:versions:conn hash, connection id -> version:digest
 *   <prefix>:meshsync:versions:room hash, room name -> version:digest
 *   <prefix>:meshsync:changes:<db>  pub/sub channel of change events (pub/sub
 *                                   spans databases; the name keeps them
 *                                   apart)
 *   <prefix>:meshsync:turn:<kind>:<id>  which sidecar writes an entry next
 *   <prefix>:meshsync:log           stream of recent changes, ID <version>-0
 *   <prefix>:meshsync:epoch         names the sequence's current history
 *   <prefix>:meshsync:scrubber      which sidecar runs the scrub (a lease)
 * Mesh's connection registry and instance liveness:
 *   <prefix>:connections            hash, connection id -> instance id
 *   <prefix>:connections:<instance> set of that instance's connections
 *   <prefix>:instances              set of instance ids
 *   <prefix>:instance:<id>:heartbeat  string with a TTL while it lives
 *   <prefix>:cleanup:lock           held while dead instances are reaped
 *   <prefix>:connection:<id>:rooms, <prefix>:room:<room>  memberships
 * and the keyspace-notification channels of Mesh's keys in database <db>:
 *   __keyspace@<db>__:<prefix>:connection-meta, ...:roommeta:<room>
 *
 * Built once at start-up; read-only afterwards.
 */
#ifndef MS_LAYOUT_H
#define MS_LAYOUT_H

#include <stddef.h>

#include "cache.h"

typedef struct ms_layout_s {
    char *conn_meta;    /* <prefix>:connection-meta */
    char *room_prefix;  /* <prefix>:roommeta: */
    char *room_pattern; /* room_prefix, glob-escaped, then "*" */
    char *seq;
    char *conn_versions;
    char *room_versions;
    char *channel;
    char *turn_prefix;        /* <prefix>:meshsync:turn: */
    char *log;                /* <prefix>:meshsync:log */
    char *epoch;              /* <prefix>:meshsync:epoch */
    char *scrubber;           /* <prefix>:meshsync:scrubber */
    char *key_prefix;         /* <prefix>: */
    char *connections;        /* <prefix>:connections */
    char *instances;          /* <prefix>:instances */
    char *cleanup_lock;       /* <prefix>:cleanup:lock */
    char *members_prefix;     /* <prefix>:room: (a room's members set) */
    char *members_pattern;    /* members_prefix, glob-escaped, then "*" */
    char *ks_conn;            /* keyspace channel of conn_meta */
    char *ks_room;            /* keyspace channel prefix of room keys */
    char *ks_room_pattern;    /* ks_room, glob-escaped, then "*" */
    char *ks_members;         /* keyspace channel prefix of room member sets */
    char *ks_members_pattern; /* ks_members, glob-escaped, then "*" */
} ms_layout_t;

void ms_layout_init(ms_layout_t *l, const char *prefix, int db);
void ms_layout_free(ms_layout_t *l);

/* The versions hash of a kind. */
const char *ms_layout_versions(const ms_layout_t *l, ms_kind_t kind);

/*
 * Returns a new string (caller frees) of head, then the optional middle,
 * then the id's bytes, and its length in *len: how per-entry key names
 * are built.
 */
char *ms_layout_key(const char *head, const char *middle, const char *id,
                    size_t id_len, size_t *len);

/*
 * Orders entries by kind, then id bytes: the comparison for trees keyed
 * by entry (strcmp-like result).
 */
int ms_entry_compare(ms_kind_t ka, const char *a, size_t alen, ms_kind_t kb,
                     const char *b, size_t blen);

/* "conn" or "room": the kind's name in change events. */
const char *ms_kind_name(ms_kind_t kind);

#endif
