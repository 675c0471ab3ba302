-- try_set_link: set unless another pod holds a persistent link.
-- ARGV: [1] svc, [2] pod, [3] ttl (-1 persistent, else seconds > 0)
-- Returns {success (1|0), current pod, previous pod or -1}, always three integers.
-- A temporary link to another pod is overwritten; a persistent link to the same pod is re-set.
local ttl = ttl_of(ARGV[3])
local pod = pod_of(ARGV[2])
if ttl == nil or pod == -1 then return redis.error_reply('ERR routestate try_set_link: bad pod or ttl') end
local cur = pod_of(redis.call('GET', KEYS[1]))
if cur ~= -1 and cur ~= pod and redis.call('TTL', KEYS[1]) == -1 then
  return {0, cur, cur}
end
write_link(ARGV[1], ARGV[2], ttl)
return {1, pod, cur}
