/*
 * index.h - the cache's in-memory index: every cached entry's version and
 * msgpack value in a hash table, so that a read costs a hash lookup and
 * a copy instead of a SQLite statement.
 *
 * The index is a plain container. cache.c keeps it equal to the entries
 * table: whatever it changes there it puts here, and after a rollback it
 * empties the index and refills it from the table (see cache.h). Entries
 * are never removed one by one: a delete is a tombstone (no value) with
 * the delete's version, as in the table.
 *
 * Loop thread only; not thread-safe. Memory comes from ms_malloc (the
 * daemon aborts on out-of-memory).
 */
#ifndef MS_INDEX_H
#define MS_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ms_index_s ms_index_t;

/* What a lookup finds; mp points into the index (see ms_index_find). */
typedef struct ms_index_view_s {
    uint64_t version;
    bool present;   /* false for a tombstone */
    const char *mp; /* the value, NULL for a tombstone */
    size_t mp_len;
} ms_index_view_t;

/* A new, empty index. Free with ms_index_free(). */
ms_index_t *ms_index_new(void);
void ms_index_free(ms_index_t *ix);

/*
 * Looks up (kind, id). Returns true and fills *v when the index holds the
 * entry; v->mp stays valid until the next put or clear.
 */
bool ms_index_find(const ms_index_t *ix, unsigned kind, const char *id,
                   size_t id_len, ms_index_view_t *v);

/*
 * Stores (kind, id) at version with the value mp (copied), or as a
 * tombstone when mp is NULL, replacing what the index held. With
 * only_new, an entry the index already holds is left as it is.
 */
void ms_index_put(ms_index_t *ix, unsigned kind, const char *id, size_t id_len,
                  uint64_t version, const char *mp, size_t mp_len,
                  bool only_new);

/* Forgets every entry. */
void ms_index_clear(ms_index_t *ix);

/* How many entries (tombstones included) the index holds. */
size_t ms_index_count(const ms_index_t *ix);

#endif
