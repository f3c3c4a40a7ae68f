-- write.lua: store or delete one metadata entry, atomically taking its new
-- version from the global sequence and publishing the change.
--
-- KEYS[1]  the value's hash: <prefix>:connection-meta or
--          <prefix>:roommeta:<room>
-- KEYS[2]  the versions hash: <prefix>:meshsync:versions:conn or :room
-- KEYS[3]  the global sequence: <prefix>:meshsync:seq
-- KEYS[4]  the entry's turn key: <prefix>:meshsync:turn:<kind>:<id>
-- KEYS[5]  the change log, a stream: <prefix>:meshsync:log
-- ARGV[1]  the field in KEYS[1]: the connection id, or "data" for a room
-- ARGV[2]  the entry id (connection id or room name): field in KEYS[2]
-- ARGV[3]  the change channel: <prefix>:meshsync:changes:<db>
-- ARGV[4]  the kind published with the change: "conn" or "room"
-- ARGV[5]  the check: "any" (write unconditionally), "absent" (only if
--          the entry does not exist) or "equal" (only if the stored JSON
--          text is exactly ARGV[6]); merges use the last two. "adopt"
--          versions a write made outside meshsync that the scrub found:
--          only if the stored text is still ARGV[6] ("set"), or the entry
--          is still absent ("del"), and is not versioned already (a
--          matching digest; for "del", no version left); it neither waits
--          for nor takes turns
-- ARGV[6]  the expected JSON text for "equal" and "adopt", else ignored
-- ARGV[7]  "set", "del", or "close": a connection's delete that also
--          ends it in Mesh's registry (see the end of this comment)
-- ARGV[8]  the new JSON text for "set", else ignored
-- ARGV[9]  the writer: the sidecar's instance id
-- ARGV[10] how long a turn lasts, in milliseconds
-- ARGV[11] how many changes the log keeps (about: trimmed with MAXLEN ~)
-- ARGV[12] for "close", the key prefix followed by ":" (e.g. "mesh:")
-- ARGV[13] for "close", the instance expected to own the connection, or
--          "" for any: a connection registered to another instance since
--          (opened again elsewhere) is not closed, and the reply is
--          {0, current JSON text or nil, current version, "moved"}
--
-- The versions hash holds "<version>:<digest>" per entry, the digest
-- being the first 16 hex digits of the SHA-1 of the JSON text written,
-- so that schema/scrub.lua can tell when a value was changed by someone
-- else (a Mesh server, redis-cli) since meshsync wrote it.
--
-- Returns {1, version} when written, or {0, current JSON text or nil,
-- current version, reason} when a check failed and nothing was written.
-- reason is "changed" (the stored text is not the expected one) or
-- "turn" (another writer lost a race on this entry and goes first).
-- Publishes msgpack [version, kind, id, JSON text or false, existed] on
-- ARGV[3] (existed: whether the entry had a value before this write; a
-- "close" adds a sixth element, true: the connection left its rooms),
-- and appends the same bytes to the change log as field "c" of the entry
-- with ID <version>-0, so a sidecar that missed messages can read them
-- back by version.
--
-- "close" does what Mesh does when a connection closes, in the same
-- atomic step as the metadata's delete: the connection leaves
-- <p>:connections and its owner's <p>:connections:<instance> set, every
-- room of <p>:connection:<id>:rooms (the <p>:room:<room> member sets and
-- Mesh's presence keys of those rooms), and that rooms set goes. These
-- keys are not in KEYS: standalone Redis allows it, Redis Cluster would
-- not. A registry key of another type than Mesh's is skipped, so that
-- nothing fails half-way (Lua would not undo what was done before).
--
-- Turns keep compare-and-set fair: the writer whose check failed because
-- the value changed takes the entry's turn (if nobody holds it), and until
-- it writes, or the turn expires, other checked writes to the entry are
-- refused. Without them, a sidecar streaming merges to one entry can win
-- every race and starve another's retries.

local check = ARGV[5]

-- An adoption may find Mesh's key holding another type than a hash: it
-- holds no Mesh value, and the scrub adopts that absence.
local foreign = false
local current
if check == 'adopt' then
    current = redis.pcall('HGET', KEYS[1], ARGV[1])
    if type(current) == 'table' then
        current = false
        foreign = true
    end
else
    current = redis.call('HGET', KEYS[1], ARGV[1])
end

-- A registry key of a foreign type holds nothing of Mesh's: skipped.
local function try(...)
    local r = redis.pcall(...)
    if type(r) == 'table' and r.err then
        return false
    end
    return r
end

local function refuse(reason)
    local v = redis.call('HGET', KEYS[2], ARGV[2]) or '0'
    return {0, current, tonumber(string.match(v, '^%d+')) or 0, reason}
end

local owner = false
if ARGV[7] == 'close' then
    owner = try('HGET', ARGV[12] .. 'connections', ARGV[2])
    if ARGV[13] ~= '' and owner and owner ~= ARGV[13] then
        return refuse('moved')
    end
end

if check == 'adopt' then
    -- Nothing to adopt when the entry changed since the scrub read it, or
    -- when it is versioned already (found twice, or adopted meanwhile).
    local field = redis.call('HGET', KEYS[2], ARGV[2])
    local digest = field and string.match(field, ':(%x+)$')
    local stale
    if ARGV[7] == 'set' then
        stale = current ~= ARGV[6] or
                digest == string.sub(redis.sha1hex(ARGV[6]), 1, 16)
    else
        stale = current or not field
    end
    if stale then
        return refuse('changed')
    end
elseif check ~= 'any' then
    local turn = redis.call('GET', KEYS[4])
    if turn and turn ~= ARGV[9] then
        return refuse('turn')
    end
    if (check == 'absent' and current) or
       (check == 'equal' and current ~= ARGV[6]) then
        redis.call('SET', KEYS[4], ARGV[9], 'PX', ARGV[10], 'NX')
        return refuse('changed')
    end
    if turn then
        redis.call('DEL', KEYS[4])
    end
end

local version = redis.call('INCR', KEYS[3])
local payload
if ARGV[7] == 'set' then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[8])
    redis.call('HSET', KEYS[2], ARGV[2],
               version .. ':' .. string.sub(redis.sha1hex(ARGV[8]), 1, 16))
    payload = cmsgpack.pack({version, ARGV[4], ARGV[2], ARGV[8],
                             current ~= false})
else
    if not foreign then
        redis.call('HDEL', KEYS[1], ARGV[1])
    end
    redis.call('HDEL', KEYS[2], ARGV[2])
    if ARGV[7] == 'close' then
        payload = cmsgpack.pack({version, ARGV[4], ARGV[2], false,
                                 current ~= false, true})
    else
        payload = cmsgpack.pack({version, ARGV[4], ARGV[2], false,
                                 current ~= false})
    end
end

if ARGV[7] == 'close' then
    local p, conn = ARGV[12], ARGV[2]
    if owner then
        try('HDEL', p .. 'connections', conn)
        try('SREM', p .. 'connections:' .. owner, conn)
    end
    local rooms = p .. 'connection:' .. conn .. ':rooms'
    for _, room in ipairs(try('SMEMBERS', rooms) or {}) do
        try('SREM', p .. 'room:' .. room, conn)
        try('SREM', p .. 'presence:room:' .. room, conn)
        redis.call('DEL', p .. 'presence:room:' .. room .. ':conn:' .. conn,
                   p .. 'presence:state:' .. room .. ':conn:' .. conn)
    end
    redis.call('DEL', rooms)
end
redis.call('PUBLISH', ARGV[3], payload)

-- The log's IDs follow the sequence. If the sequence was reset while the
-- log survived, the old log describes another history: it goes.
local id = version .. '-0'
local logged = redis.pcall('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], id,
                           'c', payload)
if type(logged) == 'table' and logged.err then
    redis.call('DEL', KEYS[5])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], id, 'c', payload)
end
return {1, version}
