-- get_link_if_persist: KEYS[1] only. Returns the pod when the link exists and has no TTL, else -1.
local cur = pod_of(redis.call('GET', KEYS[1]))
if cur ~= -1 and redis.call('TTL', KEYS[1]) == -1 then return cur end
return -1
