-- set_link_if_absent: first writer wins.
-- ARGV: [1] svc, [2] pod, [3] ttl (-1 persistent, else seconds > 0)
-- Returns the pod actually linked. An existing link is returned untouched: its TTL is neither
-- refreshed nor made persistent, and it is never deleted.
local ttl = ttl_of(ARGV[3])
if ttl == nil or pod_of(ARGV[2]) == -1 then return redis.error_reply('ERR routestate set_link_if_absent: bad pod or ttl') end
local cur = pod_of(redis.call('GET', KEYS[1]))
if cur ~= -1 then return cur end
write_link(ARGV[1], ARGV[2], ttl)
return tonumber(ARGV[2])
