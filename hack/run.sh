#!/usr/bin/env bash
# `make run`: the operator against a cluster, with the example service, until Ctrl-C.
#
# - KUBECONFIG points at a reachable cluster: use it (REDIS_URL must name a Redis the operator
#   can reach). Otherwise use the local test cluster, starting it (control plane + Redis) when it
#   is not running.
# - On the local cluster with its real node up: builds the images (`make image-load`),
#   installs the operator with Helm from the local image (watching RUN_NAMESPACE only), applies
#   examples/game-server/ (3 real game-server pods and their RouteState) and waits until the
#   RouteState is Ready.
# - Otherwise (another cluster, or no real node here: the reason is printed): installs the
#   RouteState CRD, builds and starts the operator as a local process, applies examples/ (pods
#   that kwok runs) and waits until the RouteState is Ready. RUN_REAL_NODE=0 chooses this too.
# - Ctrl-C / SIGTERM: deletes the example objects (while the operator still runs, so its
#   finalizer removes the Redis keys), stops the operator (helm uninstall, or the process),
#   deletes RUN_NAMESPACE if this run created it, and stops the local cluster only if this run
#   started it.
#
# Stop it with Ctrl-C in the foreground, or SIGTERM (`kill <pid>`): a script started in the
# background by a non-interactive shell ignores SIGINT, as every such background job does.
#
# Environment: RUN_NAMESPACE (default routestate-demo), RUN_HTTP_ADDR (default a free
# 127.0.0.1 port), ROUTESTATE_BIN (use this binary instead of `cargo build`), RUN_DIR (logs,
# default target/run), RUN_REAL_NODE=0 (never use the real node), RUN_BUILD_IMAGES=0 (on the
# real node, use the images already imported instead of `make image-load`),
# RUN_NAMESPACE_WAIT_SECONDS (default 120: how long to wait for a Terminating RUN_NAMESPACE to go).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NS=${RUN_NAMESPACE:-routestate-demo}
RUN_DIR=${RUN_DIR:-$ROOT/target/run/$NS}
mkdir -p "$RUN_DIR"
OP_LOG=$RUN_DIR/operator.log

say() { echo "run: $*" >&2; }
die() { say "$*"; exit 1; }

started_cluster=0
created_ns=0
env_hint="your cluster's KUBECONFIG and REDIS_URL"
op_pid=""
release=""
local_cluster=0
examples=examples/
cleaning=0

cleanup() {
  local rc=$?
  ((cleaning)) && return
  cleaning=1
  trap '' INT TERM
  if [[ -n $release ]]; then
    say "deleting the example objects in $NS (the operator's finalizer removes their Redis keys)"
    kubectl delete -n "$NS" -f "$examples" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
    say "uninstalling the operator (helm uninstall $release)"
    helm uninstall "$release" -n "$NS" --wait --timeout=60s >/dev/null 2>&1 || true
  fi
  if [[ -n $op_pid ]] && kill -0 "$op_pid" 2>/dev/null; then
    say "deleting the example objects in $NS (the operator's finalizer removes their Redis keys)"
    kubectl delete -n "$NS" -f "$examples" --ignore-not-found --wait=true --timeout=30s >/dev/null 2>&1 || true
    say "stopping the operator (pid $op_pid)"
    kill -TERM "$op_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$op_pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then say "operator did not stop in 30s, killing it"; kill -KILL "$op_pid" 2>/dev/null || true; fi
      sleep 0.2
    done
    wait "$op_pid" 2>/dev/null || true
  fi
  if ((created_ns)); then
    say "deleting namespace $NS"
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
  if ((started_cluster)); then
    say "stopping the local cluster this run started"
    hack/cluster.sh down || true
  fi
  say "stopped"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

reachable() { kubectl get --raw=/readyz --request-timeout=5s >/dev/null 2>&1; }

# 1. A cluster and Redis.
# KUBECONFIG naming the local cluster itself (after `source .cluster/env`) counts as local.
if [[ -n ${KUBECONFIG:-} && $KUBECONFIG != "${CLUSTER_DIR:-$ROOT/.cluster}/kubeconfig" ]] && command -v kubectl >/dev/null && reachable; then
  say "using the cluster of KUBECONFIG=$KUBECONFIG"
  : "${REDIS_URL:?KUBECONFIG names a reachable cluster, so set REDIS_URL to a Redis the operator can reach (e.g. redis://127.0.0.1:6379)}"
else
  if ! hack/cluster.sh status 2>/dev/null; then
    say "starting the local control plane and Redis (hack/cluster.sh up)"
    started_cluster=1
    hack/cluster.sh up
  else
    say "using the running local cluster (.cluster/)"
  fi
  # shellcheck disable=SC1090
  source <(hack/cluster.sh env)
  local_cluster=1
  env_hint="\`source ${CLUSTER_DIR:-$ROOT/.cluster}/env\`"
fi
command -v kubectl >/dev/null || die "kubectl not found on PATH"

# A namespace still Terminating (a previous run's, deleted on Ctrl-C) takes no new objects
# ("Forbidden ... because it is being terminated"): wait until it is gone, for at most
# RUN_NAMESPACE_WAIT_SECONDS, then say what still holds it.
wait_namespace_gone() {
  local wait=${RUN_NAMESPACE_WAIT_SECONDS:-120}
  [[ $wait =~ ^[0-9]+$ ]] || die "RUN_NAMESPACE_WAIT_SECONDS=$wait is not a number of seconds"
  [[ $(kubectl get namespace "$NS" --ignore-not-found -o jsonpath='{.status.phase}') == Terminating ]] || return 0
  say "namespace $NS is still being deleted (a previous run's?): waiting up to ${wait}s for it to go"
  if ! kubectl wait --for=delete "namespace/$NS" --timeout="${wait}s" >/dev/null 2>&1; then
    kubectl get namespace "$NS" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}: {.message}{"\n"}{end}' >&2 || true
    die "namespace $NS is still Terminating after ${wait}s (its conditions above say what holds it): remove that, or choose another RUN_NAMESPACE"
  fi
  say "namespace $NS is gone"
}

ensure_namespace() {
  wait_namespace_gone
  if ! kubectl get namespace "$NS" >/dev/null 2>&1; then
    kubectl create namespace "$NS" >/dev/null
    created_ns=1
  fi
}

# The real node: the operator installed by Helm from the local image, real game-server pods.
if ((local_cluster)) && [[ -n ${ROUTESTATE_NODE:-} && ${RUN_REAL_NODE:-1} != 0 ]]; then
  say "the local cluster has a real node: building the images and installing the operator with Helm"
  if [[ ${RUN_BUILD_IMAGES:-1} == 1 ]]; then
    hack/image/build.sh load
  else
    say "RUN_BUILD_IMAGES=0: using the images already imported into the node (make image-load)"
  fi
  ensure_namespace
  release=routestate
  examples=examples/game-server/
  api_host=${ROUTESTATE_NODE_API%:*} api_port=${ROUTESTATE_NODE_API##*:}
  # The chart's values for this cluster: the local image, the node's label and taint, and the API
  # server's address for pods (no kube-proxy here).
  helm install "$release" charts/routestate -n "$NS" \
    --set image.repository=localhost/routestate --set image.tag=dev --set image.pullPolicy=Never \
    --set "redis.urls={$ROUTESTATE_NODE_REDIS_URL}" --set "watchNamespace=$NS" \
    --set 'nodeSelector.routestate\.dev/node=real' \
    --set tolerations[0].key=routestate.dev/real-node --set tolerations[0].operator=Exists \
    --set tolerations[0].effect=NoSchedule \
    --set extraEnv[0].name=KUBERNETES_SERVICE_HOST --set-string "extraEnv[0].value=$api_host" \
    --set extraEnv[1].name=KUBERNETES_SERVICE_PORT --set-string "extraEnv[1].value=$api_port" >/dev/null
  kubectl -n "$NS" rollout status deploy/routestate --timeout=180s >&2 || {
    kubectl -n "$NS" get pods -o wide >&2; die "the operator's Deployment did not become ready"
  }
  kubectl -n "$NS" apply -f - >/dev/null <<CM
apiVersion: v1
kind: ConfigMap
metadata: {name: game-server-env}
data:
  REDIS_URL: "$ROUTESTATE_NODE_REDIS_URL"
  KUBERNETES_SERVICE_HOST: "$api_host"
  KUBERNETES_SERVICE_PORT: "$api_port"
CM
  say "applying $examples to namespace $NS"
  kubectl apply -n "$NS" -f "$examples" >/dev/null
  # Ready (reconciled) is not enough here: real pods take a moment to start, so wait for all three
  # to be up and published as routable.
  if ! kubectl -n "$NS" rollout status statefulset/game --timeout=180s >/dev/null ||
    ! kubectl wait -n "$NS" --for=condition=Ready routestate/game --timeout=60s >/dev/null ||
    ! kubectl wait -n "$NS" --for=jsonpath='{.status.routablePods}'=3 routestate/game --timeout=60s >/dev/null; then
    kubectl describe -n "$NS" routestate/game >&2 || true
    kubectl -n "$NS" get pods -o wide >&2 || true
    die "RouteState game did not become Ready"
  fi
  kubectl -n "$NS" get pods -o wide
  kubectl get routestates -n "$NS"
  bin=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release/routestate
  game1=$(kubectl -n "$NS" get pod game-1 -o jsonpath='{.status.podIP}')
  cat <<EOF2

The operator runs in pods (helm release $release, image localhost/routestate:dev) and publishes
StatefulSet $NS/game: three game servers (examples/game_server.rs) on the real node. Try, in
another shell with $env_hint:

  # the states the operator publishes (READY / DENY_NEW_CALL / SHUTDOWN per pod)
  redis-cli -u $REDIS_URL HGETALL 'sf:{$NS:state:game}'
  $bin status -n $NS

  # a user's session on pod 1 (the pod reports its sessions as load)
  curl -s http://$game1:8080/session/alice

  # drain pod 1 (keeps its users, takes no new ones), then undrain it
  kubectl -n $NS patch routestate game --type=merge -p '{"spec":{"pods":[{"index":1,"routingState":"DenyNewCall"}]}}'
  kubectl -n $NS patch routestate game --type=merge -p '{"spec":{"pods":[]}}'

  # roll or scale the game servers: every pod that stops drains first (DENY_NEW_CALL, then SHUTDOWN)
  kubectl -n $NS rollout restart statefulset game
  kubectl -n $NS scale statefulset game --replicas=2

  kubectl -n $NS get routestates -w
  kubectl -n $NS logs deploy/routestate

Ctrl-C uninstalls the operator and stops everything this run started.
EOF2
  say "ready: routestate/game is Ready in namespace $NS (operator: helm release $release)"
  # Foreground until Ctrl-C / SIGTERM.
  while :; do sleep 1; done
fi
if ((local_cluster)); then
  if [[ -z ${ROUTESTATE_NODE:-} ]]; then
    say "the local cluster has no real node (${ROUTESTATE_NODE_ABSENT:-see make cluster-up}): the operator runs as a local process and kwok plays the example's pods"
  else
    say "RUN_REAL_NODE=0: the operator runs as a local process and kwok plays the example's pods"
  fi
fi

# 2. The operator binary and the CRD.
if [[ -z ${ROUTESTATE_BIN:-} ]]; then
  say "building the operator (cargo build)"
  cargo build --quiet --bin routestate
  ROUTESTATE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/routestate
fi
[[ -x $ROUTESTATE_BIN ]] || die "ROUTESTATE_BIN=$ROUTESTATE_BIN is not an executable"
say "installing the RouteState CRD"
"$ROUTESTATE_BIN" crd | kubectl apply --server-side --force-conflicts --field-manager=routestate-run -f - >/dev/null
kubectl wait --for=condition=Established crd/routestates.routestate.dev --timeout=60s >/dev/null

ensure_namespace

# 3. The operator, in the background, watching only $NS.
HTTP_ADDR=${RUN_HTTP_ADDR:-127.0.0.1:$("$ROOT/hack/free-port")}
say "starting the operator (log: $OP_LOG)"
# In a session of its own: a terminal's Ctrl-C reaches the whole foreground process group, and
# the operator must outlive it long enough to run the finalizer of the example's RouteState
# during clean-up; cleanup() stops it afterwards.
setsid "$ROUTESTATE_BIN" run \
  --redis-url "$REDIS_URL" \
  --namespace "$NS" \
  --http-addr "$HTTP_ADDR" \
  --log-format text \
  >"$OP_LOG" 2>&1 &
op_pid=$!
echo "$op_pid" >"$RUN_DIR/operator.pid"
deadline=$((SECONDS + 60))
until curl -sf "http://$HTTP_ADDR/readyz" >/dev/null 2>&1; do
  kill -0 "$op_pid" 2>/dev/null || { tail -n 30 "$OP_LOG" >&2; die "the operator exited during start-up (log above)"; }
  ((SECONDS < deadline)) || { tail -n 30 "$OP_LOG" >&2; die "the operator is not ready after 60s (log above)"; }
  sleep 0.2
done

# 4. The example service.
say "applying examples/ to namespace $NS"
kubectl apply -n "$NS" -f examples/ >/dev/null
if ! kubectl wait -n "$NS" --for=condition=Ready routestate/web --timeout=120s >/dev/null; then
  kubectl describe -n "$NS" routestate/web >&2 || true
  tail -n 30 "$OP_LOG" >&2
  die "RouteState web did not become Ready"
fi

kubectl get routestates -n "$NS"
cat <<EOF2

The operator (pid $op_pid) publishes StatefulSet $NS/web to $REDIS_URL. Try, in another shell
with $env_hint:

  # read the states the operator publishes (READY / DENY_NEW_CALL / SHUTDOWN per pod)
  redis-cli -u $REDIS_URL HGETALL 'sf:{$NS:state:web}'
  $ROUTESTATE_BIN status -n $NS

  # drain pod 1 (keeps its users, takes no new ones), then undrain it
  kubectl -n $NS patch routestate web --type=merge -p '{"spec":{"pods":[{"index":1,"routingState":"DenyNewCall"}]}}'
  kubectl -n $NS patch routestate web --type=merge -p '{"spec":{"pods":[]}}'

  # report load from the pod itself
  kubectl -n $NS annotate pod web-2 routestate.dev/load=80 --overwrite

  # scale, or shut the whole service off
  kubectl -n $NS scale statefulset web --replicas=5
  kubectl -n $NS patch routestate web --type=merge -p '{"spec":{"routingState":"Shutdown"}}'

  kubectl -n $NS get routestates -w
  curl -s http://$HTTP_ADDR/metrics

Operator log: $OP_LOG. Ctrl-C stops the operator and everything this run started.
EOF2
say "ready: routestate/web is Ready in namespace $NS (operator pid $op_pid, http $HTTP_ADDR)"

# 5. Foreground until Ctrl-C / SIGTERM, or until the operator dies.
while kill -0 "$op_pid" 2>/dev/null; do
  wait "$op_pid" || true
done
tail -n 30 "$OP_LOG" >&2
op_pid=""
die "the operator exited on its own (log above)"
