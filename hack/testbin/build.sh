#!/usr/bin/env bash
# Builds the test-cluster binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from the Go module proxy into a cache folder outside
# the repository, keyed by every version that changes them. Idempotent: each component has
# its own stamp, so an interrupted build resumes. Prints the bin folder on stdout.
#
#   build.sh        the control plane binaries above
#   build.sh node   the real node's binaries (kubelet, containerd, ctr, containerd-shim-runc-v2,
#                   crictl) in a folder of their own, keyed by their own versions, so adding or
#                   moving them never rebuilds the control plane. runc and the CNI plugins are
#                   Debian packages (hack/cluster.sh installs them).
set -euo pipefail
WHAT=${1:-core}
[[ $WHAT == core || $WHAT == node ]] || { echo "usage: build.sh [node]" >&2; exit 2; }
K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-3.22.0}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
CRICTL_VERSION=${CRICTL_VERSION:-1.37.0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 GOFLAGS="-buildvcs=false"
command -v go >/dev/null || { echo "build.sh: Go 1.26+ is required (apt-get install golang-go is too old; see README)" >&2; exit 1; }
KEY="k8s${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}-$(go env GOVERSION)-$(go env GOOS)-$(go env GOARCH)"
NODE_KEY="node-k8s${K8S_VERSION}-containerd${CONTAINERD_VERSION}-crictl${CRICTL_VERSION}-$(go env GOVERSION)-$(go env GOOS)-$(go env GOARCH)"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/routestate-testbin
COMPLETE=.complete
if [[ $WHAT == node ]]; then
  BIN=${NODE_TESTBIN_DIR:-$CACHE/$NODE_KEY}
  # The pause image is built from this repository's sources: their hash is its tag and stamp.
  PAUSE_TAG=$(cat "$HERE/../image/pause.c" "$HERE/../image/oci.py" | sha256sum | cut -c1-12)
  COMPLETE=.complete-pause-$PAUSE_TAG
else
  BIN=${TESTBIN_DIR:-$CACHE/$KEY}
fi
[[ -f $BIN/$COMPLETE ]] && { echo "$BIN"; exit 0; }
mkdir -p "$BIN"
MINOR=$(cut -d. -f2 <<<"$K8S_VERSION")
log() { echo "build.sh: $*" >&2; }

# step NAME CMD...: runs CMD once, records its wall time in $BIN/build-times.txt
step() {
  local name=$1; shift
  [[ -f $BIN/.done-$name ]] && return 0
  log "building $name (cold builds take minutes; output in $BIN/build-$name.log)"
  local t0=$SECONDS
  if ! "$@" >"$BIN/build-$name.log" 2>&1; then
    log "building $name FAILED; last lines of $BIN/build-$name.log:"; tail -n 40 "$BIN/build-$name.log" >&2; exit 1
  fi
  echo "$name $((SECONDS - t0))s" >>"$BIN/build-times.txt"
  touch "$BIN/.done-$name"
}

KLD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  KLD+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build_k8s() { cd "$HERE/k8s" && go build -trimpath -ldflags "$KLD" -o "$BIN/" "k8s.io/kubernetes/cmd/$1"; }
build_etcd() { cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3; }
build_kwok() {
  cd "$BIN" && GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  # The kwok binary ships no stages; take upstream's own stage files from the module.
  local kw; kw="$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION/kustomize/stage"
  for f in node/fast/node-initialize.yaml pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$kw/$f"; printf '\n---\n'
  done >"$BIN/kwok-stages.yaml"
}
build_helm() {
  local maj=${HELM_VERSION%%.*} ld
  ld="-s -w -X helm.sh/helm/v$maj/internal/version.version=v$HELM_VERSION"
  [[ $maj == 3 ]] && ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$MINOR -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$MINOR"
  cd "$BIN" && GOBIN="$BIN" go install -trimpath -ldflags "$ld" "helm.sh/helm/v$maj/cmd/helm@v$HELM_VERSION"
}

# containerd's own build tags drop the snapshotters that need C libraries (CGO is off).
build_containerd() {
  local pkg=github.com/containerd/containerd/v2 c
  local ld="-s -w -X $pkg/version.Version=v$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
  local pkgs=()
  for c in containerd ctr containerd-shim-runc-v2; do pkgs+=("$pkg/cmd/$c@v$CONTAINERD_VERSION"); done
  cd "$BIN" && GOBIN="$BIN" go install -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ld" "${pkgs[@]}"
}
build_crictl() {
  cd "$BIN" && GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION"
}

# The pod sandbox image, a static C program packed like every image of the project.
build_pause() {
  local img=$HERE/../image
  gcc -static -Os -s -o "$BIN/pause" "$img/pause.c"
  python3 "$img/oci.py" build pause --binary "$BIN/pause" --name "localhost/routestate/pause:$PAUSE_TAG" --out "$BIN/pause.oci.tar"
  echo "localhost/routestate/pause:$PAUSE_TAG" >"$BIN/pause.image"
}

if [[ $WHAT == node ]]; then
  step "pause-$PAUSE_TAG" build_pause
  step kubelet build_k8s kubelet
  step containerd build_containerd
  step crictl build_crictl
else
  step etcd build_etcd
  step kube-apiserver build_k8s kube-apiserver
  step kube-controller-manager build_k8s kube-controller-manager
  step kube-scheduler build_k8s kube-scheduler
  step kubectl build_k8s kubectl
  step kwok build_kwok
  step helm build_helm
fi

touch "$BIN/$COMPLETE"
echo "$BIN"
