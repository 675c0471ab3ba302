-- report: a pod's own report, published at once under the operator's floor (wire contract v1.1
-- §6). KEYS: [1] state hash, [2] report hash, [3] candidate index. The floor and meta hashes are
-- written only by the operator and only read here, under their names KEYS[1] .. 'floor' and
-- KEYS[1] .. 'meta' (same hash tag, so the same slot): a pod's Redis user may then read but
-- never write them (see the ACL recipe).
-- ARGV: [1] pod index, [2] report "<loadState>-<waitingTasks>-<routing>".
-- The report is stored; while the pod has a floor (the operator publishes it), its state becomes
-- what publish.lua would make of them, stamped with this server's TIME, and the index follows
-- when it is live. Returns {routing ordinal, weighted load} as published, or {-1, -1} when the
-- pod has no floor (not Ready, or not yet seen by the operator): stored, not published.
local pod, report = ARGV[1], ARGV[2]
local load_state, waiting, r = triple(report)
if pod_of(pod) == -1 or not load_state then
  return redis.error_reply('ERR routestate report: bad pod index or report')
end
redis.call('HSET', KEYS[2], pod, report)
local fr, override = floor_of(redis.call('HGET', KEYS[1] .. 'floor', pod))
if not fr then return {-1, -1} end
local ppm = tonumber(redis.call('HGET', KEYS[1] .. 'meta', 'cpuFactorPpm'))
if not ppm or ppm < 0 or ppm > 1000000 or ppm % 1 ~= 0 then ppm = 700000 end
local load = override or weighted(ppm, waiting, load_state)
if fr > r then r = fr end
redis.call('HSET', KEYS[1], pod, state_string(load, server_ms(), r))
if redis.call('EXISTS', KEYS[3]) == 1 then
  if r == 48 then redis.call('ZADD', KEYS[3], load, pod) else redis.call('ZREM', KEYS[3], pod) end
end
return {r - 48, load}
