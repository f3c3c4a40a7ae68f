/*
 * layout.c - builds the Redis key names from the prefix (see layout.h).
 */
#include "layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

static char *join(const char *prefix, const char *suffix)
{
    size_t n = strlen(prefix) + strlen(suffix) + 2;
    char *s = ms_malloc(n);

    snprintf(s, n, "%s:%s", prefix, suffix);
    return s;
}


/* SCAN MATCH treats * ? [ ] and \ specially; a prefix may hold them. */
static char *glob_escape_star(const char *s)
{
    char *out = ms_malloc(strlen(s) * 2 + 2);
    char *p = out;

    for (; *s != '\0'; s++) {
        if (strchr("*?[]\\", *s) != NULL)
            *p++ = '\\';
        *p++ = *s;
    }
    *p++ = '*';
    *p = '\0';
    return out;
}


void ms_layout_init(ms_layout_t *l, const char *prefix, int db)
{
    char channel[48];
    char ks[48];

    l->conn_meta = join(prefix, "connection-meta");
    l->room_prefix = join(prefix, "roommeta:");
    l->room_pattern = glob_escape_star(l->room_prefix);
    l->seq = join(prefix, "meshsync:seq");
    l->conn_versions = join(prefix, "meshsync:versions:conn");
    l->room_versions = join(prefix, "meshsync:versions:room");
    snprintf(channel, sizeof(channel), "meshsync:changes:%d", db);
    l->channel = join(prefix, channel);
    l->turn_prefix = join(prefix, "meshsync:turn:");
    l->log = join(prefix, "meshsync:log");
    l->epoch = join(prefix, "meshsync:epoch");
    l->scrubber = join(prefix, "meshsync:scrubber");
    l->key_prefix = join(prefix, "");
    l->connections = join(prefix, "connections");
    l->instances = join(prefix, "instances");
    l->cleanup_lock = join(prefix, "cleanup:lock");
    l->members_prefix = join(prefix, "room:");
    l->members_pattern = glob_escape_star(l->members_prefix);

    /* Keyspace channels name the key after the database's channel head. */
    snprintf(ks, sizeof(ks), "__keyspace@%d__", db);
    l->ks_conn = join(ks, l->conn_meta);
    l->ks_room = join(ks, l->room_prefix);
    l->ks_room_pattern = glob_escape_star(l->ks_room);
    l->ks_members = join(ks, l->members_prefix);
    l->ks_members_pattern = glob_escape_star(l->ks_members);
}


void ms_layout_free(ms_layout_t *l)
{
    free(l->conn_meta);
    free(l->room_prefix);
    free(l->room_pattern);
    free(l->seq);
    free(l->conn_versions);
    free(l->room_versions);
    free(l->channel);
    free(l->turn_prefix);
    free(l->log);
    free(l->epoch);
    free(l->scrubber);
    free(l->key_prefix);
    free(l->connections);
    free(l->instances);
    free(l->cleanup_lock);
    free(l->members_prefix);
    free(l->members_pattern);
    free(l->ks_conn);
    free(l->ks_room);
    free(l->ks_room_pattern);
    free(l->ks_members);
    free(l->ks_members_pattern);
}


char *ms_layout_key(const char *head, const char *middle, const char *id,
                    size_t id_len, size_t *len)
{
    size_t h = strlen(head), m = middle ? strlen(middle) : 0;
    char *key = ms_malloc(h + m + id_len + 1);

    memcpy(key, head, h);
    if (m > 0)
        memcpy(key + h, middle, m);
    if (id_len > 0)
        memcpy(key + h + m, id, id_len);
    key[h + m + id_len] = '\0';
    *len = h + m + id_len;
    return key;
}


const char *ms_layout_versions(const ms_layout_t *l, ms_kind_t kind)
{
    return kind == MS_KIND_CONN ? l->conn_versions : l->room_versions;
}


int ms_entry_compare(ms_kind_t ka, const char *a, size_t alen, ms_kind_t kb,
                     const char *b, size_t blen)
{
    int c;

    if (ka != kb)
        return ka < kb ? -1 : 1;
    c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}


const char *ms_kind_name(ms_kind_t kind)
{
    return kind == MS_KIND_CONN ? "conn" : "room";
}
