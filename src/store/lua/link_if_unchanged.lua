-- link_if_unchanged: the link-slot half of a placement on Redis Cluster (wire contract v1.1 §6):
-- writes the pick as a temporary link only while the uid's link is still what the pick was
-- judged against, so a concurrent placement is never overwritten.
-- ARGV: [1] svc, [2] the link the pick was judged against (pod or -1), [3] pod, [4] TTL seconds.
-- Returns {pod, 1} when written; {current link or -1, 0} when it changed meanwhile (nothing
-- written: judge again).
local expected, pod, ttl = pod_of(ARGV[2]), pod_of(ARGV[3]), ttl_of(ARGV[4])
if pod == -1 or ttl == nil or ttl == -1 then
  return redis.error_reply('ERR routestate link_if_unchanged: bad pod or ttl')
end
local cur = pod_of(redis.call('GET', KEYS[1]))
if cur ~= expected then return {cur, 0} end
redis.call('SET', KEYS[1], pod, 'EX', ttl)
if cur ~= -1 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return {pod, 1}
