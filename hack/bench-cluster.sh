#!/usr/bin/env bash
# System benchmarks of the operator on a PRIVATE local cluster (`make bench`).
# Never touches the shared cluster: everything runs in its own CLUSTER_DIR and is torn down.
#
# For each fleet size in SIZES (pods, in StatefulSets of 100 with a RouteState each; the fleet
# grows from one size to the next), hack/bench-fleet.py measures, beside the API server's own
# GET round trip in the same window:
#   - at rest: RouteState patch -> Redis p50/p99 and where its time goes, pod Ready -> routable,
#     the operator's VmRSS and CPU per heartbeat period (beside Redis' CPU for the same writes);
#   - during a 1 000-pod scale-up (10 more StatefulSets from 0 to 100, then back): the same
#     latencies, over every new pod;
#   - at the largest size, a restarted operator: until it published every pod again, and its
#     footprint (peak included: it lists every pod at once).
# Before the fleet, what one write to a RouteState costs the API server by the size of its status
# (hack/bench-apicost.py). At the first size also the server role's two report paths
# (hack/bench-reports.py): through
# the pods' annotations and straight to Redis.
# Each figure is the median over RUNS runs. Output lines start with "system/".
#
#   hack/bench-cluster.sh                              SIZES=1000 (about 8 minutes), RUNS=3
#   SIZES="1000 5000 10000" hack/bench-cluster.sh      the full fleet, by hand (about 15 minutes)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export RUNS=${RUNS:-3}
export PATCHES=${PATCHES:-20} # patch samples per run at rest, each two transitions
export PERIOD=${PERIOD:-2}    # updatePeriodSeconds of the benchmark RouteStates
SIZES=${SIZES:-1000}
PROFILE=${PROFILE:-release}
UP=1000                       # pods of the scale-up

log() { echo "bench-cluster: $*" >&2; }

max=0
for n in $SIZES; do
  [[ $n =~ ^[1-9][0-9]*00$ ]] || { log "SIZES: '$n' is not a positive multiple of 100"; exit 2; }
  ((n > max)) && max=$n
done

if [[ $PROFILE == release ]]; then cargo build --release --bin routestate >&2; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/routestate
else cargo build --bin routestate >&2; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/routestate; fi

export CLUSTER_DIR=${BENCH_CLUSTER_DIR:-$(mktemp -d /tmp/routestate-bench.XXXXXX)}
OP_PID=""
cleanup() {
  local rc=$?
  if ((rc)) && [[ -f ${OP_LOG:-} ]]; then log "failed ($rc); the operator's last log lines:"; tail -n 20 "$OP_LOG" >&2; fi
  [[ -n $OP_PID ]] && kill "$OP_PID" 2>/dev/null && wait "$OP_PID" 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
# Fake nodes of 4 000 pods for the largest size, its scale-up and the probes' extra pods; no
# real node (pods run on kwok).
export KWOK_NODES=$(((max + UP + 100 + 3999) / 4000)) CLUSTER_NODE=0
hack/cluster.sh up >&2
# shellcheck disable=SC1091
source "$CLUSTER_DIR/env"
# shellcheck disable=SC1091
source "$CLUSTER_DIR/config"
export API="https://127.0.0.1:$API_PORT" ADMIN_TOKEN REDIS_PORT NS=bench
"$BIN" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established crd/routestates.routestate.dev --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null
python3 hack/bench-apicost.py "$API" "$ADMIN_TOKEN" "$(cat "$CLUSTER_DIR/pids/kube-apiserver.pid")"

# The operator starts first, so it sees the StatefulSets grow like a running operator does. Its
# debug timings of each reconcile and publish (JSON) tell where a patch's time goes.
port=$("$ROOT/hack/free-port")
export OP_LOG=$CLUSTER_DIR/operator.log METRICS=http://127.0.0.1:$port/metrics
start_operator() {
  RUST_LOG=warn,routestate::operator::controller::reconcile=debug,routestate::operator::publisher=debug \
    "$BIN" run --namespace "$NS" --redis-url "$REDIS_URL" --http-addr "127.0.0.1:$port" --log-format json \
    >>"$OP_LOG" 2>&1 &
  OP_PID=$!
  OP_STARTED=$(date +%s.%N)
}
start_operator
export OP_PID REDIS_PID=$(cat "$CLUSTER_DIR/pids/redis.pid")

first=1
for n in $SIZES; do
  log "$n pods"
  python3 hack/bench-fleet.py steady "$n"
  if ((first)); then
    python3 hack/bench-reports.py "$API" "$ADMIN_TOKEN" "$REDIS_PORT" "$NS" $((n / 100)) "$OP_PID" \
      "$(cat "$CLUSTER_DIR/pids/kube-apiserver.pid")" "$REDIS_PID"
    first=0
  fi
  log "$n pods and a $UP-pod scale-up"
  python3 hack/bench-fleet.py scaleup "$n"
done
# A new operator process on the largest fleet: it lists every pod at once.
log "$max pods: the operator restarted"
kill "$OP_PID" && wait "$OP_PID" || true
start_operator
export OP_PID OP_STARTED
python3 hack/bench-fleet.py restarted "$max"
kill -0 "$OP_PID" || { log "the operator exited; its log: $OP_LOG"; exit 1; }
log "done"
