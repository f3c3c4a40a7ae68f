/*
 * cache.c - the SQLite cache of record (see cache.h): the schema, the
 * prepared statements, and the version guard every change goes through.
 *
 * Entry points: ms_cache_open/close, get, apply, begin/commit,
 * resync_begin/end, count, list, meta_get/set. Loop thread only: the
 * connection is opened without SQLite's mutexes.
 *
 * ms_cache_get copies the row into a buffer the cache owns and resets its
 * statement at once, because a SELECT left unreset would hold a WAL read
 * snapshot open between calls. Its pointers stay valid until the next
 * call on the cache; json is also NUL-terminated.
 *
 * Failures of SQLite after open are logged here, once, with the operation
 * and SQLite's message, and returned as MS_EINTERNAL. Invalid arguments
 * (unknown kind or mode, a version or value above 2^63-1, only one of
 * json/mp) return MS_EINVAL without logging.
 */
#define _GNU_SOURCE /* qsort_r */
#include "cache.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "index.h"
#include "log.h"
#include "value.h"

#define CACHE_SCHEMA_VERSION 2

/* Short: the file is ours alone, and the loop must not stall on it. */
#define CACHE_BUSY_MS 10

/* A change in memory that the file gets at the next flush. */
typedef struct pending_s {
    struct pending_s *next;
    uint64_t version;
    unsigned kind;
    size_t id_len;
    size_t json_len; /* 0 and no bytes for a delete (json NULL) */
    size_t mp_len;
    bool deleted;
    char data[]; /* id, json, mp */
} pending_t;

/* An open transaction commits once it holds this many writes. */
#define CACHE_GROUP_ROWS 8192

/* A fill or write-behind step stops after this many bytes of values. */
#define STEP_BYTES (256 * 1024)

/* Rows the index reads from the table when the cache opens. */
#define CACHE_FILL_OPEN 4096

/* While the index fills, a count scans the table at most this often. */
#define COUNT_EVERY_MS 1000

/* The meta key holding the boot the file was last opened in. */
#define CACHE_BOOT_KEY "boot"

/* The meta key holding the resync generation; meta_set refuses it. */
#define CACHE_GEN_KEY "resync_generation"

/* schema/cache.sql, compiled in: it explains each table and column. */
extern const char ms_schema_cache[];

enum {
    ST_GET,
    ST_APPLY_NEWER,
    ST_APPLY_NOT_OLDER,
    ST_APPLY_ALWAYS,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_RESYNC_END,
    ST_RESYNC_TOMBS,
    ST_COUNT_LIVE,
    ST_META_GET,
    ST_META_SET,
    ST_MAX_VERSION,
    ST_CLEAR,
    ST_LIST,
    ST_MEMBER_NEWER,
    ST_MEMBER_LOAD,
    ST_MEMBER_DROP_CONN,
    ST_MEMBERS,
    ST_MEMBERS_RESYNC_END,
    ST_MEMBERS_CLEAR,
    ST_MEMBER_ROOMS,
    ST_FILL,
    ST_MAX
};

#define MEMBER_SQL(guard)                                                      \
    "INSERT INTO members (room, conn, version, present, gen) "                 \
    "VALUES (?1, ?2, ?3, ?4, ?5) "                                             \
    "ON CONFLICT (room, conn) DO UPDATE SET version = excluded.version, "      \
    "present = excluded.present, gen = excluded.gen" guard

/* The guard is the upsert's WHERE: an ignored change updates no row. */
#define APPLY_SQL(guard)                                                       \
    "INSERT INTO entries (kind, id, version, json, mp, gen) "                  \
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6) "                                         \
    "ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version, "        \
    "json = excluded.json, mp = excluded.mp, gen = excluded.gen" guard

static const char *const stmt_sql[ST_MAX] = {
    [ST_GET] = "SELECT version, json, mp FROM entries "
               "WHERE kind = ?1 AND id = ?2",
    [ST_APPLY_NEWER] = APPLY_SQL(" WHERE excluded.version > entries.version"),
    [ST_APPLY_NOT_OLDER] =
        APPLY_SQL(" WHERE excluded.version >= entries.version"),
    [ST_APPLY_ALWAYS] = APPLY_SQL(""),
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    /* Both return the rows they change, for the index. */
    [ST_RESYNC_END] = "UPDATE entries "
                      "SET version = ?1, json = NULL, mp = NULL, gen = ?2 "
                      "WHERE gen <> ?2 AND version <= ?1 "
                      "AND json IS NOT NULL RETURNING kind, id",
    [ST_RESYNC_TOMBS] = "UPDATE entries SET version = ?1, gen = ?2 "
                        "WHERE gen <> ?2 AND version < ?1 AND json IS NULL "
                        "RETURNING kind, id",
    [ST_COUNT_LIVE] = "SELECT count(*) FROM entries "
                      "WHERE kind = ?1 AND json IS NOT NULL",
    [ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [ST_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    [ST_MAX_VERSION] = "SELECT coalesce(max(version), 0) FROM entries",
    [ST_CLEAR] = "DELETE FROM entries",
    /* Ids are compared as bytes (BINARY), and every id sorts after ''. */
    [ST_LIST] = "SELECT version, json, mp, id FROM entries "
                "WHERE kind = ?1 AND id > ?2 AND json IS NOT NULL "
                "ORDER BY id",
    [ST_MEMBER_NEWER] = MEMBER_SQL(" WHERE excluded.version > members.version"),
    /* A load: version 0, unless a change newer than its sequence (?6). */
    [ST_MEMBER_LOAD] = MEMBER_SQL(" WHERE members.version <= ?6"),
    [ST_MEMBER_DROP_CONN] = "UPDATE members SET present = 0, version = ?2, "
                            "gen = ?3 WHERE conn = ?1 AND version < ?2",
    /* A member's metadata comes with it: nil when it has none. */
    [ST_MEMBERS] = "SELECT e.version, e.json, e.mp, m.conn "
                   "FROM members m LEFT JOIN entries e "
                   "ON e.kind = 0 AND e.id = m.conn "
                   "WHERE m.room = ?1 AND m.present = 1 AND m.conn > ?2 "
                   "ORDER BY m.conn",
    [ST_MEMBERS_RESYNC_END] = "UPDATE members SET present = 0, version = ?1, "
                              "gen = ?2 WHERE gen <> ?2 AND version <= ?1",
    [ST_MEMBERS_CLEAR] = "DELETE FROM members",
    [ST_MEMBER_ROOMS] = "SELECT DISTINCT room FROM members "
                        "WHERE present = 1 ORDER BY room",
    /* The index's refill: the next rows in key order after (?1, ?2). */
    [ST_FILL] = "SELECT kind, id, version, mp FROM entries "
                "WHERE (kind, id) > (?1, ?2) ORDER BY kind, id LIMIT ?3",
};

struct ms_cache_s {
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_MAX];
    uint64_t gen; /* the current resync generation, as stored in meta */
    int lock_fd;  /* holds the flock on "<path>-lock", or -1 */
    bool failing; /* an operation failed and none has worked since */
    sqlite3_int64 changes_seen; /* total changes when that was known */
    char *buf; /* ms_cache_get_json's copy of the last row it found */
    size_t buf_cap;
    bool in_txn;               /* a transaction is open (see ms_cache_flush) */
    bool lost;                 /* one was lost: the next flush reports it */
    unsigned depth;            /* ms_cache_begin calls not yet committed */
    unsigned txn_rows;         /* writes made in the open transaction */
    ms_index_t *index;         /* the entries table in memory (see cache.h) */
    bool index_full;           /* the index holds every row of the table */
    struct pending_s *pending; /* ms_cache_apply_soon's rows, oldest first */
    struct pending_s **pending_tail;
    bool mem_load; /* a resync going to memory only (see cache.h) */
    bool ahead;    /* memory holds rows the file has yet to get */
    int fill_kind; /* the refill's position: the last key it read */
    char *fill_id;
    size_t fill_len;
    int64_t counted[2];    /* the file's last count per kind, while filling */
    int64_t counted_at[2]; /* when, in ms of CLOCK_MONOTONIC; 0: never */
};


static bool kind_valid(ms_kind_t kind)
{
    return kind == MS_KIND_CONN || kind == MS_KIND_ROOM;
}


/* SQLite integers are signed; Redis sequences never pass INT64_MAX. */
static bool u64_fits(uint64_t v)
{
    return v <= (uint64_t)INT64_MAX;
}


/*
 * The index starts empty and fills from the table (ms_cache_fill): when
 * the cache opens, and after a transaction is lost, so that memory holds
 * what the file holds.
 */
static void index_reset(ms_cache_t *c)
{
    ms_index_clear(c->index);
    c->index_full = false;
    c->fill_kind = -1;
    c->fill_len = 0;
}


/*
 * Memory goes back to the file, unless it is ahead of it: then it is the
 * only complete copy, and all of it is written to the file again.
 */
static void pending_drop(ms_cache_t *c);

static void txn_lost(ms_cache_t *c)
{
    c->in_txn = false;
    c->txn_rows = 0;
    c->lost = true;
    pending_drop(c);
    if (c->ahead)
        ms_index_dirty_all(c->index);
    else
        index_reset(c);
}


/*
 * Logs a failed operation. A full disk fails every write until space
 * returns: only the first failure of a run is an error, the rest debug.
 */
static int cache_fail(ms_cache_t *c, const char *op)
{
    ms_log(c->failing ? MS_LOG_DEBUG : MS_LOG_ERROR, "cache operation failed",
           "op=%s err=\"%s\"", op, sqlite3_errmsg(c->db));
    c->failing = true;
    c->changes_seen = sqlite3_total_changes64(c->db);

    /* SQLite rolls a transaction back itself on some errors (SQLITE_FULL). */
    if (c->in_txn && sqlite3_get_autocommit(c->db))
        txn_lost(c);
    return MS_EINTERNAL;
}


/* A write outside a transaction, or a commit, worked. */
static void cache_worked(ms_cache_t *c)
{
    /* Only a write that changed rows proves the file takes writes. */
    if (!c->failing || !sqlite3_get_autocommit(c->db) ||
        sqlite3_total_changes64(c->db) == c->changes_seen)
        return;
    c->failing = false;
    ms_log_info("cache operations work again", NULL);
}


/*
 * Steps s once and resets it; returns the step's result code. The error
 * message stays readable through sqlite3_errmsg after the reset.
 */
static int stmt_run(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);

    sqlite3_reset(s);
    return rc;
}


static int stmt_exec(ms_cache_t *c, int st, const char *op)
{
    if (st == ST_BEGIN)
        c->changes_seen = sqlite3_total_changes64(c->db);
    if (stmt_run(c->stmt[st]) != SQLITE_DONE)
        return cache_fail(c, op);
    if (st != ST_ROLLBACK)
        cache_worked(c);
    return 0;
}


static int load_gen(ms_cache_t *c);

/* Every write runs in a transaction, opened by the first one. */
static int txn_open(ms_cache_t *c)
{
    if (c->in_txn)
        return 0;
    if (stmt_exec(c, ST_BEGIN, "begin") < 0)
        return MS_EINTERNAL;
    c->in_txn = true;
    c->txn_rows = 0;
    return 0;
}


/*
 * Gives up the open transaction after a failure: rolled back unless
 * SQLite did so itself, so that later calls do not run inside it, and
 * lost (txn_lost). The generation is read again in case a resync_begin
 * was part of it.
 */
static void txn_abandon(ms_cache_t *c)
{
    if (!sqlite3_get_autocommit(c->db))
        stmt_exec(c, ST_ROLLBACK, "rollback");
    txn_lost(c);
    if (load_gen(c) != SQLITE_OK)
        cache_fail(c, "load generation");
    ms_index_set_gen(c->index, (uint32_t)c->gen);
}


static int txn_commit(ms_cache_t *c)
{
    if (stmt_exec(c, ST_COMMIT, "commit") == 0) {
        c->in_txn = false;
        c->txn_rows = 0;
        return 0;
    }

    txn_abandon(c);
    return MS_EINTERNAL;
}


/*
 * After a write outside begin/commit. While the file fails, each write
 * is committed at once, so that the failure shows where it happens and
 * memory goes back to what the file holds straight away.
 */
static int txn_settle(ms_cache_t *c)
{
    /* After a loss, nothing commits before the flush has reported it. */
    if (!c->failing || c->depth > 0 || !c->in_txn || c->lost)
        return 0;
    return txn_commit(c);
}


static int bind_key(sqlite3_stmt *s, ms_kind_t kind, const char *id,
                    size_t id_len)
{
    int rc = sqlite3_bind_int(s, 1, (int)kind);

    /* A NULL pointer would bind SQL NULL, not an empty id. */
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text64(s, 2, id_len > 0 ? id : "", id_len,
                                 SQLITE_STATIC, SQLITE_UTF8);
    return rc;
}


static int bind_text(sqlite3_stmt *s, int i, const char *t, size_t len)
{
    /* A NULL pointer would bind SQL NULL, not an empty string. */
    return sqlite3_bind_text64(s, i, len > 0 ? t : "", len, SQLITE_STATIC,
                               SQLITE_UTF8);
}


/* Reads a meta value: SQLITE_ROW, SQLITE_DONE when unset, or an error. */
static int meta_read(ms_cache_t *c, const char *key, uint64_t *value)
{
    sqlite3_stmt *s = c->stmt[ST_META_GET];
    int rc = sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);

    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *value = (uint64_t)sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return rc;
}


static int meta_write(ms_cache_t *c, const char *key, uint64_t value,
                      const char *op)
{
    sqlite3_stmt *s = c->stmt[ST_META_SET];

    if (sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(s, 2, (sqlite3_int64)value) != SQLITE_OK)
        return cache_fail(c, op);
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    c->txn_rows++;
    if (stmt_exec(c, ST_META_SET, op) < 0)
        return MS_EINTERNAL;
    return txn_settle(c);
}


/*
 * A file that is not a database, or a damaged one, is MS_EINVAL: the
 * caller may move it aside and start afresh. Anything else (permissions,
 * a missing directory, a full disk) is MS_EINTERNAL.
 */
static int open_fail(ms_cache_t *c, const char *path, const char *step,
                     ms_error_t *err)
{
    int rc = sqlite3_errcode(c->db);
    bool unusable = rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT;

    return ms_error_set(err, unusable ? MS_EINVAL : MS_EINTERNAL,
                        "cache file %s: %s: %s", path, step,
                        sqlite3_errmsg(c->db));
}


/*
 * One daemon per cache file: a second one on the same file would apply
 * the same changes twice over and fight over resync generations. The
 * lock is an flock on "<path>-lock", released when the process ends.
 */
static int lock_file(ms_cache_t *c, const char *path, ms_error_t *err)
{
    size_t n = strlen(path);
    char *lock;

    if (strcmp(path, ":memory:") == 0)
        return 0;
    lock = ms_malloc(n + 6);
    memcpy(lock, path, n);
    memcpy(lock + n, "-lock", 6);
    c->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(lock);
    if (c->lock_fd < 0)
        return ms_error_set(err, MS_EINTERNAL, "cache file %s: lock: %s", path,
                            strerror(errno));
    if (flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return ms_error_set(err, MS_EINTERNAL,
                            "cache file %s is in use by another meshsyncd",
                            path);
    return 0;
}


/*
 * WAL lets a reader (the sqlite3 tool, say) look while the daemon
 * writes; NORMAL syncs only at checkpoints, which in WAL mode can lose
 * the last commits on power loss but never corrupts, and a resync
 * rebuilds anything lost. The first read of the file happens here, so
 * a file that is not a database is caught here.
 */
static int open_pragmas(ms_cache_t *c, const char *path, ms_error_t *err)
{
    sqlite3_stmt *s;
    int rc;

    if (sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &s, NULL) !=
        SQLITE_OK)
        return open_fail(c, path, "journal_mode", err);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *mode = (const char *)sqlite3_column_text(s, 0);

        if (mode != NULL && strcmp(mode, "wal") != 0 &&
            strcmp(mode, "memory") != 0)
            ms_log_warn("cache not in WAL mode", "mode=%s", mode);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW)
        return open_fail(c, path, "journal_mode", err);

    /*
     * Reads come from memory (index.h), so SQLite's page cache serves
     * writes alone, which go in key order or a few at a time: 512 KiB
     * instead of the default 2 MB keeps the daemon smaller.
     */
    if (sqlite3_exec(c->db, "PRAGMA cache_size=-512", NULL, NULL, NULL) !=
        SQLITE_OK)
        return open_fail(c, path, "cache_size", err);

    /* No fsync: see open_boot_check(). */
    if (sqlite3_exec(c->db, "PRAGMA synchronous=OFF", NULL, NULL, NULL) !=
        SQLITE_OK)
        return open_fail(c, path, "synchronous", err);
    return 0;
}


static int read_user_version(ms_cache_t *c, int *version)
{
    sqlite3_stmt *s;
    int rc;

    rc = sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int(s, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(s);
    return rc;
}


/* One transaction, so two daemons on one file cannot interleave here. */
static int open_schema(ms_cache_t *c, const char *path, ms_error_t *err)
{
    int version = 0;

    if (sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return open_fail(c, path, "begin", err);

    if (read_user_version(c, &version) != SQLITE_OK) {
        open_fail(c, path, "user_version", err);
        goto rollback;
    }
    if (version != 0 && version != CACHE_SCHEMA_VERSION) {
        ms_error_set(err, MS_EINVAL,
                     "cache file %s: schema version %d, expected %d", path,
                     version, CACHE_SCHEMA_VERSION);
        goto rollback;
    }

    if (sqlite3_exec(c->db, ms_schema_cache, NULL, NULL, NULL) != SQLITE_OK) {
        open_fail(c, path, "schema", err);
        goto rollback;
    }
    if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        open_fail(c, path, "commit", err);
        goto rollback;
    }
    return 0;

rollback:
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    return MS_EINTERNAL;
}


static int open_statements(ms_cache_t *c, const char *path, ms_error_t *err)
{
    for (int i = 0; i < ST_MAX; i++) {
        if (sqlite3_prepare_v3(c->db, stmt_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &c->stmt[i],
                               NULL) != SQLITE_OK)
            return open_fail(c, path, "prepare", err);
    }
    return 0;
}


/* The machine's boot: 60 bits of the kernel's boot_id, or 0 if unknown. */
static uint64_t boot_mark(void)
{
    char buf[64], hex[16];
    size_t n = 0;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");

    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof(buf), f) == NULL)
        buf[0] = '\0';
    fclose(f);
    for (const char *p = buf; *p != '\0' && n < 15; p++) {
        if (isxdigit((unsigned char)*p))
            hex[n++] = *p;
    }
    hex[n] = '\0';
    return strtoull(hex, NULL, 16);
}


/*
 * The file is written without fsync (synchronous=OFF), so that commits
 * and checkpoints never wait for the disk: a crash of the daemon loses
 * nothing the kernel holds, but a crash of the machine may leave any mix
 * of old and new pages. A file last opened in an earlier boot is
 * therefore emptied, and the mirror loads everything from Redis again
 * (into memory first, which is quick: see ms_cache_resync_begin).
 */
static int open_boot_check(ms_cache_t *c, const char *path, ms_error_t *err)
{
    uint64_t boot = boot_mark();
    uint64_t was = 0;
    int rc = meta_read(c, CACHE_BOOT_KEY, &was);

    if (rc == SQLITE_ROW && was == boot)
        return 0;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return open_fail(c, path, "read boot", err);
    if (rc == SQLITE_ROW) {
        ms_log_info("cache file from an earlier boot, emptied", NULL);
        if (sqlite3_exec(c->db,
                         "DELETE FROM entries; DELETE FROM members; "
                         "DELETE FROM meta",
                         NULL, NULL, NULL) != SQLITE_OK)
            return open_fail(c, path, "empty", err);
    }
    if (meta_write(c, CACHE_BOOT_KEY, boot, "write boot") < 0 ||
        ms_cache_flush(c) < 0)
        return open_fail(c, path, "write boot", err);
    return 0;
}


/* The generation is absent until the first resync begins: 0. */
static int load_gen(ms_cache_t *c)
{
    int rc = meta_read(c, CACHE_GEN_KEY, &c->gen);

    if (rc == SQLITE_DONE)
        c->gen = 0;
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}


int ms_cache_open(const char *path, ms_cache_t **out, ms_error_t *err)
{
    ms_cache_t *c = ms_calloc(1, sizeof(*c));
    int flags =
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;

    *out = NULL;
    c->lock_fd = -1;
    c->pending_tail = &c->pending;
    if (lock_file(c, path, err) < 0)
        goto failed;
    if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK) {
        open_fail(c, path, "open", err);
        goto failed;
    }
    sqlite3_busy_timeout(c->db, CACHE_BUSY_MS);

    if (open_pragmas(c, path, err) < 0 || open_schema(c, path, err) < 0 ||
        open_statements(c, path, err) < 0 || open_boot_check(c, path, err) < 0)
        goto failed;
    if (load_gen(c) != SQLITE_OK) {
        open_fail(c, path, "load generation", err);
        goto failed;
    }

    /* A small cache is in memory at once; a large one fills as it serves. */
    c->index = ms_index_new();
    ms_index_set_gen(c->index, (uint32_t)c->gen);
    index_reset(c);
    if (ms_cache_fill(c, CACHE_FILL_OPEN) < 0) {
        open_fail(c, path, "read entries", err);
        goto failed;
    }

    *out = c;
    return 0;

failed:
    ms_cache_close(c);
    return err != NULL && err->code == MS_EINVAL ? MS_EINVAL : MS_EINTERNAL;
}


void ms_cache_close(ms_cache_t *c)
{
    if (c == NULL)
        return;

    /* A failure is logged; what it loses a restart loads again. */
    if (c->db != NULL && c->stmt[ST_COMMIT] != NULL && ms_cache_flush(c) < 0)
        ms_log_warn("cache file lost its last changes at close", NULL);
    for (int i = 0; i < ST_MAX; i++)
        sqlite3_finalize(c->stmt[i]);

    /* Every statement is finalized, so this cannot report SQLITE_BUSY. */
    sqlite3_close(c->db);
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    free(c->buf);
    ms_index_free(c->index);
    free(c->fill_id);
    free(c);
}


/* Copies the current row of the get statement into c->buf. */
static void entry_copy(ms_cache_t *c, sqlite3_stmt *s, ms_cache_entry_t *e)
{
    const unsigned char *json;
    const void *mp;
    size_t need;

    e->version = (uint64_t)sqlite3_column_int64(s, 0);
    if (sqlite3_column_type(s, 1) == SQLITE_NULL)
        return;

    json = sqlite3_column_text(s, 1);
    if (json == NULL)
        ms_oom();
    e->json_len = (size_t)sqlite3_column_bytes(s, 1);

    /* A zero-length blob comes back as NULL. */
    mp = sqlite3_column_blob(s, 2);
    e->mp_len = mp != NULL ? (size_t)sqlite3_column_bytes(s, 2) : 0;

    need = e->json_len + 1 + e->mp_len;
    if (need > c->buf_cap) {
        c->buf_cap = need > 2 * c->buf_cap ? need : 2 * c->buf_cap;
        c->buf = ms_realloc(c->buf, c->buf_cap);
    }
    memcpy(c->buf, json, e->json_len);
    c->buf[e->json_len] = '\0';
    if (e->mp_len > 0)
        memcpy(c->buf + e->json_len + 1, mp, e->mp_len);

    e->present = true;
    e->json = c->buf;
    e->mp = c->buf + e->json_len + 1;
}


int ms_cache_get(ms_cache_t *c, ms_kind_t kind, const char *id, size_t id_len,
                 ms_cache_entry_t *e)
{
    ms_index_view_t v;
    int rc;

    memset(e, 0, sizeof(*e));
    if (!kind_valid(kind))
        return MS_EINVAL;

    /* Until the refill is done, a row may be in the table alone. */
    if (!ms_index_find(c->index, kind, id, id_len, &v)) {
        if (c->index_full)
            return 0;
        rc = ms_cache_get_json(c, kind, id, id_len, e);
        if (rc < 0 || (!e->present && e->version == 0))
            return rc;
        ms_index_put(c->index, kind, id, id_len, e->version, e->mp, e->mp_len,
                     0);
        memset(e, 0, sizeof(*e));
        if (!ms_index_find(c->index, kind, id, id_len, &v))
            return 0;
    }
    e->version = v.version;
    e->present = v.present;
    e->mp = v.mp;
    e->mp_len = v.mp_len;
    return 0;
}


/*
 * While the file lacks a row (see ms_cache_apply_soon and
 * ms_cache_persist_new), its JSON is memory's value as meshsync writes JSON
 * (for a value written by someone else, the text may differ from Redis's in
 * form: a merge based on it then costs one more round trip, write.lua's check
 * answering with Redis's text).
 */
static int json_from_memory(ms_cache_t *c, const ms_index_view_t *v,
                            ms_cache_entry_t *e)
{
    ms_error_t err;
    char *json;
    size_t len;

    e->version = v->version;
    if (!v->present)
        return 0;
    if (ms_value_msgpack_to_json(v->mp, v->mp_len, NULL, &json, &len, &err) < 0)
        return MS_EINTERNAL;
    if (len + 1 + v->mp_len > c->buf_cap) {
        c->buf_cap = len + 1 + v->mp_len;
        c->buf = ms_realloc(c->buf, c->buf_cap);
    }
    memcpy(c->buf, json, len);
    c->buf[len] = '\0';
    memcpy(c->buf + len + 1, v->mp, v->mp_len);
    free(json);
    e->present = true;
    e->json = c->buf;
    e->json_len = len;
    e->mp = c->buf + len + 1;
    e->mp_len = v->mp_len;
    return 0;
}


int ms_cache_get_json(ms_cache_t *c, ms_kind_t kind, const char *id,
                      size_t id_len, ms_cache_entry_t *e)
{
    sqlite3_stmt *s = c->stmt[ST_GET];
    ms_index_view_t v;
    int rc;

    memset(e, 0, sizeof(*e));
    if (!kind_valid(kind))
        return MS_EINVAL;
    if (ms_index_find(c->index, kind, id, id_len, &v) && v.dirty)
        return json_from_memory(c, &v, e);
    if (bind_key(s, kind, id, id_len) != SQLITE_OK)
        return cache_fail(c, "get");

    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        entry_copy(c, s, e);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return cache_fail(c, "get");
    return 0;
}


static int bind_value(sqlite3_stmt *s, const char *json, size_t json_len,
                      const char *mp, size_t mp_len)
{
    int rc;

    if (json == NULL) {
        rc = sqlite3_bind_null(s, 4);
        return rc == SQLITE_OK ? sqlite3_bind_null(s, 5) : rc;
    }

    rc = sqlite3_bind_text64(s, 4, json, json_len, SQLITE_STATIC, SQLITE_UTF8);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_blob64(s, 5, mp, mp_len, SQLITE_STATIC);
    return rc;
}


/*
 * The version guard, checked in memory first: a change it refuses costs
 * no statement. Returns 1 to apply, 0 when the cache holds a newer
 * version, or MS_EINTERNAL.
 */
static int index_allows(ms_cache_t *c, ms_kind_t kind, const char *id,
                        size_t id_len, uint64_t version, ms_apply_mode_t mode)
{
    ms_cache_entry_t e;
    ms_index_view_t v;

    /* Until the index is full, an entry may be in the file alone. */
    if (!c->index_full && !ms_index_find(c->index, kind, id, id_len, &v) &&
        ms_cache_get(c, kind, id, id_len, &e) < 0)
        return MS_EINTERNAL;
    if (mode == MS_APPLY_ALWAYS ||
        !ms_index_find(c->index, kind, id, id_len, &v))
        return 1;
    if (mode == MS_APPLY_NEWER)
        return version > v.version;
    return version >= v.version;
}


/*
 * Runs the apply statement of a mode (its guard against the file's row),
 * in the open transaction: 1 when it changed the row, 0 when the guard
 * refused, MS_EINTERNAL.
 */
static int file_apply(ms_cache_t *c, ms_kind_t kind, const char *id,
                      size_t id_len, uint64_t version, const char *json,
                      size_t json_len, const char *mp, size_t mp_len,
                      ms_apply_mode_t mode)
{
    sqlite3_stmt *s = c->stmt[mode == MS_APPLY_NEWER       ? ST_APPLY_NEWER
                              : mode == MS_APPLY_NOT_OLDER ? ST_APPLY_NOT_OLDER
                                                           : ST_APPLY_ALWAYS];
    int rc = bind_key(s, kind, id, id_len);

    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 3, (sqlite3_int64)version);
    if (rc == SQLITE_OK)
        rc = bind_value(s, json, json_len, mp, mp_len);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 6, (sqlite3_int64)c->gen);
    if (rc != SQLITE_OK)
        return cache_fail(c, "apply");
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    if (stmt_run(s) != SQLITE_DONE)
        return cache_fail(c, "apply");
    c->txn_rows++;
    return sqlite3_changes(c->db) > 0 ? 1 : 0;
}


static bool apply_args_valid(ms_kind_t kind, uint64_t version, const char *json,
                             const char *mp, ms_apply_mode_t mode)
{
    return kind_valid(kind) && u64_fits(version) &&
           (json == NULL) == (mp == NULL) &&
           (mode == MS_APPLY_NEWER || mode == MS_APPLY_NOT_OLDER ||
            mode == MS_APPLY_ALWAYS);
}


int ms_cache_apply(ms_cache_t *c, ms_kind_t kind, const char *id, size_t id_len,
                   uint64_t version, const char *json, size_t json_len,
                   const char *mp, size_t mp_len, ms_apply_mode_t mode)
{
    int rc;

    if (!apply_args_valid(kind, version, json, mp, mode))
        return MS_EINVAL;
    rc = index_allows(c, kind, id, id_len, version, mode);
    if (rc <= 0)
        return rc;

    /*
     * A load goes to memory; the file gets what changed in key order
     * after. What the file already holds is only marked as seen.
     */
    if (c->mem_load && mode == MS_APPLY_ALWAYS) {
        ms_index_put(c->index, kind, id, id_len, version, mp, mp_len,
                     MS_INDEX_DIRTY | MS_INDEX_KEEP_SAME);
        return 1;
    }
    rc = file_apply(c, kind, id, id_len, version, json, json_len, mp, mp_len,
                    mode);
    if (rc <= 0)
        return rc;

    /* While the file fails, memory takes only what the file took. */
    if (txn_settle(c) < 0)
        return MS_EINTERNAL;
    ms_index_put(c->index, kind, id, id_len, version, mp, mp_len, 0);
    return 1;
}


int ms_cache_apply_soon(ms_cache_t *c, ms_kind_t kind, const char *id,
                        size_t id_len, uint64_t version, const char *json,
                        size_t json_len, const char *mp, size_t mp_len)
{
    pending_t *p;
    int rc;

    /* While the file fails, each change must see whether it took. */
    if (c->failing || c->depth > 0)
        return ms_cache_apply(c, kind, id, id_len, version, json, json_len, mp,
                              mp_len, MS_APPLY_NEWER);
    if (!apply_args_valid(kind, version, json, mp, MS_APPLY_NEWER))
        return MS_EINVAL;
    rc = index_allows(c, kind, id, id_len, version, MS_APPLY_NEWER);
    if (rc <= 0)
        return rc;

    p = ms_malloc(sizeof(*p) + id_len + json_len + mp_len);
    p->next = NULL;
    p->version = version;
    p->kind = kind;
    p->id_len = id_len;
    p->deleted = json == NULL;
    p->json_len = json != NULL ? json_len : 0;
    p->mp_len = json != NULL ? mp_len : 0;
    memcpy(p->data, id, id_len);
    if (json != NULL) {
        memcpy(p->data + id_len, json, json_len);
        memcpy(p->data + id_len + json_len, mp, mp_len);
    }
    *c->pending_tail = p;
    c->pending_tail = &p->next;
    ms_index_put(c->index, kind, id, id_len, version, mp, mp_len,
                 MS_INDEX_DIRTY);
    return 1;
}


static void pending_drop(ms_cache_t *c)
{
    while (c->pending != NULL) {
        pending_t *p = c->pending;

        c->pending = p->next;
        free(p);
    }
    c->pending_tail = &c->pending;
}


/*
 * Writes the pending changes to the file, oldest first; one that memory
 * has since replaced (by a later change, or one written at once) is
 * skipped. On failure the rest is dropped with it: the caller loses the
 * transaction, which takes memory back to the file.
 */
static int pending_write(ms_cache_t *c)
{
    int rc = 0;

    while (c->pending != NULL && rc >= 0) {
        pending_t *p = c->pending;
        const char *json = p->deleted ? NULL : p->data + p->id_len;
        ms_index_view_t v;

        c->pending = p->next;
        if (ms_index_find(c->index, p->kind, p->data, p->id_len, &v) &&
            v.dirty && v.version == p->version) {
            rc = file_apply(c, (ms_kind_t)p->kind, p->data, p->id_len,
                            p->version, json, p->json_len,
                            json != NULL ? json + p->json_len : NULL, p->mp_len,
                            MS_APPLY_NEWER);
            if (rc >= 0 && !c->ahead)
                ms_index_clean(c->index, p->kind, p->data, p->id_len);
        }
        free(p);
    }
    pending_drop(c);
    if (rc >= 0)
        return 0;

    /* Memory has what the file could not take: lose the transaction. */
    txn_abandon(c);
    return MS_EINTERNAL;
}

int ms_cache_begin(ms_cache_t *c)
{
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    c->depth++;
    return 0;
}


int ms_cache_commit(ms_cache_t *c)
{
    if (c->depth > 0)
        c->depth--;
    if (c->depth > 0 || !c->in_txn ||
        (c->txn_rows < CACHE_GROUP_ROWS && !c->failing))
        return 0;
    return txn_commit(c);
}


/*
 * A transaction lost anywhere (a list that wrote the turn's changes
 * first, say) is reported here, once, so that the caller reloads; and
 * what was written since is not committed either: a position saved
 * after the loss would claim changes the file does not have.
 */
int ms_cache_flush(ms_cache_t *c)
{
    if (c->depth > 0)
        return 0;
    if (!c->lost && pending_write(c) == 0 && (!c->in_txn || txn_commit(c) == 0))
        return 0;

    if (c->in_txn || c->pending != NULL)
        txn_abandon(c);
    c->lost = false;
    return MS_EINTERNAL;
}


bool ms_cache_unflushed(const ms_cache_t *c)
{
    return c->in_txn || c->pending != NULL || c->lost;
}


int ms_cache_resync_begin(ms_cache_t *c)
{
    uint64_t next = c->gen + 1;

    if (meta_write(c, CACHE_GEN_KEY, next, "resync_begin") < 0)
        return MS_EINTERNAL;
    c->gen = next;
    ms_index_set_gen(c->index, (uint32_t)next);

    /*
     * Memory holds all the file: the load can go to memory alone. Not
     * while the file fails, when memory keeps to what the file took,
     * unless there is nothing to keep (an empty file).
     */
    c->mem_load =
        c->index_full && (!c->failing || ms_index_count(c->index) == 0);
    if (c->mem_load)
        c->ahead = true;
    return 0;
}


/*
 * Runs a bound resync statement, which returns the (kind, id) of each row
 * it made a tombstone of version seq, and makes the same change in the
 * index. Returns the number of rows, or MS_EINTERNAL.
 */
static int tombstone_rows(ms_cache_t *c, sqlite3_stmt *s, uint64_t seq)
{
    int n = 0;
    int rc;

    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 1);

        if (id == NULL)
            ms_oom();
        ms_index_put(c->index, (unsigned)sqlite3_column_int(s, 0), id,
                     (size_t)sqlite3_column_bytes(s, 1), seq, NULL, 0, 0);
        n++;
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return cache_fail(c, "resync_end");
    return n;
}


/*
 * The end of a load that wrote to the file: its rows of another
 * generation become tombstones there (and in memory). Returns how many
 * had a value, or MS_EINTERNAL.
 */
static int file_sweep(ms_cache_t *c, uint64_t seq)
{
    sqlite3_stmt *s = c->stmt[ST_RESYNC_END];
    int gone;

    if (sqlite3_bind_int64(s, 1, (sqlite3_int64)seq) != SQLITE_OK ||
        sqlite3_bind_int64(s, 2, (sqlite3_int64)c->gen) != SQLITE_OK)
        return cache_fail(c, "resync_end");

    /* The tombstone takes version seq: the entry was gone by then. */
    gone = tombstone_rows(c, s, seq);
    if (gone < 0)
        return gone;
    c->txn_rows += (unsigned)gone + 1;

    /*
     * A tombstone held from before is as old as the delete this cache
     * saw, but the entry may have come back and gone again meanwhile:
     * all the load knows is that it was absent as of seq.
     */
    s = c->stmt[ST_RESYNC_TOMBS];
    if (sqlite3_bind_int64(s, 1, (sqlite3_int64)seq) != SQLITE_OK ||
        sqlite3_bind_int64(s, 2, (sqlite3_int64)c->gen) != SQLITE_OK ||
        tombstone_rows(c, s, seq) < 0)
        return cache_fail(c, "resync_end");
    return gone;
}


int ms_cache_resync_end(ms_cache_t *c, uint64_t seq)
{
    sqlite3_stmt *s = c->stmt[ST_MEMBERS_RESYNC_END];
    int gone = 0;

    if (!u64_fits(seq))
        return MS_EINVAL;

    /* Its statements compare versions in the file: it must be current. */
    if (pending_write(c) < 0 || txn_open(c) < 0)
        return MS_EINTERNAL;
    if (!c->mem_load)
        gone = file_sweep(c, seq);
    if (gone < 0)
        return gone;

    /*
     * A load into memory left the file as it was: what it did not see is
     * swept in memory, and the file gets those tombstones with the rest
     * of what changed (ms_cache_persist_new).
     */
    c->mem_load = false;
    if (c->ahead)
        gone += (int)ms_index_sweep(c->index, seq);

    /* Memberships the load did not see have ended, as entries have. */
    if (sqlite3_bind_int64(s, 1, (sqlite3_int64)seq) != SQLITE_OK ||
        sqlite3_bind_int64(s, 2, (sqlite3_int64)c->gen) != SQLITE_OK ||
        stmt_run(s) != SQLITE_DONE)
        return cache_fail(c, "resync_end");
    return txn_settle(c) < 0 ? MS_EINTERNAL : gone;
}


/* Remembers the last key the refill read, to go on after it. */
static void fill_moved(ms_cache_t *c, sqlite3_stmt *s, const char *id,
                       size_t len)
{
    c->fill_kind = sqlite3_column_int(s, 0);
    free(c->fill_id);
    c->fill_id = ms_strndup(id, len);
    c->fill_len = len;
}


int ms_cache_fill(ms_cache_t *c, unsigned rows)
{
    sqlite3_stmt *s = c->stmt[ST_FILL];
    size_t bytes = 0;
    bool cut = false;
    unsigned n = 0;
    int rc;

    if (c->index_full)
        return 1;
    if (sqlite3_bind_int(s, 1, c->fill_kind) != SQLITE_OK ||
        bind_text(s, 2, c->fill_id, c->fill_len) != SQLITE_OK ||
        sqlite3_bind_int(s, 3, (int)rows) != SQLITE_OK)
        return cache_fail(c, "fill");

    /* Only rows the index lacks: what it holds is at least as new. */
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 1);
        size_t len = (size_t)sqlite3_column_bytes(s, 1);
        const void *mp = sqlite3_column_blob(s, 3);

        if (id == NULL)
            ms_oom();
        ms_index_put(c->index, (unsigned)sqlite3_column_int(s, 0), id, len,
                     (uint64_t)sqlite3_column_int64(s, 2), mp,
                     (size_t)sqlite3_column_bytes(s, 3), MS_INDEX_ONLY_NEW);
        bytes += (size_t)sqlite3_column_bytes(s, 3);

        /* The step ends after `rows` rows, or sooner for large values. */
        if (++n == rows || bytes >= STEP_BYTES) {
            fill_moved(c, s, id, len);
            cut = true;
            break;
        }
    }
    sqlite3_reset(s);
    if (!cut && rc != SQLITE_DONE)
        return cache_fail(c, "fill");
    if (!cut)
        c->index_full = true;
    return c->index_full ? 1 : 0;
}


/*
 * The keys of the rows memory holds and the file lacks, copied so that
 * they can be sorted on another thread: each record is the kind, then
 * the id's length (4 bytes) and bytes; order[] lists record offsets.
 */
struct ms_cache_persist_s {
    char *keys;
    size_t len;
    size_t cap;
    uint32_t *order;
    size_t n;
    size_t cap_n;
    size_t next; /* the next record to write */
};


/* First pass: sizes the buffers, so that they are allocated once. */
static void persist_size(void *arg, unsigned kind, const char *id, size_t len)
{
    ms_cache_persist_t *p = arg;

    (void)kind;
    (void)id;
    p->cap += 5 + len;
    p->cap_n++;
}


static void persist_add(void *arg, unsigned kind, const char *id, size_t len)
{
    ms_cache_persist_t *p = arg;
    uint32_t len32 = (uint32_t)len;

    if (p->len + 5 + len > p->cap || p->n == p->cap_n)
        return; /* cannot happen: nothing changes between the passes */
    p->order[p->n++] = (uint32_t)p->len;
    p->keys[p->len] = (char)kind;
    memcpy(p->keys + p->len + 1, &len32, 4);
    memcpy(p->keys + p->len + 5, id, len);
    p->len += 5 + len;
}


static void record_key(const ms_cache_persist_t *p, uint32_t off,
                       unsigned *kind, const char **id, size_t *len)
{
    uint32_t len32;

    *kind = (unsigned char)p->keys[off];
    memcpy(&len32, p->keys + off + 1, 4);
    *id = p->keys + off + 5;
    *len = len32;
}


ms_cache_persist_t *ms_cache_persist_new(ms_cache_t *c)
{
    ms_cache_persist_t *p;

    /* Not while the load still runs; ahead until all is committed. */
    if (c->mem_load || !c->ahead)
        return NULL;
    p = ms_calloc(1, sizeof(*p));
    ms_index_walk_dirty(c->index, persist_size, p);
    p->keys = ms_malloc(p->cap > 0 ? p->cap : 1);
    p->order = ms_malloc(p->cap_n > 0 ? p->cap_n * sizeof(*p->order) : 1);
    ms_index_walk_dirty(c->index, persist_add, p);
    if (p->n == 0 && !c->in_txn) {
        ms_cache_persist_free(p);
        c->ahead = false;
        return NULL;
    }
    return p;
}


/* The file's order: kind, then id bytes (SQLite's BINARY collation). */
static int compare_records(const void *a, const void *b, void *arg)
{
    const ms_cache_persist_t *p = arg;
    unsigned ka, kb;
    const char *ia, *ib;
    size_t la, lb;
    int rc;

    record_key(p, *(const uint32_t *)a, &ka, &ia, &la);
    record_key(p, *(const uint32_t *)b, &kb, &ib, &lb);
    if (ka != kb)
        return ka < kb ? -1 : 1;
    rc = memcmp(ia, ib, la < lb ? la : lb);
    if (rc != 0 || la == lb)
        return rc;
    return la < lb ? -1 : 1;
}


void ms_cache_persist_sort(ms_cache_persist_t *p)
{
    if (p->n == 0)
        return;
    qsort_r(p->order, p->n, sizeof(*p->order), compare_records, p);
}


/* Writes memory's copy of one row, at its version, to the file. */
static int persist_row(ms_cache_t *c, unsigned kind, const char *id, size_t len,
                       const ms_index_view_t *v)
{
    sqlite3_stmt *s = c->stmt[ST_APPLY_ALWAYS];
    char *json = NULL;
    size_t json_len = 0;
    ms_error_t err;
    int rc;

    if (v->present && ms_value_msgpack_to_json(v->mp, v->mp_len, NULL, &json,
                                               &json_len, &err) < 0)
        return MS_EINTERNAL;
    rc = bind_key(s, (ms_kind_t)kind, id, len);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 3, (sqlite3_int64)v->version);
    if (rc == SQLITE_OK)
        rc = bind_value(s, json, json_len, v->mp, v->mp_len);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(s, 6, (sqlite3_int64)c->gen);
    if (rc == SQLITE_OK)
        rc = stmt_run(s) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    free(json);
    if (rc != SQLITE_OK)
        return cache_fail(c, "persist");
    c->txn_rows++;
    return 0;
}


int ms_cache_persist_step(ms_cache_t *c, ms_cache_persist_t *p, unsigned rows)
{
    size_t bytes = 0;
    ms_index_view_t v;

    /* While the file fails, the next successful write resumes this. */
    if (c->failing)
        return MS_EINTERNAL;
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    /* Large values make a step long: it ends after STEP_BYTES too. */
    for (unsigned i = 0; i < rows && bytes < STEP_BYTES && p->next < p->n;
         i++, p->next++) {
        unsigned kind;
        const char *id;
        size_t len;

        record_key(p, p->order[p->next], &kind, &id, &len);
        if (!ms_index_find(c->index, kind, id, len, &v) || !v.dirty)
            continue;
        if (persist_row(c, kind, id, len, &v) < 0)
            return MS_EINTERNAL;
        ms_index_clean(c->index, kind, id, len);
        bytes += v.mp_len;
    }
    return p->next == p->n ? 1 : 0;
}


void ms_cache_persist_free(ms_cache_persist_t *p)
{
    if (p == NULL)
        return;
    free(p->keys);
    free(p->order);
    free(p);
}


bool ms_cache_ahead(const ms_cache_t *c)
{
    return c->ahead;
}


bool ms_cache_persist_wanted(const ms_cache_t *c)
{
    return c->ahead && !c->mem_load;
}


bool ms_cache_filled(const ms_cache_t *c)
{
    return c->index_full;
}


static int64_t now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}


int64_t ms_cache_count(ms_cache_t *c, ms_kind_t kind)
{
    sqlite3_stmt *s = c->stmt[ST_COUNT_LIVE];
    int64_t n = 0, now;
    int rc;

    if (!kind_valid(kind))
        return MS_EINVAL;
    if (c->index_full)
        return (int64_t)ms_index_count_live(c->index, kind);
    now = now_ms();

    /* A scan of the table (a tenth of a second at a million rows): a
     * health probe polled often must not hold the fill back. */
    if (c->counted_at[kind] != 0 && now - c->counted_at[kind] < COUNT_EVERY_MS)
        return c->counted[kind];
    if (sqlite3_bind_int(s, 1, (int)kind) != SQLITE_OK)
        return cache_fail(c, "count");

    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        n = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW)
        return cache_fail(c, "count");
    c->counted[kind] = n;
    c->counted_at[kind] = now;
    return n;
}


/* Points e and *id at the list statement's row: SQLite's, not copied. */
static void row_view(sqlite3_stmt *s, ms_cache_entry_t *e, const char **id,
                     size_t *id_len)
{
    e->version = (uint64_t)sqlite3_column_int64(s, 0);
    e->json = (const char *)sqlite3_column_text(s, 1);
    e->json_len = (size_t)sqlite3_column_bytes(s, 1);
    e->mp = sqlite3_column_blob(s, 2);
    e->mp_len = (size_t)sqlite3_column_bytes(s, 2);
    *id = (const char *)sqlite3_column_text(s, 3);
    *id_len = (size_t)sqlite3_column_bytes(s, 3);

    /* Only a failed conversion leaves a NOT NULL column without text. */
    if (e->json == NULL || *id == NULL)
        ms_oom();
    if (e->mp == NULL)
        e->mp = "";
    e->present = true;
}


/* Rows a memory list takes per scan of the index. */
#define LIST_CHUNK 1024

/*
 * While memory is ahead of the file, lists come from memory, a chunk of
 * ids at a time, each chunk a scan of the index (a few milliseconds per
 * 100,000 entries).
 */
static int list_memory(ms_cache_t *c, ms_kind_t kind, const char *after,
                       size_t after_len, ms_cache_list_cb fn, void *arg)
{
    ms_index_item_t *items = ms_malloc(LIST_CHUNK * sizeof(*items));
    char *last = NULL;
    size_t n;
    int stop = 0;

    do {
        n = ms_index_page(c->index, kind, after, after_len, LIST_CHUNK, items);
        for (size_t i = 0; i < n && stop == 0; i++) {
            ms_cache_entry_t e = {.version = items[i].v.version,
                                  .present = true,
                                  .mp = items[i].v.mp,
                                  .mp_len = items[i].v.mp_len};

            stop = fn(arg, items[i].id, items[i].id_len, &e);
        }
        if (n > 0 && stop == 0) {
            free(last);
            last = ms_strndup(items[n - 1].id, items[n - 1].id_len);
            after = last;
            after_len = items[n - 1].id_len;
        }
    } while (n == LIST_CHUNK && stop == 0);
    free(last);
    free(items);
    return stop != 0 ? 1 : 0;
}


int ms_cache_list(ms_cache_t *c, ms_kind_t kind, const char *after,
                  size_t after_len, ms_cache_list_cb fn, void *arg)
{
    sqlite3_stmt *s = c->stmt[ST_LIST];
    ms_cache_entry_t e;
    const char *id;
    size_t id_len;
    int stop = 0;
    int rc = SQLITE_DONE;

    if (!kind_valid(kind) || (after == NULL && after_len > 0))
        return MS_EINVAL;
    if (c->ahead)
        return list_memory(c, kind, after, after_len, fn, arg);

    /* Pages come from the file: it takes the turn's changes first. */
    if (pending_write(c) < 0)
        return MS_EINTERNAL;
    if (bind_key(s, kind, after, after_len) != SQLITE_OK)
        return cache_fail(c, "list");

    while (stop == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        memset(&e, 0, sizeof(e));
        row_view(s, &e, &id, &id_len);
        stop = fn(arg, id, id_len, &e);
    }

    /* Reset at once: an open SELECT would pin a WAL snapshot. */
    sqlite3_reset(s);
    if (stop != 0)
        return 1;
    if (rc != SQLITE_DONE)
        return cache_fail(c, "list");
    return 0;
}


int64_t ms_cache_max_version(ms_cache_t *c)
{
    sqlite3_stmt *s = c->stmt[ST_MAX_VERSION];
    int64_t v = 0;
    int rc;

    /* Memory holds the file, and what the file has yet to get. */
    if (c->index_full)
        return (int64_t)ms_index_max_version(c->index);
    if (pending_write(c) < 0)
        return MS_EINTERNAL;
    rc = sqlite3_step(s);

    if (rc == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (rc != SQLITE_ROW)
        return cache_fail(c, "max_version");
    if (c->ahead && ms_index_max_version(c->index) > (uint64_t)v)
        v = (int64_t)ms_index_max_version(c->index);
    return v;
}


int ms_cache_clear(ms_cache_t *c)
{
    pending_drop(c);
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    c->txn_rows++;
    if (stmt_run(c->stmt[ST_CLEAR]) != SQLITE_DONE ||
        stmt_run(c->stmt[ST_MEMBERS_CLEAR]) != SQLITE_DONE)
        return cache_fail(c, "clear");
    ms_index_clear(c->index);
    c->index_full = true;
    c->mem_load = c->ahead = false;
    return txn_settle(c);
}


int ms_cache_meta_get(ms_cache_t *c, const char *key, uint64_t *value)
{
    int rc = meta_read(c, key, value);

    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return MS_EINVAL;
    return cache_fail(c, "meta_get");
}


int ms_cache_meta_set(ms_cache_t *c, const char *key, uint64_t value)
{
    /* The generation changes only with resync_begin, or resyncs break. */
    if (!u64_fits(value) || strcmp(key, CACHE_GEN_KEY) == 0)
        return MS_EINVAL;
    return meta_write(c, key, value, "meta_set");
}


/* The membership upserts: ?6 only in the load's. */
static int member_write(ms_cache_t *c, int st, const char *room,
                        size_t room_len, const char *conn, size_t conn_len,
                        uint64_t version, bool present, uint64_t seq)
{
    sqlite3_stmt *s = c->stmt[st];
    int rc;

    if (!u64_fits(version) || !u64_fits(seq))
        return MS_EINVAL;
    if (bind_text(s, 1, room, room_len) != SQLITE_OK ||
        bind_text(s, 2, conn, conn_len) != SQLITE_OK ||
        sqlite3_bind_int64(s, 3, (sqlite3_int64)version) != SQLITE_OK ||
        sqlite3_bind_int(s, 4, present ? 1 : 0) != SQLITE_OK ||
        sqlite3_bind_int64(s, 5, (sqlite3_int64)c->gen) != SQLITE_OK ||
        (st == ST_MEMBER_LOAD &&
         sqlite3_bind_int64(s, 6, (sqlite3_int64)seq) != SQLITE_OK))
        return cache_fail(c, "member_apply");
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    if (stmt_run(s) != SQLITE_DONE)
        return cache_fail(c, "member_apply");
    c->txn_rows++;
    rc = sqlite3_changes(c->db) > 0 ? 1 : 0;
    return txn_settle(c) < 0 ? MS_EINTERNAL : rc;
}


int ms_cache_member_apply(ms_cache_t *c, const char *room, size_t room_len,
                          const char *conn, size_t conn_len, uint64_t version,
                          bool present)
{
    return member_write(c, ST_MEMBER_NEWER, room, room_len, conn, conn_len,
                        version, present, 0);
}


int ms_cache_member_load(ms_cache_t *c, const char *room, size_t room_len,
                         const char *conn, size_t conn_len, uint64_t seq)
{
    return member_write(c, ST_MEMBER_LOAD, room, room_len, conn, conn_len, 0,
                        true, seq);
}


int ms_cache_member_drop_conn(ms_cache_t *c, const char *conn, size_t len,
                              uint64_t version)
{
    sqlite3_stmt *s = c->stmt[ST_MEMBER_DROP_CONN];

    if (!u64_fits(version))
        return MS_EINVAL;
    if (bind_text(s, 1, conn, len) != SQLITE_OK ||
        sqlite3_bind_int64(s, 2, (sqlite3_int64)version) != SQLITE_OK ||
        sqlite3_bind_int64(s, 3, (sqlite3_int64)c->gen) != SQLITE_OK)
        return cache_fail(c, "member_drop");
    if (txn_open(c) < 0)
        return MS_EINTERNAL;
    if (stmt_run(s) != SQLITE_DONE)
        return cache_fail(c, "member_drop");
    c->txn_rows++;
    return txn_settle(c);
}


/* While memory is ahead of the file, a member's metadata is memory's. */
static void member_entry_from_memory(ms_cache_t *c, const char *conn,
                                     size_t len, ms_cache_entry_t *e)
{
    ms_index_view_t v;

    memset(e, 0, sizeof(*e));
    if (!ms_index_find(c->index, MS_KIND_CONN, conn, len, &v))
        return;
    e->version = v.version;
    e->present = v.present;
    e->mp = v.mp;
    e->mp_len = v.mp_len;
}


int ms_cache_members(ms_cache_t *c, const char *room, size_t room_len,
                     const char *after, size_t after_len, ms_cache_list_cb fn,
                     void *arg)
{
    sqlite3_stmt *s = c->stmt[ST_MEMBERS];
    ms_cache_entry_t e;
    int stop = 0;
    int rc = SQLITE_DONE;

    if (after == NULL && after_len > 0)
        return MS_EINVAL;
    if (pending_write(c) < 0)
        return MS_EINTERNAL;
    if (bind_text(s, 1, room, room_len) != SQLITE_OK ||
        bind_text(s, 2, after, after_len) != SQLITE_OK)
        return cache_fail(c, "members");

    while (stop == 0 && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 3);
        size_t id_len = (size_t)sqlite3_column_bytes(s, 3);

        memset(&e, 0, sizeof(e));
        if (id == NULL)
            ms_oom();
        e.version = (uint64_t)sqlite3_column_int64(s, 0);
        e.json = (const char *)sqlite3_column_text(s, 1);
        e.json_len = (size_t)sqlite3_column_bytes(s, 1);
        e.mp = sqlite3_column_blob(s, 2);
        e.mp_len = (size_t)sqlite3_column_bytes(s, 2);
        e.present = e.json != NULL;
        if (c->ahead)
            member_entry_from_memory(c, id, id_len, &e);
        stop = fn(arg, id, id_len, &e);
    }

    /* Reset at once: an open SELECT would pin a WAL snapshot. */
    sqlite3_reset(s);
    if (stop != 0)
        return 1;
    if (rc != SQLITE_DONE)
        return cache_fail(c, "members");
    return 0;
}


int ms_cache_member_rooms(ms_cache_t *c, ms_cache_room_cb fn, void *arg)
{
    sqlite3_stmt *s = c->stmt[ST_MEMBER_ROOMS];
    int rc;

    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *room = (const char *)sqlite3_column_text(s, 0);

        if (room == NULL)
            ms_oom();
        fn(arg, room, (size_t)sqlite3_column_bytes(s, 0));
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : cache_fail(c, "member_rooms");
}
