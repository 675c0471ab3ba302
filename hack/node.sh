# shellcheck shell=bash
# The real node of the local cluster (sourced by hack/cluster.sh): a kubelet and containerd
# (hack/testbin/build.sh node) with Debian's runc and CNI plugins, beside the kwok node. Pods
# choose it with the label and toleration below; everything else stays on kwok.
#
# What it needs and what it leaves alone (docs/test-cluster.md has the why):
# - root with CAP_SYS_ADMIN and CAP_NET_ADMIN (mounts, a mount namespace, a bridge, cgroups);
#   without them the rest of the cluster still comes up and $D/node/state says why it is absent.
# - Host kernel settings stay as they are: kubelet and containerd run in a mount namespace of
#   their own ($D/node/ns/mnt) where files with the values the kubelet wants are mounted over the
#   /proc/sys entries it would rewrite, and private tmpfs mounts hide /run and /var/log, so the
#   shim sockets, netns mounts and log symlinks they hardcode never reach the host.
# - Networking: a bridge made here ($NODE_BRIDGE, $NODE_IP/24, no routes, no forwarding). Pods
#   get addresses on it; the API server and Redis, which listen on 127.0.0.1, are reachable from
#   pods at $NODE_IP through socat forwarders. No iptables, no kube-proxy, no ClusterIP.
# - Credentials: the kubelet authenticates with a client certificate (system:node:$NODE_NAME),
#   the API server calls the kubelet with one of its own; both signed by the cluster CA.
# - Cleanup (`down`): pods removed through the CRI, every process in the node's cgroups killed,
#   cgroups, bridge, mounts and the namespace removed.

NODE_LABEL=routestate.dev/node
NODE_TAINT=routestate.dev/real-node

node_log() { echo "cluster: node: $*" >&2; }

# Node settings are chosen once per cluster folder, like the ports in $D/config. The subnet is
# the first 10.201.N.0/24 no interface of this machine uses, so several clusters coexist.
node_init_config() {
  [[ -f $D/node.config ]] && return 0
  local used n id
  used=$(ip -4 -o addr show 2>/dev/null | awk '{print $4}')
  id=$(printf '%s' "$D" | sha256sum | cut -c1-8)
  for n in $(seq 0 255); do
    grep -q "^10\.201\.$n\." <<<"$used" && continue
    # Another cluster folder may have chosen it without its bridge being up yet.
    grep -qsx "NODE_SUBNET_N=$n" /tmp/routestate-node-subnets/* && continue
    break
  done
  mkdir -p /tmp/routestate-node-subnets
  echo "NODE_SUBNET_N=$n" >"/tmp/routestate-node-subnets/$id"
  {
    echo "NODE_ID=$id"
    echo "NODE_IP=10.201.$n.1"
    echo "NODE_SUBNET=10.201.$n.0/24"
    # The node is named after its address: the API server reaches kubelets by their Hostname
    # address first, and an IP needs no name resolution.
    echo "NODE_NAME=10.201.$n.1"
    echo "NODE_BRIDGE=rsbr-$id"
    echo "NODE_CGROUP=routestate-$id"
    local ports; read -ra ports <<<"$(free_ports 2)"
    ((${#ports[@]} == 2)) || die "no 2 free loopback ports for $D"
    echo "KUBELET_PORT=${ports[0]}"
    echo "KUBELET_HEALTHZ_PORT=${ports[1]}"
  } >"$D/node.config"
}

node_load() {
  node_init_config
  # shellcheck disable=SC1091
  source "$D/node.config"
  ND=$D/node
  NODE_SOCK=$ND/containerd.sock
}

# --- PKI: one CA for the API server, the kubelet and their clients ---------------------------

# pki_sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster CA.
pki_sign() {
  local name=$1 subj=$2 ext=$3 p=$D/pki
  [[ -f $p/$name.crt ]] && return 0
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$ext" >"$p/$name.ext"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$p/$name.key" -out "$p/$name.csr" 2>/dev/null
  openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 365 \
    -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
  rm -f "$p/$name.csr" "$p/$name.ext"
}

# Writes pki/ca.crt and the certificates of the API server and the node. pki/apiserver.crt is the
# serving certificate followed by the CA, so it also works as a trust bundle.
ensure_pki() {
  local p=$D/pki
  mkdir -p "$p"
  node_load
  if [[ ! -f $p/ca.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=routestate-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  fi
  if [[ ! -f $p/apiserver.key ]]; then
    pki_sign apiserver-serving "/CN=kube-apiserver" \
      "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cat "$p/apiserver-serving.crt" "$p/ca.crt" >"$p/apiserver.crt"
    mv "$p/apiserver-serving.key" "$p/apiserver.key"
    rm -f "$p/apiserver-serving.crt"
  fi
  pki_sign apiserver-kubelet-client "/O=routestate:kubelet-api/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  pki_sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
  pki_sign kubelet-serving "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP"
}

# --- prerequisites ------------------------------------------------------------------------------

# Prints why the real node cannot run here, or nothing.
node_missing() {
  [[ ${CLUSTER_NODE:-1} == 0 ]] && { echo "CLUSTER_NODE=0"; return; }
  [[ $(id -u) -eq 0 ]] || { echo "not root (the node needs mounts, a mount namespace, a bridge and cgroups)"; return; }
  local cap
  cap=$(awk '/^CapEff/ {print $2}' /proc/self/status)
  # CAP_NET_ADMIN is bit 12, CAP_SYS_ADMIN bit 21.
  (((0x$cap >> 12) & 1)) || { echo "no CAP_NET_ADMIN (CapEff $cap)"; return; }
  (((0x$cap >> 21) & 1)) || { echo "no CAP_SYS_ADMIN (CapEff $cap)"; return; }
  command -v unshare >/dev/null && command -v nsenter >/dev/null || { echo "unshare/nsenter (util-linux) missing"; return; }
  command -v ip >/dev/null || { echo "ip (iproute2) missing"; return; }
  [[ -w /sys/fs/cgroup ]] || [[ -n $(node_cgroup_mounts) ]] || { echo "no writable cgroup hierarchy under /sys/fs/cgroup"; return; }
}

ensure_node_packages() {
  local want=()
  command -v runc >/dev/null || want+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || want+=(containernetworking-plugins)
  command -v socat >/dev/null || want+=(socat)
  ((${#want[@]})) || return 0
  node_log "installing ${want[*]} (Debian packages)"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >&2
}

# Every cgroup hierarchy mounted on this machine (v1 controllers, named and v2 unified).
node_cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts; }

# --- start --------------------------------------------------------------------------------------

# Creates $NODE_CGROUP (the kubelet's cgroupRoot) and its child `daemons` in every hierarchy.
node_cgroups() {
  local m c
  for m in $(node_cgroup_mounts); do
    for c in "$NODE_CGROUP" "$NODE_CGROUP/daemons"; do
      [[ -d $m/$c ]] && continue
      mkdir "$m/$c"
      # A v1 cpuset cgroup takes no task before its cpus and mems are set.
      if [[ -f $m/$c/cpuset.cpus ]]; then
        cat "$(dirname "$m/$c")/cpuset.cpus" >"$m/$c/cpuset.cpus"
        cat "$(dirname "$m/$c")/cpuset.mems" >"$m/$c/cpuset.mems"
      fi
    done
  done
}

node_net() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add name "$NODE_BRIDGE" type bridge
    touch "$ND/created-bridge"
    # Per-interface settings of our own bridge only; IPv6 stays off it (no router solicitations).
    echo 1 >"/proc/sys/net/ipv6/conf/$NODE_BRIDGE/disable_ipv6" 2>/dev/null || true
    ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
  fi
  mkdir -p "$ND/cni" "$ND/cni-ipam"
  # isGateway false: the bridge already has its address and pods get no default route, so
  # nothing turns on ip_forward and no packet of a pod can leave the bridge.
  cat >"$ND/cni/10-routestate.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "routestate",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$ND/cni-ipam",
        "ranges": [[{"subnet": "$NODE_SUBNET", "rangeStart": "${NODE_IP%.1}.10", "gateway": "$NODE_IP"}]]
      }
    }
  ]
}
CNI
}

# The mount namespace the kubelet and containerd share (kept by a bind mount, no process).
node_namespace() {
  [[ -f $ND/ns/mnt ]] && nsenter --mount="$ND/ns/mnt" true 2>/dev/null && return 0
  mkdir -p "$ND/ns" "$ND/sysctl" "$ND/kubelet"
  # A persistent namespace file must sit on a private mount.
  mountpoint -q "$ND/ns" || { mount --bind "$ND/ns" "$ND/ns" && mount --make-private "$ND/ns"; }
  touch "$ND/ns/mnt"
  # The values the kubelet's container manager sets at start (its defaults for these keys).
  local k v masks=""
  for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
    kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    k=${kv%%=*} v=${kv#*=}
    [[ -e /proc/sys/$k ]] || continue
    echo "$v" >"$ND/sysctl/${k//\//.}"
    masks+="mount --bind '$ND/sysctl/${k//\//.}' '/proc/sys/$k' && "
  done
  unshare --mount="$ND/ns/mnt" --propagation private sh -ec "
    mount -t tmpfs -o mode=0755 routestate-run /run
    mount -t tmpfs -o mode=0755 routestate-log /var/log
    ${masks} true"
}

# node_launch NAME CMD...: like launch, in the node's mount namespace and cgroups.
node_launch() {
  local name=$1; shift
  local procs=() m
  for m in $(node_cgroup_mounts); do procs+=("$m/$NODE_CGROUP/daemons/cgroup.procs"); done
  launch "$name" bash -c 'for f in "${@:2:$1}"; do echo $$ >"$f"; done; shift $(($1 + 1)); exec nsenter --mount="$0" -- "$@"' \
    "$ND/ns/mnt" "${#procs[@]}" "${procs[@]}" "$@"
}

start_containerd() {
  mkdir -p "$ND/containerd" "$ND/runc" "$ND/pod-logs"
  cat >"$ND/containerd.toml" <<TOML
version = 3
root = "$ND/containerd/root"
state = "$ND/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$NODE_SOCK"
[ttrpc]
  address = "$NODE_SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.cri.v1.runtime"]
  # runc cannot lower oom_score_adj below containerd's own without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$ND/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$ND/cni"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  node_launch containerd env PATH="$NODE_BIN:$PATH" "$NODE_BIN/containerd" --config "$ND/containerd.toml"
  wait_for containerd "$NODE_BIN/ctr" --address "$NODE_SOCK" version
  # (ctr repeats containerd's cgroup v1 deprecation warning on stderr: kept out of the output.)
  "$NODE_BIN/ctr" --address "$NODE_SOCK" -n k8s.io images import "$NODE_BIN/pause.oci.tar" >"$D/logs/pause-import.log" 2>&1 ||
    { cat "$D/logs/pause-import.log" >&2; return 1; }
}

start_kubelet() {
  cat >"$ND/kubelet.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: routestate-test
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$D/pki/ca.crt"}
users:
- name: kubelet
  user: {client-certificate: "$D/pki/kubelet-client.crt", client-key: "$D/pki/kubelet-client.key"}
contexts:
- name: kubelet
  context: {cluster: routestate-test, user: kubelet}
current-context: kubelet
KC
  # No nameserver: a pod resolves nothing but its own names and never sends DNS off the machine.
  echo "options ndots:1" >"$ND/resolv.conf"
  cat >"$ND/kubelet.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$NODE_IP"
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: "$D/pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$D/pki/kubelet-serving.key"
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$D/pki/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$NODE_SOCK"
cgroupDriver: cgroupfs
cgroupRoot: "/$NODE_CGROUP"
# This machine kind has cgroup v1 hierarchies (plus a v2 mount for the VM's own machinery).
failCgroupV1: false
failSwapOn: false
resolvConf: "$ND/resolv.conf"
podLogsDir: "$ND/pod-logs"
volumePluginDir: "$ND/volume-plugins"
registerWithTaints:
- {key: $NODE_TAINT, value: "true", effect: NoSchedule}
# Images are imported, never pulled: nothing may garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
maxPods: 50
serializeImagePulls: false
shutdownGracePeriod: 0s
CFG
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 10\n' "$NODE_SOCK" "$NODE_SOCK" >"$ND/crictl.yaml"
  node_launch kubelet "$NODE_BIN/kubelet" --config="$ND/kubelet.yaml" --kubeconfig="$ND/kubelet.kubeconfig" \
    --root-dir="$ND/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --node-labels="$NODE_LABEL=real" --v=1
  wait_for kubelet curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_for kubelet "$KUBECTL" --kubeconfig="$D/kubeconfig" wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}

# socat forwarders so pods reach the API server and Redis (both on 127.0.0.1) at $NODE_IP.
start_node_proxy() {
  launch node-proxy-api socat "TCP-LISTEN:$API_PORT,bind=$NODE_IP,reuseaddr,fork" "TCP:127.0.0.1:$API_PORT"
  launch node-proxy-redis socat "TCP-LISTEN:$REDIS_PORT,bind=$NODE_IP,reuseaddr,fork" "TCP:127.0.0.1:$REDIS_PORT"
  wait_for node-proxy-api curl -sfk "https://$NODE_IP:$API_PORT/readyz"
  wait_for node-proxy-redis redis-cli -h "$NODE_IP" -p "$REDIS_PORT" ping
}

# The kubelet must not change host kernel settings: compare them with what they were before.
node_sysctl_snapshot() {
  local k
  for k in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys \
    kernel/keys/root_maxbytes net/ipv4/ip_forward; do
    [[ -e /proc/sys/$k ]] && echo "$k=$(cat "/proc/sys/$k")"
  done
}

node_rbac() {
  # The API server's kubelet client may use the kubelet API (logs, exec, port-forward).
  "$KUBECTL" --kubeconfig="$D/kubeconfig" apply -f - >/dev/null <<'RBAC'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: routestate:kube-apiserver-kubelet-client
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}
RBAC
}

start_node() {
  node_load
  mkdir -p "$ND"
  local why
  why=$(node_missing)
  if [[ -n $why ]]; then
    echo "absent: $why" >"$ND/state"
    log "the real node is ABSENT: $why. The rest of the cluster runs; tests that need the node fail with this reason."
    return 0
  fi
  # A subshell with its own errexit (an `if` around it would switch errexit off inside).
  local rc=0
  set +e
  (set -e; start_node_steps)
  rc=$?
  set -e
  if ((rc != 0)); then
    why="start-up failed (logs in $D/logs: containerd.log, kubelet.log)"
    echo "absent: $why" >"$ND/state"
    log "the real node is ABSENT: $why"
    stop_node
    mkdir -p "$ND" && echo "absent: $why" >"$ND/state"
    return 0
  fi
  echo up >"$ND/state"
}

start_node_steps() {
  ensure_node_packages
  NODE_BIN=$("$ROOT/hack/testbin/build.sh" node)
  echo "$NODE_BIN" >"$ND/bin"
  PAUSE_IMAGE=$(cat "$NODE_BIN/pause.image")
  node_sysctl_snapshot >"$ND/sysctl-before"
  node_cgroups
  node_net
  start_node_proxy
  node_namespace
  node_rbac
  running containerd || start_containerd
  running kubelet || start_kubelet
  if ! diff -u "$ND/sysctl-before" <(node_sysctl_snapshot) >&2; then
    log "node: host kernel settings changed while the node started (diff above)"
    return 1
  fi
}

# --- stop ---------------------------------------------------------------------------------------

stop_node() {
  [[ -f $D/node.config ]] || return 0
  node_load
  rm -f "/tmp/routestate-node-subnets/$NODE_ID"
  rmdir /tmp/routestate-node-subnets 2>/dev/null || true
  [[ -d $ND ]] || return 0
  stop_pid_file "$D/pids/kubelet.pid"
  # Remove every pod through the CRI while containerd runs: containers stop, CNI releases
  # addresses and veths, shims exit.
  local crictl
  crictl="$(cat "$ND/bin" 2>/dev/null || true)/crictl"
  if running containerd && [[ -x $crictl ]]; then
    "$crictl" --runtime-endpoint "unix://$NODE_SOCK" --timeout 20s rmp --all --force >/dev/null 2>&1 || true
  fi
  stop_pid_file "$D/pids/containerd.pid"
  stop_group "$D/pids/node-proxy-api.pid"
  stop_group "$D/pids/node-proxy-redis.pid"
  node_kill_cgroups
  if [[ -f $ND/ns/mnt ]]; then umount "$ND/ns/mnt" 2>/dev/null || true; fi
  if mountpoint -q "$ND/ns" 2>/dev/null; then umount "$ND/ns" 2>/dev/null || true; fi
  if [[ -f $ND/created-bridge ]]; then ip link del "$NODE_BRIDGE" 2>/dev/null || true; fi
}

# SIGKILLs every process left in the node's cgroups (containers, shims), then removes them.
node_kill_cgroups() {
  local m round pids
  for round in 1 2 3 4 5 6 7 8 9 10; do
    pids=""
    for m in $(node_cgroup_mounts); do
      [[ -d $m/$NODE_CGROUP ]] && pids+=" $(find "$m/$NODE_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
    done
    [[ -z ${pids// /} ]] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  for m in $(node_cgroup_mounts); do
    [[ -d $m/$NODE_CGROUP ]] && find "$m/$NODE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# Stops a forking server (socat) and the children serving its connections.
stop_group() {
  local f=$1 p
  [[ -f $f ]] || return 0
  p=$(cat "$f")
  kill -- "-$p" 2>/dev/null || true
  stop_pid_file "$f"
}

node_status() {
  [[ -f $D/node/state ]] || return 0
  [[ $(cat "$D/node/state") == up ]] || return 0
  running containerd && running kubelet && running node-proxy-api && running node-proxy-redis
}

node_env() {
  [[ -f $D/node/state ]] || return 0
  node_load
  local state
  state=$(cat "$ND/state")
  if [[ $state == up ]]; then
    NODE_BIN=$(cat "$ND/bin")
    cat <<ENV
export ROUTESTATE_NODE=$NODE_NAME
export ROUTESTATE_NODE_IP=$NODE_IP
export ROUTESTATE_NODE_LABEL=$NODE_LABEL=real
export ROUTESTATE_NODE_TAINT=$NODE_TAINT
export ROUTESTATE_NODE_API=$NODE_IP:$API_PORT
export ROUTESTATE_NODE_REDIS_URL=redis://$NODE_IP:$REDIS_PORT
export ROUTESTATE_NODE_PAUSE_IMAGE=$(cat "$NODE_BIN/pause.image")
export ROUTESTATE_NODE_BIN=$NODE_BIN
export CONTAINERD_ADDRESS=$NODE_SOCK
export CONTAINERD_NAMESPACE=k8s.io
export CONTAINER_RUNTIME_ENDPOINT=unix://$NODE_SOCK
export CRI_CONFIG_FILE=$ND/crictl.yaml
export PATH=$NODE_BIN:\$PATH
ENV
  else
    echo "export ROUTESTATE_NODE_ABSENT='${state#absent: }'"
  fi
}
