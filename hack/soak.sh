#!/usr/bin/env bash
# `make soak`: a bounded churn run against a PRIVATE local cluster (never the shared one) that
# checks invariants continuously and stops by itself after SOAK_SECONDS (default 600).
#
# Churn, one action every ~2 s at random: delete a pod (the StatefulSet recreates it), patch a
# RouteState's per-pod overrides, annotate a pod's load, scale a StatefulSet between 2 and 6,
# SIGKILL and restart Redis (empty).
# Invariants, checked every second:
#   - the operator process is alive (no panic, no exit);
#   - every state hash holds only canonical pod indexes below the StatefulSet's replicas (after a
#     scale-down has had two periods) with well-formed values;
#   - outside the two periods after a Redis restart, every published state is fresh (age ≤ 3
#     periods = the staleness window);
#   - the links seeded by this script are never changed by the operator (re-seeded after a Redis
#     restart wipes them);
# and at the end, once the last actions have settled, Redis equals what the API objects call for:
# exactly the Ready pods, each with the routing state and weighted load the objects give it.
# Exit code 0 only if no invariant was ever violated; violations are printed as they happen.
#
#   hack/soak.sh                 10 minutes
#   SOAK_SECONDS=120 hack/soak.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SOAK_SECONDS=${SOAK_SECONDS:-600}
PERIOD=2
SERVICES=3
NS=soak

log() { echo "soak: $(date -u +%H:%M:%S) $*" >&2; }
violations=0
violation() { violations=$((violations + 1)); log "VIOLATION: $*"; }
cargo build --bin routestate >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/routestate

export CLUSTER_DIR=$(mktemp -d /tmp/routestate-soak.XXXXXX)
OP_PID=""
cleanup() {
  [[ -n $OP_PID ]] && kill "$OP_PID" 2>/dev/null && wait "$OP_PID" 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
hack/cluster.sh up >&2
# shellcheck disable=SC1091
source "$CLUSTER_DIR/env"
"$BIN" crd | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established crd/routestates.routestate.dev --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null
# The operator starts before the RouteStates exist (a restart with existing ones is
# tests/it/reliability_restart.rs).
RUST_LOG=warn "$BIN" run --namespace "$NS" --redis-url "$REDIS_URL" --http-addr 127.0.0.1:0 >"$CLUSTER_DIR/operator.log" 2>&1 &
OP_PID=$!
for ((i = 0; i < SERVICES; i++)); do
  cat <<EOF
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: s$i, namespace: $NS}
spec:
  serviceName: s$i
  replicas: 4
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: s$i}}
  template:
    metadata: {labels: {app: s$i}}
    spec: {containers: [{name: app, image: registry.k8s.io/pause:3.10}]}
---
apiVersion: routestate.dev/v1alpha1
kind: RouteState
metadata: {name: s$i, namespace: $NS}
spec: {updatePeriodSeconds: $PERIOD}
EOF
done | kubectl apply -f - >/dev/null

# Seeds two links through the CLI (what a pod and a client write); retried for 10 s because a
# just-restarted Redis may refuse the first connection.
seed_links() {
  local deadline=$((SECONDS + 10))
  until "$BIN" links set "$NS/s0" soak-user-p 1 --persistent --redis-url "$REDIS_URL" >/dev/null &&
    "$BIN" links set "$NS/s1" soak-user-t 2 --ttl 100000 --redis-url "$REDIS_URL" >/dev/null; do
    ((SECONDS < deadline)) || { violation "could not seed links for 10 s"; return 0; }
    sleep 0.5
  done
}
links_snapshot() {
  { redis-cli -u "$REDIS_URL" get "sf:{$NS:lk:soak-user-p}s0"; redis-cli -u "$REDIS_URL" hgetall "sf:{$NS:lk:soak-user-p}"
    redis-cli -u "$REDIS_URL" get "sf:{$NS:lk:soak-user-t}s1"; } | tr '\n' ' '
}
seed_links
LINKS=$(links_snapshot)


last_restart=0   # SECONDS of the last Redis restart
last_scale=0

# Checks the state hashes; $1 = 1 to require freshness.
check_states() {
  local fresh=$1 i reps now
  now=$(redis-cli -u "$REDIS_URL" time | head -1)
  for ((i = 0; i < SERVICES; i++)); do
    reps=$(kubectl get sts "s$i" -n "$NS" -o jsonpath='{.spec.replicas}' 2>/dev/null || echo 99)
    # Piped, redis-cli prints raw: field and value on alternate lines.
    redis-cli -u "$REDIS_URL" hgetall "sf:{$NS:state:s$i}" 2>/dev/null | paste - - |
      while IFS=$'\t' read -r field value; do
        [[ -z $field ]] && continue
        [[ $field =~ ^(0|[1-9][0-9]*)$ ]] || { echo "s$i: non-canonical field '$field'"; continue; }
        [[ $value =~ ^[0-9]+-([0-9]+)-[012]$ ]] || { echo "s$i: malformed value '$value' for pod $field"; continue; }
        if ((SECONDS - last_scale > 2 * PERIOD)) && ((field >= reps)); then echo "s$i: pod $field published with $reps replicas"; fi
        if ((fresh)); then
          local age=$((now - ${BASH_REMATCH[1]} / 1000))
          ((age <= 3 * PERIOD + 1)) || echo "s$i: pod $field state ${age}s old"
        fi
      done
  done
}

log "waiting for the first publish"
deadline=$((SECONDS + 180))
until [[ $(redis-cli -u "$REDIS_URL" hlen "sf:{$NS:state:s$((SERVICES - 1))}") -ge 4 ]]; do
  ((SECONDS < deadline)) || { log "nothing published after 180 s"; exit 1; }
  sleep 0.5
done
log "soaking for ${SOAK_SECONDS}s"
start=$SECONDS
actions=0
next_action=$SECONDS
declare -A counts=()
while ((SECONDS - start < SOAK_SECONDS)); do
  kill -0 "$OP_PID" 2>/dev/null || { violation "the operator exited"; tail -20 "$CLUSTER_DIR/operator.log" >&2; break; }
  fresh=0; ((SECONDS - last_restart > 2 * PERIOD)) && fresh=1
  while read -r v; do [[ -n $v ]] && violation "$v"; done < <(check_states "$fresh")
  now_links=$(links_snapshot)
  [[ $now_links == "$LINKS" ]] || violation "links changed: '$LINKS' -> '$now_links'"
  if ((SECONDS >= next_action)); then
    s=$((RANDOM % SERVICES)); pod=$((RANDOM % 4))
    case $((RANDOM % 10)) in
      0 | 1 | 2) kind=delete-pod; kubectl delete pod "s$s-$pod" -n "$NS" --wait=false >/dev/null 2>&1 || true ;;
      3 | 4) kind=patch-routestate
         st=$(printf 'Ready\nDenyNewCall\nShutdown\n' | shuf -n1)
         kubectl patch routestate "s$s" -n "$NS" --type=merge -p "{\"spec\":{\"pods\":[{\"index\":$pod,\"routingState\":\"$st\"}]}}" >/dev/null || true ;;
      5 | 6) kind=annotate-load; kubectl annotate pod "s$s-$pod" -n "$NS" --overwrite "routestate.dev/load=$RANDOM" >/dev/null 2>&1 || true ;;
      7 | 8) kind=scale; kubectl scale sts "s$s" -n "$NS" --replicas=$((2 + RANDOM % 5)) >/dev/null || true; last_scale=$SECONDS ;;
      9) kind=redis-restart
         rpid=$(cat "$CLUSTER_DIR/pids/redis.pid")
         kill -9 "$rpid"
         # `start` does nothing while the old PID still answers kill -0: wait until it is gone.
         while kill -0 "$rpid" 2>/dev/null; do sleep 0.05; done
         hack/cluster.sh start redis >/dev/null 2>&1 || violation "Redis did not restart"
         last_restart=$SECONDS
         seed_links; LINKS=$(links_snapshot) ;;
    esac
    counts[$kind]=$((${counts[$kind]:-0} + 1))
    actions=$((actions + 1))
    next_action=$((SECONDS + 2))
  fi
  sleep 1
done

log "final comparison: Redis must equal what the API objects call for (polled up to 60 s while the last actions settle)"
compare() {
  python3 - "$NS" "$SERVICES" <<'PY'
import json, os, subprocess, sys
from fractions import Fraction
ns, n = sys.argv[1], int(sys.argv[2])
def sh(*a): return subprocess.run(a, capture_output=True, text=True, check=True).stdout
order = {"Ready": 0, "DenyNewCall": 1, "Shutdown": 2}
bad = []
for i in range(n):
    svc = "s%d" % i
    rs = json.loads(sh("kubectl", "get", "routestate", svc, "-n", ns, "-o", "json"))
    spec = rs["spec"]
    over = {p["index"]: order[p["routingState"]] for p in spec.get("pods", []) if "routingState" in p}
    cpu = Fraction(str(spec.get("cpuFactor", 0.7)))
    pods = json.loads(sh("kubectl", "get", "pods", "-n", ns, "-l", "app=" + svc, "-o", "json"))["items"]
    # The API's answer, pod by pod: published only while Ready and not terminating (the churn
    # leaves no terminating pod behind once it has settled), routing = the override (the soak
    # sets no routing annotation), weighted load = trunc(cpu × waiting + (1 − cpu) × load) from
    # the annotations, computed exactly.
    want = {}
    for p in pods:
        meta = p["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        if not any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])):
            continue
        idx = int(meta["labels"].get("apps.kubernetes.io/pod-index", meta["name"].rsplit("-", 1)[1]))
        ann = meta.get("annotations", {})
        load, waiting = int(ann.get("routestate.dev/load", 0)), int(ann.get("routestate.dev/waiting-tasks", 0))
        want[idx] = (int(cpu * waiting + (1 - cpu) * load), over.get(idx, 0))
    vals = sh("redis-cli", "-u", os.environ["REDIS_URL"], "hgetall", "sf:{%s:state:%s}" % (ns, svc)).split()
    got = {}
    for k in range(0, len(vals), 2):
        load, _, routing = vals[k + 1].split("-")
        got[int(vals[k])] = (int(load), int(routing))
    if got != want:
        bad.append("%s: Redis %s, API %s" % (svc, sorted(got.items()), sorted(want.items())))
print("\n".join(bad))
PY
}
deadline=$((SECONDS + 60))
until final=$(compare) && [[ -z $final ]]; do
  ((SECONDS < deadline)) || break
  sleep 1
done
[[ -z $final ]] || violation "final state differs from the API: $final"
summary=$(for k in "${!counts[@]}"; do printf '%s=%s ' "$k" "${counts[$k]}"; done)
log "done: $actions actions ($summary) in $((SECONDS - start))s, $violations violation(s)"
((violations == 0))
