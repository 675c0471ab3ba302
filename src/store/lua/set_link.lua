-- set_link: unconditional overwrite.
-- ARGV: [1] svc, [2] pod, [3] ttl (-1 persistent, else seconds > 0)
-- Returns the previous pod, or -1 when there was none.
local ttl = ttl_of(ARGV[3])
if ttl == nil or pod_of(ARGV[2]) == -1 then return redis.error_reply('ERR routestate set_link: bad pod or ttl') end
local prev = pod_of(redis.call('GET', KEYS[1]))
write_link(ARGV[1], ARGV[2], ttl)
return prev
