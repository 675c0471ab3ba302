-- pick_candidate: the state-slot half of a placement on Redis Cluster (wire contract v1.1 §6),
-- where the link lives in another slot. A read-only script.
-- KEYS: [1] state hash, [2] candidate index. ARGV: [1] the uid's current link (pod or -1),
-- [2] random u32, [3] good range.
-- Returns {0, -1} when the index is not live (the caller judges the whole hash instead, v1);
-- {1, cur} when the current link's pod is available (keep it); {3, -1} when no pod takes new
-- users; else {2, pod}: the pick, chosen as pick_and_link.lua chooses with a live index.
local cur, random, range = pod_of(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if random == nil or range == nil then return redis.error_reply('ERR routestate pick_candidate: bad random or range') end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 0 then return {0, -1} end
if cur ~= -1 then
  local _, _, r = triple(redis.call('HGET', KEYS[1], cur))
  if r and r ~= 50 then return {1, cur} end
end
if first[1] == '~' then return {3, -1} end
local n = redis.call('ZCOUNT', KEYS[2], '-inf', tonumber(first[2]) + range)
local k = random % n
if k == 0 then return {2, tonumber(first[1])} end
return {2, tonumber(redis.call('ZRANGE', KEYS[2], k, k)[1])}
