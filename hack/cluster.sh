#!/usr/bin/env bash
# The local test cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (built from Go modules by hack/testbin/build.sh), plus a standalone redis-server and a 3-master
# Redis Cluster, all on free loopback ports. Processes are tracked by PID in $CLUSTER_DIR and
# only those are ever stopped. Then a real node (kubelet + containerd, hack/node.sh) when this
# machine allows it (root); CLUSTER_NODE=0 leaves it out.
#
#   hack/cluster.sh up            start everything not already running (idempotent)
#   hack/cluster.sh down          stop what `up` started, remove the folder
#   hack/cluster.sh env           print the env file (KUBECONFIG, REDIS_URL, ...)
#   hack/cluster.sh status        exit 0 when every component answers its health check
#   hack/cluster.sh stop NAME     stop one component (redis, kube-apiserver, ...), keep its config
#   hack/cluster.sh start NAME    start one stopped component again on the same port
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${CLUSTER_DIR:-$ROOT/.cluster}
D=$CLUSTER_DIR
START_TIMEOUT=${START_TIMEOUT:-120}
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok redis redis-cluster node)

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# Ports for servers started later: from below the ephemeral range, all of one config in one call
# so that none is handed out twice (hack/free-port says why).
free_ports() { "$ROOT/hack/free-port" "$@" | tr '\n' ' '; }

# shellcheck source=hack/node.sh
source "$ROOT/hack/node.sh"

pid_of() { [[ -f $D/pids/$1.pid ]] && cat "$D/pids/$1.pid"; }
running() { local p; p=$(pid_of "$1") || return 1; kill -0 "$p" 2>/dev/null; }

# Starts "$@" in its own session, output to $D/logs/NAME.log, PID to $D/pids/NAME.pid.
launch() {
  local name=$1; shift
  mkdir -p "$D/logs" "$D/pids"
  setsid "$@" >>"$D/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$D/pids/$name.pid"
}

# wait_for NAME CMD...: polls CMD until it succeeds; on timeout or exit prints NAME's log tail.
wait_for() {
  local name=$1; shift
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      log "$name exited during start-up; last lines of $D/logs/$name.log:"; tail -n 30 "$D/logs/$name.log" >&2 || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name not healthy after ${START_TIMEOUT}s; last lines of $D/logs/$name.log:"; tail -n 30 "$D/logs/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# Ports and secrets are chosen once per cluster folder so a restarted component keeps its port.
init_config() {
  [[ -f $D/config ]] && return 0
  mkdir -p "$D/pki" "$D/logs" "$D/pids"
  {
    # A Redis Cluster node also listens on port+10000 (its cluster bus): --bus keeps those free too.
    local ports; read -ra ports <<<"$(free_ports 9 --bus)"
    ((${#ports[@]} == 9)) || die "no 9 free loopback ports for $D"
    echo "ETCD_PORT=${ports[0]}"; echo "ETCD_PEER_PORT=${ports[1]}"; echo "API_PORT=${ports[2]}"
    echo "KCM_PORT=${ports[3]}"; echo "SCHED_PORT=${ports[4]}"; echo "REDIS_PORT=${ports[5]}"
    echo "REDIS_CLUSTER_PORTS=\"${ports[*]:6:3}\""
    echo "ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  } >"$D/config.tmp"
  mv "$D/config.tmp" "$D/config"
}

apt_install() {
  log "installing $* (Debian packages)"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  else
    sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  fi
}

ensure_redis() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  apt_install redis-server redis-tools
}

# Not a cluster component: the tests start private Prometheus servers (alert rules, dashboard).
ensure_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  apt_install --no-install-recommends prometheus
}

start_etcd() {
  launch etcd "$BIN/etcd" --name=node0 --data-dir="$D/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="node0=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true --log-level=warn \
    --quota-backend-bytes=$((4 * 1024 * 1024 * 1024))
  wait_for etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}

start_kube_apiserver() {
  [[ -f $D/pki/sa.key ]] || openssl genrsa -out "$D/pki/sa.key" 2048 2>/dev/null
  ensure_pki
  echo "$ADMIN_TOKEN,admin,admin-uid,system:masters" >"$D/tokens.csv"
  # Client certificates signed by the cluster CA authenticate the kubelet, and the API server
  # authenticates to the kubelet with its own; the Node authorizer scopes each kubelet.
  launch kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$D/pki" --tls-cert-file="$D/pki/apiserver.crt" --tls-private-key-file="$D/pki/apiserver.key" \
    --client-ca-file="$D/pki/ca.crt" --kubelet-certificate-authority="$D/pki/ca.crt" \
    --kubelet-client-certificate="$D/pki/apiserver-kubelet-client.crt" --kubelet-client-key="$D/pki/apiserver-kubelet-client.key" \
    --token-auth-file="$D/tokens.csv" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$D/pki/sa.key" --service-account-signing-key-file="$D/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none --allow-privileged=true \
    --disable-admission-plugins=TaintNodesByCondition --v=1
  wait_for kube-apiserver curl -sfk "https://127.0.0.1:$API_PORT/readyz"
}

write_kubeconfig() {
  cat >"$D/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: routestate-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $D/pki/ca.crt
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: routestate-test
  context: {cluster: routestate-test, user: admin}
current-context: routestate-test
KC
}

start_kube_controller_manager() {
  launch kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$D/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
    --service-account-private-key-file="$D/pki/sa.key" --use-service-account-credentials=false \
    --root-ca-file="$D/pki/ca.crt" \
    --controllers=statefulset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,replicaset-controller,deployment-controller,job-controller,endpointslice-controller,endpoints-controller,persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,disruption-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller \
    --concurrent-statefulset-syncs=10 --kube-api-qps=1000 --kube-api-burst=2000 --v=1
  wait_for kube-controller-manager curl -sfk "https://127.0.0.1:$KCM_PORT/healthz"
}

start_kube_scheduler() {
  # The client's rate limit is raised from 50/100 requests per second: at that rate binding
  # 10 000 pods alone takes over three minutes.
  cat >"$D/kube-scheduler.yaml" <<CFG
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $D/kubeconfig, qps: 1000, burst: 2000}
leaderElection: {leaderElect: false}
CFG
  launch kube-scheduler "$BIN/kube-scheduler" --config="$D/kube-scheduler.yaml" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics --v=1
  wait_for kube-scheduler curl -sfk "https://127.0.0.1:$SCHED_PORT/healthz"
}

# KWOK_NODES fake nodes of 4 000 pods each (a fleet benchmark needs more than one); the tests
# expect kwok-node-0.
KWOK_NODES=${KWOK_NODES:-1}

start_kwok() {
  # 16 pod stages in parallel (default 4): thousands of new pods otherwise wait in kwok's queue
  # for their Running and Ready status.
  cat >"$D/kwok.yaml" <<'CFG'
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options: {podPlayStageParallelism: 16, nodePlayStageParallelism: 4, nodeLeaseParallelism: 4, podsOnNodeSyncParallelism: 1}
CFG
  launch kwok "$BIN/kwok" --kubeconfig="$D/kubeconfig" --config="$BIN/kwok-stages.yaml" --config="$D/kwok.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.244.0.0/16 --node-ip=192.0.2.10
  ((KWOK_NODES >= 1 && KWOK_NODES <= 16)) || die "KWOK_NODES must be 1..16 (each node takes a /20 of 10.244.0.0/16), not '$KWOK_NODES'"
  local i nodes=()
  for ((i = 0; i < KWOK_NODES; i++)); do
    cat <<NODE
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec:
  podCIDR: 10.244.$((16 * i)).0/20
  podCIDRs: [10.244.$((16 * i)).0/20]
status:
  allocatable: {cpu: "256", memory: 1Ti, pods: "4000"}
  capacity: {cpu: "256", memory: 1Ti, pods: "4000"}
NODE
  done | "$KUBECTL" --kubeconfig="$D/kubeconfig" apply -f - >/dev/null
  for ((i = 0; i < KWOK_NODES; i++)); do nodes+=("node/kwok-node-$i"); done
  # kwok has no health endpoint without --server-address; it is healthy once it made our nodes Ready.
  wait_for kwok "$KUBECTL" --kubeconfig="$D/kubeconfig" wait --for=condition=Ready "${nodes[@]}" --timeout=2s
}

start_redis() {
  ensure_redis
  launch redis "$(command -v redis-server)" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --protected-mode no --dir "$D" --dbfilename redis.rdb
  wait_for redis redis-cli -p "$REDIS_PORT" ping
}

start_redis_cluster() {
  ensure_redis
  local port nodes=() i=0
  mkdir -p "$D/redis-cluster"
  for port in $REDIS_CLUSTER_PORTS; do
    mkdir -p "$D/redis-cluster/$port"
    # Each node is its own process; the component's pid file tracks the first, the rest by port.
    launch "redis-cluster-$i" "$(command -v redis-server)" --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "$D/redis-cluster/$port/nodes.conf" --save "" --appendonly no --protected-mode no \
      --dir "$D/redis-cluster/$port"
    wait_for "redis-cluster-$i" redis-cli -p "$port" ping
    nodes+=("127.0.0.1:$port"); i=$((i + 1))
  done
  if ! redis-cli -p "${REDIS_CLUSTER_PORTS%% *}" cluster info | grep -q 'cluster_state:ok'; then
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$D/logs/redis-cluster-create.log" 2>&1 \
      || { tail -n 20 "$D/logs/redis-cluster-create.log" >&2; die "redis-cluster: create failed"; }
  fi
  echo "redis-cluster" >"$D/pids/redis-cluster.marker"
  local deadline=$((SECONDS + START_TIMEOUT))
  until redis-cli -p "${REDIS_CLUSTER_PORTS%% *}" cluster info | grep -q 'cluster_state:ok'; do
    ((SECONDS < deadline)) || die "redis-cluster: cluster_state not ok after ${START_TIMEOUT}s"
    sleep 0.2
  done
}

write_env() {
  need_bin
  local urls="" port
  for port in $REDIS_CLUSTER_PORTS; do urls+="${urls:+,}redis://127.0.0.1:$port"; done
  cat >"$D/env" <<ENV
export KUBECONFIG=$D/kubeconfig
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export REDIS_CLUSTER_URLS=$urls
export ROUTESTATE_CLUSTER_DIR=$D
export ROUTESTATE_TESTBIN=$BIN
export PATH=$BIN:\$PATH
ENV
  node_env >>"$D/env"
}

component_running() {
  case $1 in
    redis-cluster) running redis-cluster-0 && running redis-cluster-1 && running redis-cluster-2 ;;
    # An absent node (no root, CLUSTER_NODE=0, failed start) is a state, not a fault.
    node) [[ -f $D/node/state ]] && node_status ;;
    *) running "$1" ;;
  esac
}

start_component() {
  if component_running "$1"; then return 0; fi
  local t0=$SECONDS
  case $1 in redis | redis-cluster) ;; *) need_bin ;; esac
  case $1 in
    etcd) start_etcd ;;
    kube-apiserver) start_kube_apiserver; write_kubeconfig ;;
    kube-controller-manager) start_kube_controller_manager ;;
    kube-scheduler) start_kube_scheduler ;;
    kwok) start_kwok ;;
    redis) start_redis ;;
    redis-cluster) start_redis_cluster ;;
    node) start_node ;;
    *) die "unknown component '$1' (one of: ${COMPONENTS[*]})" ;;
  esac
  log "$1 up in $((SECONDS - t0))s"
}

stop_pid_file() {
  local f=$1 p
  [[ -f $f ]] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$p" 2>/dev/null; do
      if ((SECONDS >= deadline)); then kill -9 "$p" 2>/dev/null || true; fi
      sleep 0.1
    done
  fi
  rm -f "$f"
}

stop_component() {
  case $1 in
    redis-cluster) for i in 0 1 2; do stop_pid_file "$D/pids/redis-cluster-$i.pid"; done ;;
    node) stop_node; rm -f "$D/node/state" ;;
    *) [[ " ${COMPONENTS[*]} " == *" $1 "* ]] || die "unknown component '$1' (one of: ${COMPONENTS[*]})"
       stop_pid_file "$D/pids/$1.pid" ;;
  esac
}

load() {
  init_config
  # shellcheck disable=SC1091
  source "$D/config"
  BIN=""
}

# The Go binaries are only needed by the Kubernetes components; Redis starts without them.
need_bin() {
  [[ -n $BIN ]] && return 0
  BIN=$("$ROOT/hack/testbin/build.sh")
  KUBECTL=$BIN/kubectl
}

cmd=${1:-}
case $cmd in
  up)
    load
    t0=$SECONDS
    ensure_prometheus
    for c in "${COMPONENTS[@]}"; do start_component "$c"; done
    write_env
    log "all components up in $((SECONDS - t0))s; env: $D/env"
    ;;
  down)
    if [[ -d $D ]]; then
      for c in node kwok kube-scheduler kube-controller-manager kube-apiserver etcd redis redis-cluster; do stop_component "$c"; done
      rm -rf "$D"
    fi
    ;;
  env) [[ -f $D/env ]] || die "no cluster at $D (run: make cluster-up)"; cat "$D/env" ;;
  status)
    [[ -f $D/env ]] || exit 1
    for c in "${COMPONENTS[@]}"; do component_running "$c" || { log "$c is not running"; exit 1; }; done
    # shellcheck disable=SC1091
    source "$D/config"
    curl -sfk "https://127.0.0.1:$API_PORT/readyz" >/dev/null || { log "kube-apiserver not ready"; exit 1; }
    ;;
  stop) [[ -n ${2:-} ]] || die "usage: cluster.sh stop COMPONENT"; stop_component "$2" ;;
  start) [[ -n ${2:-} ]] || die "usage: cluster.sh start COMPONENT"; load; start_component "$2"; [[ -f $D/kubeconfig ]] && write_env; true ;;
  *) die "usage: cluster.sh up|down|env|status|stop NAME|start NAME" ;;
esac
