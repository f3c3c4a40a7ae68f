/*
 * cache.h - the SQLite cache of record: every connection and room entry
 * this sidecar knows, with its version, as JSON text (as Redis holds it;
 * for a row a full load wrote, as meshsync writes the same value: see
 * ms_cache_persist_new) and as msgpack (ready to copy into a reply).
 *
 * Every change carries a version taken from one global sequence in Redis;
 * the cache applies a change only if it is newer than what it holds.
 * Deleting leaves a tombstone (value NULL) with the delete's version, so a
 * late, older change cannot bring a deleted entry back.
 *
 * A resync (a full load from Redis) runs between ms_cache_resync_begin()
 * and ms_cache_resync_end(): entries it does not touch and that are no
 * newer than the sequence read when it began are gone from Redis, and end
 * turns them into tombstones of that sequence; tombstones held from
 * before are raised to it too (the entry may have come back and gone
 * again unseen).
 *
 * Reads are served from memory: an index (index.h) holds every entry's
 * version and msgpack value, and every change made to the file is made to
 * it too. When the cache opens, and after a transaction is lost (a full
 * disk), the index fills from the file in steps (ms_cache_fill); until it
 * is complete, a lookup it cannot answer reads the file. While the file
 * fails, every write is committed on its own and memory takes only the
 * writes the file took.
 *
 * The file uses WAL and prepared statements. Runs on the daemon's loop
 * thread only; not thread-safe.
 */
#ifndef MS_CACHE_H
#define MS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum { MS_KIND_CONN = 0, MS_KIND_ROOM = 1 } ms_kind_t;

typedef struct ms_cache_s ms_cache_t;

/* How a change is checked against the cached version. */
typedef enum {
    MS_APPLY_NEWER = 0, /* apply if version > cached (change events) */
    MS_APPLY_NOT_OLDER, /* apply if version >= cached */
    MS_APPLY_ALWAYS     /* apply whatever is cached (a resync load, once
                           it has checked the cached version itself) */
} ms_apply_mode_t;

typedef struct ms_cache_entry_s {
    uint64_t version; /* 0 when the cache has never seen the entry */
    bool present;     /* false when absent or a tombstone */
    const char *json; /* the value as JSON text, NULL unless present */
    size_t json_len;
    const char *mp; /* the value as msgpack, NULL unless present */
    size_t mp_len;
} ms_cache_entry_t;

/*
 * Opens (creating if needed) the cache file at path; ":memory:" works for
 * tests. Takes an exclusive lock on "<path>-lock" so that one daemon at a
 * time uses the file. Returns 0 and a new cache in *out; MS_EINVAL when
 * the file is not a usable cache (not SQLite, damaged, another schema
 * version), which a caller may move aside; MS_EINTERNAL otherwise (the
 * file is locked, unreadable, the disk full, ...). Release with
 * ms_cache_close().
 */
int ms_cache_open(const char *path, ms_cache_t **out,
                  ms_error_t *err) MS_MUST_CHECK;
void ms_cache_close(ms_cache_t *c);

/*
 * Looks an entry up in memory: version and msgpack value, with e->json
 * NULL. Returns 0 and fills *e (whose pointers stay valid until the next
 * call on c), or MS_EINTERNAL.
 */
int ms_cache_get(ms_cache_t *c, ms_kind_t kind, const char *id, size_t id_len,
                 ms_cache_entry_t *e) MS_MUST_CHECK;

/* The same, from the file, with the JSON text too (for merges). */
int ms_cache_get_json(ms_cache_t *c, ms_kind_t kind, const char *id,
                      size_t id_len, ms_cache_entry_t *e) MS_MUST_CHECK;

/*
 * Reads up to `rows` more rows of the file into the index while it is not
 * yet complete (see the file comment). Returns 1 once the index holds
 * every entry, 0 while rows remain, MS_EINTERNAL on failure.
 */
int ms_cache_fill(ms_cache_t *c, unsigned rows) MS_MUST_CHECK;
bool ms_cache_filled(const ms_cache_t *c);

/*
 * Applies a change: json/mp NULL means a delete (a tombstone). Returns 1
 * when applied, 0 when ignored because the cache holds a newer version
 * (or, with MS_APPLY_NEWER, the same one), MS_EINTERNAL on failure.
 */
int ms_cache_apply(ms_cache_t *c, ms_kind_t kind, const char *id, size_t id_len,
                   uint64_t version, const char *json, size_t json_len,
                   const char *mp, size_t mp_len,
                   ms_apply_mode_t mode) MS_MUST_CHECK;

/*
 * The same as ms_cache_apply(..., MS_APPLY_NEWER), for changes that must
 * reach memory at once and may reach the file a little later: memory
 * takes the change now, the file at the next ms_cache_flush() (or before
 * anything that reads the file). Keeps the statement off the path of a
 * write's reply. While the file fails, or inside begin/commit, it is
 * ms_cache_apply().
 */
int ms_cache_apply_soon(ms_cache_t *c, ms_kind_t kind, const char *id,
                        size_t id_len, uint64_t version, const char *json,
                        size_t json_len, const char *mp,
                        size_t mp_len) MS_MUST_CHECK;

/*
 * Writes are grouped into transactions (group commit): the first write
 * opens one, and it is committed by ms_cache_flush(), which the daemon
 * calls once per loop turn, after the turn's replies have gone out (or
 * at once by the write that brings it to 8192 rows). Memory has every
 * change as soon as it is made; the file is behind by at most the open
 * transaction, which a crash loses together with the position saved in
 * it. A transaction that fails to commit is taken out of memory too:
 * only a client that read its changes in that same loop turn saw them.
 *
 * begin/commit mark a group of writes that must not be split across two
 * transactions (a load batch); they nest. commit returns a failure of
 * the transaction, if it committed.
 */
int ms_cache_begin(ms_cache_t *c) MS_MUST_CHECK;
int ms_cache_commit(ms_cache_t *c) MS_MUST_CHECK;

/*
 * Commits the open transaction, unless a begin is not yet committed.
 * On failure the transaction is rolled back and MS_EINTERNAL returned:
 * what it held is lost, and memory refills from the file (see above).
 * A transaction lost elsewhere since the last flush (by a write, a list
 * or a resync writing pending changes first) is reported here too, once,
 * and nothing written after it is committed: the caller must load again.
 */
int ms_cache_flush(ms_cache_t *c) MS_MUST_CHECK;

/* Whether a transaction is open, waiting for ms_cache_flush(). */
bool ms_cache_unflushed(const ms_cache_t *c);

/*
 * A full load begun while the index holds all the file (and the file
 * takes writes, or is empty) goes to memory only: random writes into a B-tree
 * larger than SQLite's page cache cost a page read and a page write each,
 * minutes at a million rows. A row the load finds as memory holds it (same
 * version, same value) is only marked as seen; entries it does not see are
 * swept in memory at resync_end. Memory is then ahead of the file
 * (ms_cache_ahead): the rows that changed are written afterwards in the file's
 * key order, a few at a time, so that each page is written once:
 *
 *   p = ms_cache_persist_new(c);        loop thread, once the load is
 *                                       over; NULL: nothing left
 *   ms_cache_persist_sort(p);           any thread: touches p only
 *   ms_cache_persist_step(c, p, rows);  loop thread, until it returns 1
 *   ms_cache_persist_free(p);
 *
 * and again until ms_cache_persist_new() returns NULL, when everything
 * is committed and the cache is no longer ahead. Meanwhile reads are
 * served from memory as usual, and so are lists, counts and a merge's
 * JSON (see ms_cache_get_json); the caller must not record a sync
 * position in the file. A lost
 * transaction leaves memory as it is and marks every row to be written
 * again. persist_step returns 1 when p is done, 0 while rows remain,
 * MS_EINTERNAL when the file fails (try again later).
 */
typedef struct ms_cache_persist_s ms_cache_persist_t;
bool ms_cache_ahead(const ms_cache_t *c);
bool ms_cache_persist_wanted(const ms_cache_t *c); /* ahead, load over */
ms_cache_persist_t *ms_cache_persist_new(ms_cache_t *c);
void ms_cache_persist_sort(ms_cache_persist_t *p);
int ms_cache_persist_step(ms_cache_t *c, ms_cache_persist_t *p,
                          unsigned rows) MS_MUST_CHECK;
void ms_cache_persist_free(ms_cache_persist_t *p);

/* See the file comment. end returns the number of entries tombstoned. */
int ms_cache_resync_begin(ms_cache_t *c) MS_MUST_CHECK;
int ms_cache_resync_end(ms_cache_t *c, uint64_t seq) MS_MUST_CHECK;

/* The highest version held, tombstones included (0 when empty). */
int64_t ms_cache_max_version(ms_cache_t *c);

/* Forgets every entry and tombstone (Redis lost its data). */
int ms_cache_clear(ms_cache_t *c) MS_MUST_CHECK;

/*
 * Live (non-tombstone) entries of a kind, or a negative error. Counted
 * in memory; while the index fills, from the file, at most once a second
 * (so up to a second old).
 */
int64_t ms_cache_count(ms_cache_t *c, ms_kind_t kind);

/*
 * Called by ms_cache_list() for each entry: id (id_len bytes) and e point
 * into SQLite's current row or into memory, valid during the call only
 * (e->json is NULL while memory is ahead of the file). It returns 0 for
 * the next entry, anything else to stop, and must not call into the
 * cache.
 */
typedef int (*ms_cache_list_cb)(void *arg, const char *id, size_t id_len,
                                const ms_cache_entry_t *e);

/*
 * Walks the live (non-tombstone) entries of a kind in id byte order,
 * starting after the id `after` (exclusive; NULL with after_len 0: from
 * the first), calling fn with each until fn stops it or they run out.
 * Rows are read one at a time from a prepared statement, nothing is
 * collected. Returns 1 when fn stopped, 0 when the entries ran out,
 * MS_EINVAL or MS_EINTERNAL.
 */
int ms_cache_list(ms_cache_t *c, ms_kind_t kind, const char *after,
                  size_t after_len, ms_cache_list_cb fn,
                  void *arg) MS_MUST_CHECK;

/*
 * A small key/value table for state that must outlive a restart (the
 * cache keeps its resync generation there). get returns 0 with *value
 * set, or MS_EINVAL if unset.
 */
int ms_cache_meta_get(ms_cache_t *c, const char *key,
                      uint64_t *value) MS_MUST_CHECK;
int ms_cache_meta_set(ms_cache_t *c, const char *key,
                      uint64_t value) MS_MUST_CHECK;

/*
 * Room memberships (Mesh's <p>:room:<room> sets), versioned like entries:
 * a join (present) or leave of that version, applied if newer than what
 * the cache holds. Returns 1 if it changed the cache, 0 if not, or a
 * negative code.
 */
int ms_cache_member_apply(ms_cache_t *c, const char *room, size_t room_len,
                          const char *conn, size_t conn_len, uint64_t version,
                          bool present) MS_MUST_CHECK;

/*
 * A membership a resync load found (version 0), applied unless the cache
 * holds a change newer than the load's sequence seq. Same returns.
 */
int ms_cache_member_load(ms_cache_t *c, const char *room, size_t room_len,
                         const char *conn, size_t conn_len,
                         uint64_t seq) MS_MUST_CHECK;

/* A connection closed at version: it leaves every room it was in. */
int ms_cache_member_drop_conn(ms_cache_t *c, const char *conn, size_t len,
                              uint64_t version) MS_MUST_CHECK;

/*
 * Walks the connections in a room in byte order after `after` (as
 * ms_cache_list() does), with each one's metadata entry: e->present is
 * false when it has none. Same returns as ms_cache_list().
 */
int ms_cache_members(ms_cache_t *c, const char *room, size_t room_len,
                     const char *after, size_t after_len, ms_cache_list_cb fn,
                     void *arg) MS_MUST_CHECK;

/*
 * Calls fn with each room that has members in the cache, in byte order
 * (room valid during the call; fn must not call into the cache).
 */
typedef void (*ms_cache_room_cb)(void *arg, const char *room, size_t len);
int ms_cache_member_rooms(ms_cache_t *c, ms_cache_room_cb fn,
                          void *arg) MS_MUST_CHECK;

#endif
