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

/* Entries are keyed by a kind, 0 or 1 (ms_kind_t), and an id. */
typedef struct ms_index_s ms_index_t;

/* What a lookup finds; mp points into the index (see ms_index_find). */
typedef struct ms_index_view_s {
    uint64_t version;
    bool present;   /* false for a tombstone */
    bool dirty;     /* not yet written to the file (see cache.h) */
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

/* ms_index_put's flags. */
#define MS_INDEX_ONLY_NEW 1u /* leave an entry the index holds as it is */
#define MS_INDEX_DIRTY    2u /* mark it not yet written to the file */
#define MS_INDEX_KEEP_SAME                                                     \
    4u /* an entry already holding this version and                            \
         value is only stamped (see set_gen) */

/*
 * Stores (kind, id) at version with the value mp (copied), or as a
 * tombstone when mp is NULL, replacing what the index held.
 */
void ms_index_put(ms_index_t *ix, unsigned kind, const char *id, size_t id_len,
                  uint64_t version, const char *mp, size_t mp_len,
                  unsigned flags);

/* Marks (kind, id), if held, as written to the file. */
void ms_index_clean(ms_index_t *ix, unsigned kind, const char *id,
                    size_t id_len);

/*
 * Every put stamps the entry with the index's generation (set here; 16
 * bits of it are kept, plenty between two loads). A
 * sweep makes each entry of another generation, no newer than seq, a
 * dirty tombstone of version seq, stamped with the current generation,
 * and returns how many had a value: what a full load does with what it
 * did not see (cache.c uses it while memory is ahead of the file).
 */
void ms_index_set_gen(ms_index_t *ix, uint32_t gen);
size_t ms_index_sweep(ms_index_t *ix, uint64_t seq);

/* Marks every entry dirty. */
void ms_index_dirty_all(ms_index_t *ix);

/* Live (non-tombstone) entries of a kind (kept count: no scan); the
 * highest version held (a scan). */
size_t ms_index_count_live(const ms_index_t *ix, unsigned kind);
uint64_t ms_index_max_version(const ms_index_t *ix);

/* An entry with its key, as ms_index_page() returns it. */
typedef struct ms_index_item_s {
    const char *id;
    size_t id_len;
    ms_index_view_t v;
} ms_index_item_t;

/*
 * The first `max` live entries of a kind whose ids sort after `after`
 * (bytewise, shorter first on a tie), in that order, into out[]; returns
 * how many. A scan of the whole index: for lists while the file cannot
 * give them (cache.h). Pointers valid until the next put or clear.
 */
size_t ms_index_page(const ms_index_t *ix, unsigned kind, const char *after,
                     size_t after_len, size_t max, ms_index_item_t *out);

/* Calls fn with the key of every dirty entry, in no particular order. */
typedef void (*ms_index_key_cb)(void *arg, unsigned kind, const char *id,
                                size_t id_len);
void ms_index_walk_dirty(const ms_index_t *ix, ms_index_key_cb fn, void *arg);

/* Forgets every entry. */
void ms_index_clear(ms_index_t *ix);

/* How many entries (tombstones included) the index holds. */
size_t ms_index_count(const ms_index_t *ix);

#endif
