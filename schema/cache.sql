-- cache.sql - the layout of meshsyncd's SQLite cache file.
--
-- meshsyncd is built with this file compiled in (cmake/embed.cmake) and
-- runs it in one transaction each time it opens the file, after checking
-- PRAGMA user_version: 0 (a new file) or 2 is accepted; a file of any
-- other version is moved aside and the cache rebuilt from Redis. The
-- cache is rebuilt from Redis by a resync, so deleting the file (with its
-- -wal and -shm) is safe while the daemon is stopped.
--
-- On open the daemon also sets PRAGMA journal_mode=WAL (stored in the
-- file), PRAGMA cache_size=-512 and PRAGMA synchronous=OFF (per
-- connection): the file is never fsynced, so it survives a crash of the
-- daemon but not one of the machine, and a file last opened in an
-- earlier boot (meta key 'boot') is emptied and loaded again from Redis.
-- To look inside:
--   sqlite3 cache.db 'SELECT kind, id, version, json FROM entries'
-- The comments inside each CREATE TABLE are kept by SQLite and shown
-- by the sqlite3 tool's .schema command.

CREATE TABLE IF NOT EXISTS entries (
    -- What the entry describes: 0 = a connection, 1 = a room
    -- (ms_kind_t in sidecar/cache.h).
    kind    INTEGER NOT NULL CHECK (kind IN (0, 1)),
    -- The entry's id within its kind, as the bytes Redis uses.
    id      TEXT NOT NULL,
    -- The version of the last change applied: a value of Redis's
    -- global sequence (INCR), up to 2^63-1, or 0 for a value written
    -- without one (by a Mesh server or by hand). A change event is
    -- applied only if its version is newer; a resync load replaces
    -- anything no newer than the sequence it read.
    version INTEGER NOT NULL CHECK (version >= 0),
    -- The value as JSON text, as Redis holds it (rows written after a
    -- load into an empty file hold the same value as meshsync writes
    -- JSON, which can differ in form from text others wrote). NULL
    -- marks a tombstone: the entry was deleted by the change at
    -- `version`, and the row stays so that a late, older change cannot
    -- revive it.
    json    TEXT,
    -- The same value encoded as msgpack, ready to copy into a reply;
    -- NULL exactly when json is NULL.
    mp      BLOB,
    -- The resync generation (meta key 'resync_generation') current
    -- when this row was last written. When a resync ends, live rows it
    -- did not write and that are no newer than the sequence read when
    -- it began are gone from Redis: they become tombstones.
    gen     INTEGER NOT NULL,
    PRIMARY KEY (kind, id),
    CHECK ((json IS NULL) = (mp IS NULL))
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS meta (
    -- A name. 'resync_generation' belongs to the cache: the generation
    -- of the latest resync, bumped when one begins (absent before the
    -- first); so does 'boot', 60 bits of the kernel's boot_id when the
    -- file was last opened. Other keys are reserved for the mirror's
    -- own state.
    key     TEXT PRIMARY KEY,
    -- An unsigned 64-bit value no larger than 2^63-1: never negative.
    value   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS members (
    -- A room's name, and a connection in it: Mesh's <p>:room:<room> set.
    room    TEXT NOT NULL,
    conn    TEXT NOT NULL,
    -- The version of the last join, leave or close applied, as for
    -- entries (0 for a membership loaded without one).
    version INTEGER NOT NULL CHECK (version >= 0),
    -- 1 while the connection is in the room; 0 marks that it left (a
    -- tombstone, so that a late, older join cannot put it back).
    present INTEGER NOT NULL CHECK (present IN (0, 1)),
    -- The resync generation, as for entries: a resync ends memberships
    -- it did not see.
    gen     INTEGER NOT NULL,
    PRIMARY KEY (room, conn)
) WITHOUT ROWID;

-- A connection's rooms, for its close.
CREATE INDEX IF NOT EXISTS members_by_conn ON members (conn, room);

PRAGMA user_version = 2;
