-- load.lua: read one batch of entries for a full load, each value together
-- with its version, in one atomic step, so that a value and its version
-- always belong to the same write.
--
-- KEYS[1]  <prefix>:connection-meta
-- KEYS[2]  <prefix>:meshsync:versions:conn
-- KEYS[3]  <prefix>:meshsync:versions:room
-- KEYS[4]  <prefix>:meshsync:seq
-- KEYS[5]  <prefix>:meshsync:epoch
-- ARGV[1]  "conn", "room" or "member": what to scan
-- ARGV[2]  the cursor ("0" to start)
-- ARGV[3]  the COUNT hint for the scan
-- ARGV[4]  for rooms, the room key prefix, <prefix>:roommeta:
-- ARGV[5]  for rooms, the same prefix as a SCAN pattern (glob characters
--          escaped) followed by *
-- ARGV[6]  for members, the room members' key prefix, <prefix>:room:
-- ARGV[7]  for members, the same prefix as a SCAN pattern, then *
--
-- Returns {next cursor, sequence, {id, JSON text, version, ...}, epoch}
-- where version is 0 for a value no meshsync write has versioned (one
-- written by a Mesh server or by hand), or for members {next cursor,
-- sequence, {room, conn, ...}, epoch}. The sequence and the epoch are
-- read in the same step; the epoch is created, as sync.lua does, when
-- there is none. A batch that reads another epoch than the first (a flush
-- deleted it, and a new one was made) tells the reader Redis lost its
-- data, and a completed load knows which history it read.
-- Room keys are found by SCAN; this script reads keys not named in KEYS,
-- which standalone Redis permits (Redis Cluster would not).

-- A versions field is "<version>:<digest>" (see write.lua).
local function version_of(field)
    return tonumber(string.match(field or '0', '^%d+')) or 0
end

local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
local epoch = redis.call('GET', KEYS[5])
if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', KEYS[5], epoch)
end
local out = {}

if ARGV[1] == 'conn' then
    local r = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
    local flat = r[2]

    -- HSCAN returns a small (listpack) hash whole, whatever COUNT says,
    -- and unpack() has a limit: versions are read 500 ids at a time.
    for first = 1, #flat, 1000 do
        local ids = {}
        for i = first, math.min(first + 998, #flat - 1), 2 do
            ids[#ids + 1] = flat[i]
        end
        local vers = redis.call('HMGET', KEYS[2], unpack(ids))
        for j = 1, #ids do
            out[#out + 1] = ids[j]
            out[#out + 1] = flat[first + 2 * j - 1]
            out[#out + 1] = version_of(vers[j])
        end
    end
    return {r[1], seq, out, epoch}
end

if ARGV[1] == 'member' then
    local r = redis.call('SCAN', ARGV[2], 'MATCH', ARGV[7], 'COUNT', ARGV[3],
                         'TYPE', 'set')
    local plen = #ARGV[6]
    for _, key in ipairs(r[2]) do
        local room = string.sub(key, plen + 1)
        for _, conn in ipairs(redis.call('SMEMBERS', key)) do
            out[#out + 1] = room
            out[#out + 1] = conn
        end
    end
    return {r[1], seq, out, epoch}
end

local r = redis.call('SCAN', ARGV[2], 'MATCH', ARGV[5], 'COUNT', ARGV[3],
                     'TYPE', 'hash')
local plen = #ARGV[4]
for _, key in ipairs(r[2]) do
    local data = redis.call('HGET', key, 'data')
    if data then
        local room = string.sub(key, plen + 1)
        local v = redis.call('HGET', KEYS[3], room)
        out[#out + 1] = room
        out[#out + 1] = data
        out[#out + 1] = version_of(v)
    end
end
return {r[1], seq, out, epoch}
