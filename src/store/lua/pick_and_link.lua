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
  entries = redis.call('HGETALL', KEYS[3])
  first = 1
elseif mode == 'inline' then
  now, window = tonumber(ARGV[6]), tonumber(ARGV[7])
  entries = ARGV
  first = 8
else
  return redis.error_reply('ERR routestate pick_and_link: mode must be redis or inline')
end
if now == nil or window == nil then return redis.error_reply('ERR routestate pick_and_link: bad time or window') end

-- A decimal that fits u64 (leading zeros allowed, as the Rust parser allows them).
local function u64_of(s)
  local digits = string.gsub(s, '^0+', '')
  if #digits > 20 or (#digits == 20 and digits > '18446744073709551615') then return nil end
  return tonumber(s)
end

-- Parse every entry like core::PodState::parse; garbage is skipped, never an error.
local available = {}
local ready_idx, ready_load, n_ready, min = {}, {}, 0, nil
for i = first, #entries - 1, 2 do
  local idx, v = pod_of(entries[i]), entries[i + 1]
  if idx ~= -1 and #v <= 64 then
    local l, t, r = string.match(v, '^(%d+)%-(%d+)%-([012])$')
    if l then
      local load, ts = u64_of(l), u64_of(t)
      if load and ts and (ts >= now or now - ts <= window) then
        available[idx] = (r ~= '2')
        if r == '0' then
          n_ready = n_ready + 1
          ready_idx[n_ready], ready_load[n_ready] = idx, load
          if min == nil or load < min then min = load end
        end
      end
    end
  end
end

local cur = pod_of(redis.call('GET', KEYS[1]))
if cur ~= -1 and available[cur] then return {cur, 0} end
if n_ready == 0 then return {-1, 0} end

local limit, good = min + range, {}
for k = 1, n_ready do
  if ready_load[k] <= limit then good[#good + 1] = ready_idx[k] end
end
table.sort(good)
local pod = good[(random % #good) + 1]
redis.call('SET', KEYS[1], pod, 'EX', ttl)
redis.call('HDEL', KEYS[2], svc)
return {pod, 1}
