-- pick_and_link: the whole placement of a user in one script.
-- KEYS: [1] link, [2] link hash, and with mode 'redis' also [3] state hash sf:{<ns>:state:<svc>},
--       [4] its meta hash and, optionally (v1.1), [5] its candidate index (standalone Redis: all
--       on one server).
-- ARGV: [1] svc, [2] temporary TTL seconds (> 0), [3] random u32, [4] good range, [5] mode,
--   mode 'redis':  [6] fallback staleness window ms (used when the meta hash has no valid
--                  updatePeriodSeconds); time from this server's TIME;
--   mode 'inline': [6] now ms, [7] staleness window ms, [8..] state hash field, value pairs
--                  (Redis Cluster: the caller read them from the state slot in one round trip).
-- Returns {pod, created}: the existing link when that pod is still available (alive, not
-- SHUTDOWN), created = 0; else a good pod written as a temporary link, created = 1; else {-1, 0}.
--
-- With a live candidate index (mode 'redis', KEYS[5] exists) the work is logarithmic: the
-- operator rewrites every state of the service and the index together and the index expires
-- after one staleness window, so while it exists every state in the hash is fresh. The pick is
-- then the k-th good pod in the index's order (load, then index as text), k = random mod #good.
-- Without it, every entry of the state hash is judged (v1): the pick is good[random mod #good]
-- in ascending pod index.
local svc, ttl, random, range, mode = ARGV[1], ttl_of(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if ttl == nil or ttl == -1 or random == nil or range == nil then
  return redis.error_reply('ERR routestate pick_and_link: bad ttl, random or range')
end
if mode ~= 'redis' and mode ~= 'inline' then
  return redis.error_reply('ERR routestate pick_and_link: mode must be redis or inline')
end

local function link(pod, cur)
  redis.call('SET', KEYS[1], pod, 'EX', ttl)
  -- A replaced persistent link (to a pod no longer available) leaves the persistent hash.
  if cur ~= -1 then redis.call('HDEL', KEYS[2], svc) end
  return {tonumber(pod), 1}
end

local cur = pod_of(redis.call('GET', KEYS[1]))

if mode == 'redis' and KEYS[5] then
  local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if #first > 0 then
    if cur ~= -1 then
      local _, _, r = triple(redis.call('HGET', KEYS[3], cur))
      if r and r ~= 50 then return {cur, 0} end
    end
    if first[1] == '~' then return {-1, 0} end
    local n = redis.call('ZCOUNT', KEYS[5], '-inf', tonumber(first[2]) + range)
    local k = random % n
    if k == 0 then return link(first[1], cur) end
    return link(redis.call('ZRANGE', KEYS[5], k, k)[1], cur)
  end
end

local now, window, entries, first
if mode == 'redis' then
  now = server_ms()
  window = tonumber(ARGV[6])
  local period = pod_of(redis.call('HGET', KEYS[4], 'updatePeriodSeconds'))
  if period > 0 then window = period * 3000 end
  first = 1  -- entries: read below, only when the existing link cannot be kept
else
  now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
  entries = ARGV
  first = 8
end
if now == nil or window == nil then return redis.error_reply('ERR routestate pick_and_link: bad time or window') end

-- Keep an existing link whose pod is available (alive, not SHUTDOWN). With the state hash at
-- hand that is one HGET, so returning users never pay for the full scan.
if cur ~= -1 and mode == 'redis' then
  local r = judge(redis.call('HGET', KEYS[3], cur), now, window)
  if r and r ~= 50 then return {cur, 0} end
end
if mode == 'redis' then entries = redis.call('HGETALL', KEYS[3]) end

-- Judge every entry; garbage is skipped, never an error.
local available = {}
local ready_idx, ready_load, n_ready, min, max_idx = {}, {}, 0, nil, 0
for i = first, #entries - 1, 2 do
  local f = entries[i]
  local idx = pod_of(f)
  if idx ~= -1 then
    local r, load = judge(entries[i + 1], now, window)
    if r then
      available[idx] = (r ~= 50)
      if r == 48 then
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
return link(pod, cur)
