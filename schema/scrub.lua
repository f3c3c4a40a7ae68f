-- scrub.lua: one step of the scrub, which finds metadata written into
-- Mesh's keys by someone other than meshsync (a Mesh server, redis-cli):
-- those writes carry no version and publish no change. The sidecar then
-- versions each one it finds with write.lua's "adopt" check, which
-- publishes it like any other write.
--
-- KEYS[1]  <prefix>:connection-meta
-- KEYS[2]  <prefix>:meshsync:versions:conn
-- KEYS[3]  <prefix>:meshsync:versions:room
-- KEYS[4]  <prefix>:meshsync:scrubber, the scrub's lease
-- ARGV[1]  the step, below
-- ARGV[2]  the room key prefix, <prefix>:roommeta:
-- ARGV[3]  the same prefix as a SCAN pattern (glob characters escaped)
--          followed by *
-- ARGV[4]  for "lease" and "release", the sidecar's instance id; for the
--          scans, the cursor ("0" to start)
-- ARGV[5]  for "lease", how long it lasts in ms; for the scans, the
--          COUNT hint; else ignored
-- ARGV[6...] for "rooms", the room names to look at
--
-- Steps:
--   lease  takes or renews the lease if it is free or already ARGV[4]'s;
--          returns 1 if ARGV[4] holds it now, else 0. One sidecar at a
--          time scrubs: what it adopts reaches every other one.
--   release  deletes the lease if ARGV[4] holds it; returns 1 if it did.
--   conn   HSCAN of the connections' values
--   room   SCAN of the room keys
--   connv  HSCAN of the connections' versions, for values deleted
--   roomv  HSCAN of the rooms' versions, for values deleted
--   rooms  the rooms named in ARGV[6...] (keyspace notifications)
--   mset   SCAN of the room membership sets (ARGV[2] and ARGV[3] are then
--          <prefix>:room: and its pattern): returns {next cursor, {room,
--          {conn, ...}, ...}} with every member, for the sidecar to
--          compare with its cache (memberships carry no digest)
--   mroom  the membership sets of the rooms named in ARGV[6...], same
--          reply with cursor "0" (a set that is gone: no members)
-- A scan returns {next cursor, found}; "rooms" returns {"0", found}.
-- found is a flat list {kind, id, JSON text or false, ...} of entries
-- whose value in Redis is not the one meshsync last wrote: present
-- without a version (or with a digest of other text), or absent while a
-- version remains. Scans read keys not named in KEYS, which standalone
-- Redis permits (Redis Cluster would not).

local step = ARGV[1]

if step == 'lease' then
    local holder = redis.call('GET', KEYS[4])
    if holder and holder ~= ARGV[4] then
        return 0
    end
    redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5])
    return 1
end

if step == 'release' then
    if redis.call('GET', KEYS[4]) == ARGV[4] then
        return redis.call('DEL', KEYS[4])
    end
    return 0
end

local found = {}

-- A versions field is "<version>:<digest>" (see write.lua).
local function versioned(field, json)
    if not field then
        return false
    end
    local digest = string.match(field, ':(%x+)$')
    return digest == string.sub(redis.sha1hex(json), 1, 16)
end

local function look_at(kind, id, json, field)
    if json and not versioned(field, json) then
        found[#found + 1] = kind
        found[#found + 1] = id
        found[#found + 1] = json
    elseif not json and field then
        found[#found + 1] = kind
        found[#found + 1] = id
        found[#found + 1] = false
    end
end

-- A value in Mesh's hash, or false when absent. A key of another type
-- than a hash holds no Mesh value: absent too (write.lua adopts that).
local function value_in(key, field)
    local v = redis.pcall('HGET', key, field)
    if type(v) == 'table' then
        return false
    end
    return v
end

local function room_value(room)
    return value_in(ARGV[2] .. room, 'data')
end

if step == 'rooms' then
    for i = 6, #ARGV do
        look_at('room', ARGV[i], room_value(ARGV[i]),
                redis.call('HGET', KEYS[3], ARGV[i]))
    end
    return {'0', found}
end

if step == 'mset' or step == 'mroom' then
    local out, keys, cursor = {}, {}, '0'
    if step == 'mset' then
        local r = redis.call('SCAN', ARGV[4], 'MATCH', ARGV[3],
                             'COUNT', ARGV[5], 'TYPE', 'set')
        cursor, keys = r[1], r[2]
    else
        for i = 6, #ARGV do
            keys[#keys + 1] = ARGV[2] .. ARGV[i]
        end
    end
    local plen = #ARGV[2]
    for _, key in ipairs(keys) do
        local m = redis.pcall('SMEMBERS', key)
        out[#out + 1] = string.sub(key, plen + 1)
        out[#out + 1] = m.err and {} or m
    end
    return {cursor, out}
end

if step == 'room' then
    local r = redis.call('SCAN', ARGV[4], 'MATCH', ARGV[3],
                         'COUNT', ARGV[5], 'TYPE', 'hash')
    local plen = #ARGV[2]
    for _, key in ipairs(r[2]) do
        local data = redis.call('HGET', key, 'data')
        if data then
            local room = string.sub(key, plen + 1)
            look_at('room', room, data, redis.call('HGET', KEYS[3], room))
        end
    end
    return {r[1], found}
end

-- The hash scans: HSCAN gives {field, value, ...}. A scanned key of
-- another type than a hash has nothing to scan.
local hash = {conn = KEYS[1], connv = KEYS[2], roomv = KEYS[3]}
local r = redis.pcall('HSCAN', hash[step], ARGV[4], 'COUNT', ARGV[5])
if r.err then
    return {'0', found}
end
local flat = r[2]
for i = 1, #flat - 1, 2 do
    local id = flat[i]
    if step == 'conn' then
        look_at('conn', id, flat[i + 1],
                redis.call('HGET', KEYS[2], id))
    elseif step == 'connv' then
        if value_in(KEYS[1], id) == false then
            look_at('conn', id, false, flat[i + 1])
        end
    elseif room_value(id) == false then
        look_at('room', id, false, flat[i + 1])
    end
end
return {r[1], found}
