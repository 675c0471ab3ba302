#!/usr/bin/env bash
# System benchmarks of the operator on a PRIVATE local cluster (`make bench`).
# Never touches the shared cluster: everything runs in its own CLUSTER_DIR and is torn down.
#
#  8. reconcile latency with 1 000 pods (10 StatefulSets × 100): RouteState patch → the pod's
#     state changed in Redis (each sample a real transition), and a new pod's Ready (first seen
#     by a 2 ms API poll) → READY in Redis (a scale-up by one, so the value cannot be an old
#     pod's); p50 and p99
#     (goal p99 ≤ 250 ms). Limit measured in the same run: the API server's own round trip
#     (a GET of the RouteState), and a Redis round trip.
#  9. footprint with 2 000 pods (20 StatefulSets × 100): the operator's VmRSS (goal ≤ 64 MiB)
#     and CPU per heartbeat period (every pod republished), from /proc.
# 11. the server role's two report paths at 1 000 pods (hack/bench-reports.py): through the pods'
#     annotations (sustained rate, report → Redis p50/p99, API server and operator CPU per
#     report) and straight to Redis (operator and Redis CPU per report).
# Each figure is the median over RUNS runs. Output lines start with "system/".
#
#   hack/bench-cluster.sh              RUNS=5, release build
#   RUNS=3 PATCHES=20 hack/bench-cluster.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-5}
PATCHES=${PATCHES:-40}   # samples per run for each latency
PERIOD=${PERIOD:-2}      # updatePeriodSeconds of the benchmark RouteStates
PROFILE=${PROFILE:-release}

log() { echo "bench-cluster: $*" >&2; }

if [[ $PROFILE == release ]]; then cargo build --release --bin routestate >&2; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/routestate
else cargo build --bin routestate >&2; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/routestate; fi

export CLUSTER_DIR=${BENCH_CLUSTER_DIR:-$(mktemp -d /tmp/routestate-bench.XXXXXX)}
OP_PID=""
cleanup() {
  [[ -n $OP_PID ]] && kill "$OP_PID" 2>/dev/null && wait "$OP_PID" 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
hack/cluster.sh up >&2
# shellcheck disable=SC1091
source "$CLUSTER_DIR/env"
# shellcheck disable=SC1091
source "$CLUSTER_DIR/config"
API="https://127.0.0.1:$API_PORT"
NS=bench
"$BIN" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established crd/routestates.routestate.dev --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null

# StatefulSets svc-<from>..svc-<to-1> of 100 pods, each with a RouteState.
add_services() {
  local i
  for ((i = $1; i < $2; i++)); do
    cat <<EOF
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: svc-$i, namespace: $NS}
spec:
  serviceName: svc-$i
  replicas: 100
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: svc-$i}}
  template:
    metadata: {labels: {app: svc-$i}}
    spec: {containers: [{name: app, image: registry.k8s.io/pause:3.10}]}
---
apiVersion: routestate.dev/v1alpha1
kind: RouteState
metadata: {name: svc-$i, namespace: $NS}
spec: {updatePeriodSeconds: $PERIOD}
EOF
  done | kubectl apply -f - >/dev/null
}

ready_pods() { kubectl get pods -n "$NS" --no-headers 2>/dev/null | awk '$2=="1/1" && $3=="Running"' | wc -l; }
published() {
  local n=0 i c
  for ((i = 0; i < $1; i++)); do c=$(redis-cli -u "$REDIS_URL" hlen "sf:{$NS:state:svc-$i}"); n=$((n + c)); done
  echo "$n"
}
wait_until() { # what timeout cmd...
  local what=$1 t=$2; shift 2
  local deadline=$((SECONDS + t))
  until "$@"; do ((SECONDS < deadline)) || { log "timed out waiting for $what"; exit 1; }; sleep 0.5; done
}

start_operator() {
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  METRICS="http://127.0.0.1:$port/metrics"
  RUST_LOG=warn "$BIN" run --namespace "$NS" --redis-url "$REDIS_URL" --http-addr "127.0.0.1:$port" \
    >"$CLUSTER_DIR/operator.log" 2>&1 &
  OP_PID=$!
}

log "1 000 pods: 10 StatefulSets × 100"
t0=$SECONDS
# The operator starts first, so it sees the StatefulSets grow like a running operator does.
start_operator
add_services 0 10
wait_until "1000 ready pods" 900 bash -c "[[ \$(kubectl get pods -n $NS --no-headers 2>/dev/null | awk '\$2==\"1/1\" && \$3==\"Running\"' | wc -l) -ge 1000 ]]"
log "1000 pods ready in $((SECONDS - t0)) s"
wait_until "1000 pods published" 300 bash -c "n=0; for i in \$(seq 0 9); do c=\$(redis-cli -u $REDIS_URL hlen 'sf:{$NS:state:svc-'\$i'}'); n=\$((n+c)); done; [[ \$n -ge 1000 ]]"

# The latency probe: precise timestamps, HTTP to the API server with the admin token, RESP to Redis.
latency() {
  python3 - "$API" "$ADMIN_TOKEN" "$REDIS_PORT" "$NS" "$PATCHES" "$RUNS" <<'PY'
import json, socket, ssl, statistics, sys, time, urllib.request
api, token, rport, ns, patches, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def req(method, path, body=None, ctype="application/merge-patch+json"):
    r = urllib.request.Request(api + path, method=method, data=None if body is None else json.dumps(body).encode(),
                               headers={"Authorization": "Bearer " + token, "Content-Type": ctype})
    with urllib.request.urlopen(r, context=ctx, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")
rs = socket.create_connection(("127.0.0.1", rport)); rf = rs.makefile("rb")
def redis(*args):
    rs.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a.encode()), a) for a in args)).encode())
    line = rf.readline()
    if line[:1] == b"$":
        n = int(line[1:]); 
        if n < 0: return None
        v = rf.read(n + 2)[:-2]; return v.decode()
    return line[1:].strip().decode()
def routing(svc, idx):
    v = redis("HGET", "sf:{%s:state:%s}" % (ns, svc), str(idx))
    return None if v is None else v.rsplit("-", 1)[1]
def wait(cond, timeout=30):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if cond(): return time.monotonic()
        time.sleep(0.002)
    raise SystemExit("timed out")
def pct(v, p): v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
res = {"patch": [], "ready": [], "api": [], "redis": []}
rs_path = "/apis/routestate.dev/v1alpha1/namespaces/%s/routestates/%%s" % ns
for run in range(runs):
    pl, rl, al, dl = [], [], [], []
    # RouteState patch -> Redis: every sample is a real transition of one pod (READY -> DENY_NEW_CALL,
    # then back), and its starting state is checked first, so no sample waits for a state that is
    # already there.
    for k in range(patches):
        svc, idx = "svc-%d" % (k % 10), (k // 10 + run * 7) % 100
        for state, want, before in (("DenyNewCall", "1", "0"), (None, "0", "1")):
            if routing(svc, idx) != before:
                raise SystemExit("%s pod %d is %r before its sample, expected %r" % (svc, idx, routing(svc, idx), before))
            t0 = time.monotonic(); req("GET", rs_path % svc); al.append(time.monotonic() - t0)
            t0 = time.monotonic(); redis("PING"); dl.append(time.monotonic() - t0)
            t0 = time.monotonic()
            req("PATCH", rs_path % svc, {"spec": {"pods": [{"index": idx, "routingState": state}] if state else None}})
            pl.append(wait(lambda: routing(svc, idx) == want) - t0)
    # Pod Ready -> READY in Redis, for a pod that never had a state: scale a StatefulSet up by one,
    # so index 100 appears; the sample ends when Redis shows that index READY. Scaling back down
    # removes it (waited for) before the next sample.
    for k in range(max(5, patches // 4)):
        svc = "svc-%d" % (k % 10)
        name, scale = "%s-100" % svc, "/apis/apps/v1/namespaces/%s/statefulsets/%s/scale" % (ns, svc)
        if routing(svc, 100) is not None:
            raise SystemExit("%s index 100 is published before its sample" % svc)
        req("PATCH", scale, {"spec": {"replicas": 101}})
        def ready():
            try: p = req("GET", "/api/v1/namespaces/%s/pods/%s" % (ns, name))
            except Exception: return False
            return not p["metadata"].get("deletionTimestamp") and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
        t_ready = wait(ready, 60)
        t_rout = wait(lambda: routing(svc, 100) == "0", 60)
        rl.append(max(0.0, t_rout - t_ready))
        req("PATCH", scale, {"spec": {"replicas": 100}})
        wait(lambda: routing(svc, 100) is None, 120)
    for key, v in (("patch", pl), ("ready", rl), ("api", al), ("redis", dl)):
        res[key].append((pct(v, 50), pct(v, 99)))
def med(key, i): return statistics.median(x[i] for x in res[key]) * 1000
print("system/latency_patch_to_redis 1000 pods: p50 %.1f ms, p99 %.1f ms (goal p99 <= 250 ms); API GET p50 %.1f ms, Redis PING p50 %.2f ms (median of %d runs x %d transitions)"
      % (med("patch", 0), med("patch", 1), med("api", 0), med("redis", 0), runs, 2 * patches))
print("system/latency_ready_to_routable 1000 pods: p50 %.1f ms, p99 %.1f ms (goal p99 <= 250 ms; Ready seen by a polling GET, so this is a lower bound by up to one API round trip)"
      % (med("ready", 0), med("ready", 1)))
PY
}
latency

footprint() { # pods
  local samples=() cpus=() i rss t0 t1 c0 c1 hz ticks
  hz=$(getconf CLK_TCK)
  for ((i = 0; i < RUNS; i++)); do
    # CPU over 5 heartbeat periods: every pod is republished once per period.
    read -r c0 < <(awk '{print $14 + $15}' "/proc/$OP_PID/stat")
    t0=$(date +%s.%N)
    sleep $((5 * PERIOD)) # the measurement window itself
    read -r c1 < <(awk '{print $14 + $15}' "/proc/$OP_PID/stat")
    t1=$(date +%s.%N)
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$OP_PID/status")
    samples+=("$rss")
    cpus+=("$(python3 -c "print(($c1 - $c0) / $hz / (($t1 - $t0) / $PERIOD) * 1000)")")
  done
  ticks=$(curl -s "$METRICS" | awk '/^routestate_redis_publish_duration_seconds_count/ {print $2}')
  python3 - "$1" "${samples[*]}" "${cpus[*]}" "$ticks" <<'PY'
import statistics, sys
pods, rss, cpu, ticks = int(sys.argv[1]), [int(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()], sys.argv[4]
print("system/footprint %d pods: VmRSS %.1f MiB (goal <= 64 MiB), CPU %.1f ms per heartbeat period (%d pods republished), %s publish ticks so far (median of %d)"
      % (pods, statistics.median(rss) / 1024, statistics.median(cpu), pods, ticks, len(rss)))
PY
}
footprint 1000

# The two report paths of the server role at 1 000 pods (hack/bench-reports.py): through the pods'
# annotations (API server + operator on the path) and straight to Redis (neither).
python3 hack/bench-reports.py "$API" "$ADMIN_TOKEN" "$REDIS_PORT" "$NS" 10 "$OP_PID" \
  "$(cat "$CLUSTER_DIR/pids/kube-apiserver.pid")" "$(cat "$CLUSTER_DIR/pids/redis.pid")"

log "2 000 pods: 10 more StatefulSets"
add_services 10 20
wait_until "2000 ready pods" 900 bash -c "[[ \$(kubectl get pods -n $NS --no-headers 2>/dev/null | awk '\$2==\"1/1\" && \$3==\"Running\"' | wc -l) -ge 2000 ]]"
wait_until "2000 pods published" 300 bash -c "n=0; for i in \$(seq 0 19); do c=\$(redis-cli -u $REDIS_URL hlen 'sf:{$NS:state:svc-'\$i'}'); n=\$((n+c)); done; [[ \$n -ge 2000 ]]"
footprint 2000
log "done"
