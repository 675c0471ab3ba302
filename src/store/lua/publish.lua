-- publish: one operator tick for one service, in one atomic step (wire contract v1.1 §6).
-- KEYS: [1] state hash sf:{<ns>:state:<svc>}, [2] its meta hash, [3] floor hash, [4] report
--       hash, [5] candidate index (all one hash tag, so one Redis Cluster slot).
-- ARGV: [1] updatePeriodSeconds (> 0), [2] cpu factor in millionths, [3] desired replicas, then
--       per published pod, in ascending index: pod index, floor, the operator's report of it
--       (from its annotations).
-- Every published pod gets the state of its floor and its report — the report the pod wrote to
-- the report hash itself if it has a valid one, else the operator's — stamped with this server's
-- TIME: routing = the most restrictive of the two, load = the floor's override, else the
-- report's weighted load. The state hash, the floor hash and the index are rewritten whole, so a
-- pod that is no longer published disappears from all three; its report is kept unless its index
-- is at or above the replicas (gone for good). The index lives for one staleness window.
-- Returns {now, load1, routing1, load2, routing2, ...} in ARGV order.
local period, ppm, replicas = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not period or period < 1 or period % 1 ~= 0 or not ppm or ppm < 0 or ppm > 1000000 or ppm % 1 ~= 0
    or not replicas or replicas < 0 or (#ARGV - 3) % 3 ~= 0 then
  return redis.error_reply('ERR routestate publish: bad period, cpu factor, replicas or pod list')
end
local now = server_ms()

local reports = {}
local raw = redis.call('HGETALL', KEYS[4])
for i = 1, #raw - 1, 2 do reports[raw[i]] = raw[i + 1] end

local states, floors, index, out, published = {}, {}, {'+inf', '~'}, {now}, {}
for i = 4, #ARGV, 3 do
  local pod, floor_v, own = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local fr, override = floor_of(floor_v)
  local load_state, waiting, r = triple(reports[pod])
  if not load_state then load_state, waiting, r = triple(own) end
  if pod_of(pod) == -1 or not fr or not load_state then
    return redis.error_reply('ERR routestate publish: bad pod, floor or report for pod ' .. pod)
  end
  local load = override or weighted(ppm, waiting, load_state)
  if fr > r then r = fr end
  published[pod] = true
  states[#states + 1] = pod
  states[#states + 1] = state_string(load, now, r)
  floors[#floors + 1] = pod
  floors[#floors + 1] = floor_v
  if r == 48 then
    index[#index + 1] = load
    index[#index + 1] = pod
  end
  out[#out + 1] = load
  out[#out + 1] = r - 48
end

redis.call('DEL', KEYS[1], KEYS[3], KEYS[5])
chunked('HSET', KEYS[1], states)
chunked('HSET', KEYS[3], floors)
chunked('ZADD', KEYS[5], index)
redis.call('PEXPIRE', KEYS[5], period * 3000)
redis.call('HSET', KEYS[2], 'updatePeriodSeconds', period, 'cpuFactorPpm', ppm)
local gone = {}
for field in pairs(reports) do
  local idx = pod_of(field)
  if not published[field] and (idx == -1 or idx >= replicas) then gone[#gone + 1] = field end
end
chunked('HDEL', KEYS[4], gone)
return out
