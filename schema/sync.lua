-- sync.lua: one step of a sidecar's catch-up from the change log, and the
-- check that Redis still holds the history the sidecar's cache comes from.
--
-- KEYS[1]  the epoch: <prefix>:meshsync:epoch
-- KEYS[2]  the global sequence: <prefix>:meshsync:seq
-- KEYS[3]  the change log: <prefix>:meshsync:log
-- ARGV[1]  the first version wanted
-- ARGV[2]  at most this many changes; 0 only checks the history (epoch,
--          sequence, run_id) without reading any
--
-- The epoch names one history of the sequence. It is created here, from
-- Redis's clock, the first time any sidecar asks; a Redis that lost its
-- data (flushed, restarted empty, failed over to a replica without it)
-- has no epoch, or another one, so a sidecar whose cache came from the
-- old history notices and loads everything again.
--
-- A restart, even one that kept the epoch (a snapshot restored, a replica
-- promoted), may have lost or rewritten recent history the log no longer
-- shows: the server's run_id tells a sidecar that it is talking to
-- another process than before, and should load everything.
--
-- Returns {epoch, sequence, oldest version in the log (0 if empty),
-- {change message bytes, ...}, run_id, version of the last entry returned
-- (0 if none)} with the changes of versions ARGV[1] and up, oldest first,
-- all read in one atomic step. The last version lets the reader move on
-- past entries it cannot decode.

local epoch = redis.call('GET', KEYS[1])
if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', KEYS[1], epoch)
end

local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local oldest = 0
local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if #first > 0 then
    oldest = tonumber(string.match(first[1][1], '^(%d+)'))
end

local out = {}
local last = 0
local entries = {}
if tonumber(ARGV[2]) > 0 then
    entries = redis.call('XRANGE', KEYS[3], ARGV[1] .. '-0', '+',
                         'COUNT', ARGV[2])
end
for _, e in ipairs(entries) do
    out[#out + 1] = e[2][2]
    last = tonumber(string.match(e[1], '^(%d+)'))
end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
return {epoch, seq, oldest, out, run_id or '', last}
