-- routestate wire contract v1: helpers prepended to every link script (see docs/wire-contract.md).
-- KEYS[1] is the link string sf:{<ns>:lk:<uid>}<svc>, KEYS[2] the uid's persistent-link hash
-- sf:{<ns>:lk:<uid>}; both share one hash tag, hence one Redis Cluster slot.

-- A canonical decimal u32 ("0", "17"; no sign, no leading zero) or -1. Link values and state
-- hash fields that are anything else count as absent, exactly as the Rust reader treats them.
-- tostring(n) == v rejects leading zeros, signs, spaces, exponents and hex in one comparison.
local function pod_of(v)
  local n = tonumber(v)
  if n and n >= 0 and n <= 4294967295 and n % 1 == 0 and tostring(n) == v then return n end
  return -1
end

-- The TTL argument: -1 (persistent) or a positive whole number of seconds; nil otherwise.
local function ttl_of(v)
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or (n ~= -1 and n < 1) then return nil end
  return n
end

-- Writes the link: persistent = no TTL and recorded in the uid's hash; temporary = SET with EX
-- (one command, so the key never exists without its TTL) and not in the hash.
local function write_link(svc, pod, ttl)
  if ttl == -1 then
    redis.call('SET', KEYS[1], pod)
    redis.call('HSET', KEYS[2], svc, pod)
  else
    redis.call('SET', KEYS[1], pod, 'EX', ttl)
    redis.call('HDEL', KEYS[2], svc)
  end
end
