-- pick_and_link: the whole placement of a user in one script.
-- KEYS: [1] link, [2] link hash, and with mode 'redis' also [3] state hash sf:{<ns>:state:<svc>}
--       and [4] its meta hash sf:{<ns>:state:<svc>}meta (standalone Redis: all on one server).
-- ARGV: [1] svc, [2] temporary TTL seconds (> 0), [3] random u32, [4] good range, [5] mode,
--   mode 'redis':  [6] fallback staleness window ms (used when the meta hash has no valid
--                  updatePeriodSeconds); time from this server's TIME;
--   mode 'inline': [6] now ms, [7] staleness window ms, [8..] state hash field, value pairs
--                  (Redis Cluster: the caller read them from the state slot in one round trip).
-- Returns {pod, created}: the existing link when that pod is still available (alive, not
-- SHUTDOWN), created = 0; else a good pod written as a temporary link, created = 1; else {-1, 0}.
local svc, ttl, random, range, mode = ARGV[1], ttl_of(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if ttl == nil or ttl == -1 or random == nil or range == nil then
  return redis.error_reply('ERR routestate pick_and_link: bad ttl, random or range')
end

local now, window, entries, first
if mode == 'redis' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  window = tonumber(ARGV[6])
  local period = pod_of(redis.call('HGET', KEYS[4], 'updatePeriodSeconds'))
  if period > 0 then window = period * 3000 end
  first = 1  -- entries: read below, only when the existing link cannot be kept
elseif mode == 'inline' then
  now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
  entries = ARGV
  first = 8
else
  return redis.error_reply('ERR routestate pick_and_link: mode must be redis or inline')
end
if now == nil or window == nil then return redis.error_reply('ERR routestate pick_and_link: bad time or window') end

-- A decimal digit string that fits u64 (leading zeros allowed, as the Rust parser allows).
-- Up to 15 digits always fits, so the common case is one tonumber.
local function u64_of(s)
  if #s <= 15 then return tonumber(s) end
  local digits = string.gsub(s, '^0+', '')
  if #digits > 20 or (#digits == 20 and digits > '18446744073709551615') then return nil end
  return tonumber(s)
end

-- Judges one state string like core::PodState::parse + freshness: nil for garbage or stale,
-- else the routing state byte (48 READY, 49 DENY_NEW_CALL, 50 SHUTDOWN) and, for READY, the
-- load. Three '-'-separated decimal fields, the last one 0, 1 or 2, at most 64 bytes. Plain
-- find/byte/sub rather than captures: this is the script's whole cost on big services.
local find, byte, sub = string.find, string.byte, string.sub
local function judge(v)
  local n = #v
  if n < 5 or n > 64 or find(v, '[^%d%-]') then return nil end
  local d1 = find(v, '-', 1, true)
  local d2 = d1 and find(v, '-', d1 + 1, true)
  local r = byte(v, n)
  if d2 ~= n - 1 or d1 == 1 or d2 == d1 + 1 or r > 50 then return nil end
  local ts = u64_of(sub(v, d1 + 1, d2 - 1))
  if not ts or (ts < now and now - ts > window) then return nil end
  if r ~= 48 then return r end
  local load = u64_of(sub(v, 1, d1 - 1))
  if not load then return nil end
  return r, load
end

-- Keep an existing link whose pod is available (alive, not SHUTDOWN). With the state hash at
-- hand that is one HGET, so returning users never pay for the full scan.
local cur = pod_of(redis.call('GET', KEYS[1]))
if cur ~= -1 and mode == 'redis' then
  local v = redis.call('HGET', KEYS[3], cur)
  local r = v and judge(v)
  if r and r ~= 50 then return {cur, 0} end
end
if mode == 'redis' then entries = redis.call('HGETALL', KEYS[3]) end

-- Judge every entry; garbage is skipped, never an error.
local available = {}
local ready_idx, ready_load, n_ready, min, max_idx = {}, {}, 0, nil, 0
for i = first, #entries - 1, 2 do
  local f = entries[i]
  if f == '0' or find(f, '^[1-9]%d*$') then
    local idx = tonumber(f)
    local r, load = judge(entries[i + 1])
    if r and idx <= 4294967295 then
      available[idx] = (r ~= 50)
      if load then
        n_ready = n_ready + 1
        ready_idx[n_ready], ready_load[n_ready] = idx, load
        if min == nil or load < min then min = load end
        if idx > max_idx then max_idx = idx end
      end
    end
  end
end

if cur ~= -1 and available[cur] then return {cur, 0} end
if n_ready == 0 then return {-1, 0} end

-- good in ascending pod index. StatefulSet indices are dense, so a scan over 0..max index
-- beats sorting; sparse (odd) indices fall back to a sort.
local limit, n_good, pod = min + range, 0, nil
if max_idx <= 4 * n_ready + 64 then
  local is_good = {}
  for k = 1, n_ready do
    if ready_load[k] <= limit then is_good[ready_idx[k]] = true; n_good = n_good + 1 end
  end
  local want = random % n_good
  for idx = 0, max_idx do
    if is_good[idx] then
      if want == 0 then pod = idx; break end
      want = want - 1
    end
  end
else
  local good = {}
  for k = 1, n_ready do
    if ready_load[k] <= limit then n_good = n_good + 1; good[n_good] = ready_idx[k] end
  end
  table.sort(good)
  pod = good[(random % n_good) + 1]
end
redis.call('SET', KEYS[1], pod, 'EX', ttl)
-- A replaced persistent link (to a pod no longer available) leaves the persistent hash.
if cur ~= -1 then redis.call('HDEL', KEYS[2], svc) end
return {pod, 1}
