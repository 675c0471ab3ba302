-- remove_link: ARGV: [1] svc, [2] persist seconds, [3] (optional) pod.
-- With ARGV[3], removes only while the link points to that pod.
-- persist > 0: the link stays readable as a temporary link for that many seconds (delayed
-- removal) and leaves the persistent hash now; persist <= 0: deleted now.
-- Returns 1 when a link was removed (or scheduled for removal), else 0.
local persist = tonumber(ARGV[2])
if persist == nil or persist ~= math.floor(persist) then return redis.error_reply('ERR routestate remove_link: bad persist seconds') end
local cur = pod_of(redis.call('GET', KEYS[1]))
if ARGV[3] ~= nil and (cur == -1 or cur ~= pod_of(ARGV[3])) then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if cur == -1 then return 0 end
if persist > 0 then
  redis.call('EXPIRE', KEYS[1], persist)
else
  redis.call('DEL', KEYS[1])
end
return 1
