-- read.lua: one entry's value and version, read together.
--
-- KEYS[1]  the value's hash: <prefix>:connection-meta or
--          <prefix>:roommeta:<room>
-- KEYS[2]  the versions hash: <prefix>:meshsync:versions:conn or :room
-- KEYS[3]  the global sequence: <prefix>:meshsync:seq
-- ARGV[1]  the field in KEYS[1]: the connection id, or "data" for a room
-- ARGV[2]  the entry id: the field in KEYS[2]
--
-- Returns {JSON text or nil, version}. A present value's version is its
-- own (0 when unversioned); an absent entry's is the sequence, since the
-- absence holds as of the latest write (a delete removes the version).
-- Used for reads that must not come from a sidecar's cache: consistency
-- "strong", and minVersion reads the cache could not answer in time.

local value = redis.call('HGET', KEYS[1], ARGV[1])
local version
if value then
    version = redis.call('HGET', KEYS[2], ARGV[2])
else
    version = redis.call('GET', KEYS[3])
end
-- A versions field is "<version>:<digest>" (see write.lua).
return {value or false, tonumber(string.match(version or '0', '^%d+')) or 0}
