-- routestate wire contract v1.1: helpers prepended (after common.lua) to every script that reads
-- or writes pod states. Mirrors routestate_core (pod_state, load, report, selection).

-- Loads saturate at 2^53 - 1 so every comparison is exact (Lua numbers and sorted-set scores are
-- doubles).
local MAX_LOAD = 9007199254740991
local find, byte, sub, fmod, floor, format = string.find, string.byte, string.sub, math.fmod, math.floor, string.format

-- A decimal digit string that fits u64, as a number (leading zeros allowed), else nil. Up to 15
-- digits always fits, so the common case is one tonumber.
local function u64_of(s)
  if s == nil or s == '' or find(s, '[^%d]') then return nil end
  if #s <= 15 then return tonumber(s) end
  local digits = string.gsub(s, '^0+', '')
  if #digits > 20 or (#digits == 20 and digits > '18446744073709551615') then return nil end
  return tonumber(s)
end

local function clamp(n)
  if n > MAX_LOAD then return MAX_LOAD end
  return n
end

-- "<a>-<b>-<r>" with a and b decimal u64 and r one of 0, 1, 2, at most 64 bytes (the shape of
-- pod states and pod reports): a, b as numbers and r as its byte (48, 49, 50), else nil. Plain
-- find/byte/sub rather than captures: on big services this is a script's whole cost.
local function triple(v)
  if v == nil or v == false then return nil end
  local n = #v
  if n < 5 or n > 64 or find(v, '[^%d%-]') then return nil end
  local d1 = find(v, '-', 1, true)
  local d2 = d1 and find(v, '-', d1 + 1, true)
  local r = byte(v, n)
  if d2 ~= n - 1 or d1 == 1 or d2 == d1 + 1 or r < 48 or r > 50 then return nil end
  local a, b = u64_of(sub(v, 1, d1 - 1)), u64_of(sub(v, d1 + 1, d2 - 1))
  if a == nil or b == nil then return nil end
  return a, b, r
end

-- Judges a pod state at `now` with the staleness window: nil for garbage or stale, else the
-- routing byte and the load (at most MAX_LOAD).
local function judge(v, now, window)
  local load, ts, r = triple(v)
  if not load or (ts < now and now - ts > window) then return nil end
  return r, clamp(load)
end

-- The floor "<r>" or "<r>-<loadOverride>": the routing byte and the override (or nil), or nil.
local function floor_of(v)
  if v == nil or v == false then return nil end
  local r = byte(v, 1)
  if r == nil or r < 48 or r > 50 then return nil end
  if #v == 1 then return r, nil end
  if byte(v, 2) ~= 45 then return nil end
  local load = u64_of(sub(v, 3))
  if load == nil then return nil end
  return r, clamp(load)
end

-- trunc(ppm/1e6 x w + (1 - ppm/1e6) x l), exactly, for w, l <= MAX_LOAD: both are split at 10^6
-- (fmod is exact), so no product exceeds 2^53.
local function weighted(ppm, w, l)
  local S = 1000000
  w, l = clamp(w), clamp(l)
  local wl, ll = fmod(w, S), fmod(l, S)
  return ppm * ((w - wl) / S) + (S - ppm) * ((l - ll) / S) + floor((ppm * wl + (S - ppm) * ll) / S)
end

-- A pod state string; %d, since Lua's tostring would write large numbers in exponent notation.
local function state_string(load, now, r)
  return format('%d-%d-%c', load, now, r)
end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

-- Runs a variadic command over a long list in chunks: unpack has a small fixed limit.
local function chunked(command, key, list)
  local chunk = 2000
  for i = 1, #list, chunk do
    redis.call(command, key, unpack(list, i, math.min(i + chunk - 1, #list)))
  end
end
