-- registry.lua: Mesh's connection registry and instance liveness, one step
-- per call, each atomic. Key names follow Mesh's own layout, so Mesh
-- servers and meshsync sidecars share one registry (see REDIS.md).
--
-- KEYS[1]  <prefix>:connections (hash: connection id -> instance id)
-- KEYS[2]  <prefix>:instances (set of instance ids)
-- ARGV[1]  the step, below
-- ARGV[2]  the key prefix followed by ":" (e.g. "mesh:")
-- ARGV[3]  this sidecar's instance id
-- ARGV[4...] the step's own arguments
--
-- Steps:
--   open conn      registers conn as this instance's: the hash, and the
--                  instance's set <p>:connections:<instance> (leaving the
--                  set of the instance that held it before, if another).
--                  Returns the previous instance id, or false.
--   beat ttl_ms    adds this instance to the instances set and sets its
--                  heartbeat <p>:instance:<id>:heartbeat to the time in
--                  milliseconds, expiring after ttl_ms. Returns 1.
--   leave          removes this instance: from the instances set, its
--                  heartbeat, and its connections set if empty. Returns 1.
--   dead cursor count
--                  one step of the search for dead instances: on the
--                  first step (cursor "0") the members of the instances
--                  set, on every step the owners of a batch of the
--                  connections hash (HSCAN), are checked for a heartbeat.
--                  Returns {next cursor, {dead instance, ...},
--                  {connection, dead owner, ...}}. An instance is dead
--                  when its heartbeat key is gone; this one never is.
--   members inst   the connections in <p>:connections:<inst> (none if
--                  that key is of another type).
--   gone inst      forgets a dead instance once its connections are
--                  closed: leaves the instances set; its connections set
--                  goes. Returns 1, or 0 (and does nothing) if it beats
--                  again meanwhile.

local step, p, me = ARGV[1], ARGV[2], ARGV[3]

local function heartbeat(inst)
    return p .. 'instance:' .. inst .. ':heartbeat'
end

if step == 'open' then
    local conn = ARGV[4]
    local prev = redis.call('HGET', KEYS[1], conn)
    if prev and prev ~= me then
        redis.call('SREM', p .. 'connections:' .. prev, conn)
    end
    redis.call('HSET', KEYS[1], conn, me)
    redis.call('SADD', p .. 'connections:' .. me, conn)
    return prev
end

if step == 'beat' then
    local t = redis.call('TIME')
    local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('SET', heartbeat(me), string.format('%d', ms), 'PX', ARGV[4])
    redis.call('SADD', KEYS[2], me)
    return 1
end

if step == 'leave' then
    redis.call('SREM', KEYS[2], me)
    redis.call('DEL', heartbeat(me))
    if redis.call('SCARD', p .. 'connections:' .. me) == 0 then
        redis.call('DEL', p .. 'connections:' .. me)
    end
    return 1
end

if step == 'members' then
    local m = redis.pcall('SMEMBERS', p .. 'connections:' .. ARGV[4])
    if m.err then
        return {}
    end
    return m
end

if step == 'gone' then
    if redis.call('EXISTS', heartbeat(ARGV[4])) == 1 then
        return 0
    end
    redis.call('SREM', KEYS[2], ARGV[4])
    redis.call('DEL', p .. 'connections:' .. ARGV[4])
    return 1
end

-- dead: instances without a heartbeat, and the connections they own.
local known, dead, conns = {}, {}, {}
local function is_dead(inst)
    if known[inst] == nil then
        known[inst] = inst ~= me and
                      redis.call('EXISTS', heartbeat(inst)) == 0
        if known[inst] then
            dead[#dead + 1] = inst
        end
    end
    return known[inst]
end

if ARGV[4] == '0' then
    for _, inst in ipairs(redis.call('SMEMBERS', KEYS[2])) do
        is_dead(inst)
    end
end
local r = redis.call('HSCAN', KEYS[1], ARGV[4], 'COUNT', ARGV[5])
local flat = r[2]
for i = 1, #flat - 1, 2 do
    if is_dead(flat[i + 1]) then
        conns[#conns + 1] = flat[i]
        conns[#conns + 1] = flat[i + 1]
    end
end
return {r[1], dead, conns}
