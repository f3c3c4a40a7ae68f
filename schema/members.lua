-- members.lua: a connection joins or leaves a room in Mesh's sets, with a
-- version from the global sequence and a change message, atomically.
--
-- KEYS[1]  the room's members: <prefix>:room:<room>
-- KEYS[2]  the connection's rooms: <prefix>:connection:<conn>:rooms
-- KEYS[3]  the global sequence: <prefix>:meshsync:seq
-- KEYS[4]  the change log, a stream: <prefix>:meshsync:log
-- ARGV[1]  "join" or "leave"; or "ajoin" / "aleave" to version a
--          membership someone else (a Mesh server) made or ended, which
--          the scrub found: only while the connection is still in (ajoin)
--          or still out of (aleave) the room; the sets are not touched
-- ARGV[2]  the room's name
-- ARGV[3]  the connection id
-- ARGV[4]  the change channel: <prefix>:meshsync:changes:<db>
-- ARGV[5]  how many changes the log keeps (about: trimmed with MAXLEN ~)
--
-- Returns {1, version} when the membership changed, {0, 0} when the
-- connection was already in (join) or not in (leave) the room: nothing
-- is written then. Publishes msgpack [version, "join" or "leave", room,
-- conn] on ARGV[4] and appends it to the change log as write.lua does.

-- The room's set first: of a foreign type, it fails the script before
-- anything is written. The connection's set, of a foreign type, is
-- skipped, as write.lua's close skips it.
local changed
local step = ARGV[1]
if step == 'ajoin' or step == 'aleave' then
    local member = redis.call('SISMEMBER', KEYS[1], ARGV[3])
    changed = (step == 'ajoin') == (member == 1) and 1 or 0
    step = step == 'ajoin' and 'join' or 'leave'
elseif step == 'join' then
    changed = redis.call('SADD', KEYS[1], ARGV[3])
    redis.pcall('SADD', KEYS[2], ARGV[2])
else
    changed = redis.call('SREM', KEYS[1], ARGV[3])
    redis.pcall('SREM', KEYS[2], ARGV[2])
end
if changed == 0 then
    return {0, 0}
end

local version = redis.call('INCR', KEYS[3])
local payload = cmsgpack.pack({version, step, ARGV[2], ARGV[3]})
redis.call('PUBLISH', ARGV[4], payload)

-- As in write.lua: a log from another history of the sequence goes.
local id = version .. '-0'
local logged = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], id,
                           'c', payload)
if type(logged) == 'table' and logged.err then
    redis.call('DEL', KEYS[4])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], id, 'c', payload)
end
return {1, version}
