#!/usr/bin/env bash
# `make image-oci` / `make image-load`: the operator image and the example game-server image as
# OCI archives, built without a container engine. One release build makes both binaries
# (static: x86_64-unknown-linux-gnu with crt-static, so the image needs no C library), and
# hack/image/oci.py packs each onto the same layout as the Dockerfile's distroless base.
#
#   hack/image/build.sh         target/images/routestate.oci.tar, target/images/game-server.oci.tar
#   hack/image/build.sh load    the same, then imported into the local cluster's real node
#
# IMAGE_TAG (default dev) tags both: localhost/routestate:TAG, localhost/routestate-game-server:TAG.
# Push one with skopeo: skopeo copy oci-archive:target/images/routestate.oci.tar:TAG docker://REGISTRY/routestate:TAG
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TAG=${IMAGE_TAG:-dev}
TARGET=x86_64-unknown-linux-gnu
OUT=$ROOT/target/images
say() { echo "image: $*" >&2; }
die() { say "$*"; exit 1; }

[[ $(uname -m) == x86_64 ]] || die "the images are built for linux/amd64 on an x86_64 machine (this is $(uname -m))"
[[ ${1:-build} == build || ${1:-} == load ]] || die "usage: hack/image/build.sh [load]"

say "release build of routestate and examples/game_server (static)"
# Target-specific flags: build scripts and proc macros stay dynamic host binaries.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --quiet --target "$TARGET" --bin routestate --example game_server
REL=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release
for b in "$REL/routestate" "$REL/examples/game_server"; do
  # No program interpreter = nothing to load at run time.
  if readelf -lW "$b" | grep -q 'Requesting program interpreter'; then die "$b is dynamically linked; the image has no C library"; fi
done

python3 hack/image/oci.py build operator --binary "$REL/routestate" --name "localhost/routestate:$TAG" --out "$OUT/routestate.oci.tar" >&2
python3 hack/image/oci.py build game-server --binary "$REL/examples/game_server" \
  --name "localhost/routestate-game-server:$TAG" --out "$OUT/game-server.oci.tar" >&2

if [[ ${1:-} == load ]]; then
  # shellcheck disable=SC1090
  source <(hack/cluster.sh env) || die "no local cluster (run: make cluster-up)"
  [[ -z ${ROUTESTATE_NODE_ABSENT:-} ]] || die "the local cluster has no real node: $ROUTESTATE_NODE_ABSENT"
  [[ -n ${CONTAINERD_ADDRESS:-} ]] || die "the local cluster has no real node (see make cluster-up's output)"
  for a in routestate game-server; do
    out=$(ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images import "$OUT/$a.oci.tar" 2>&1) || die "importing $a: $out"
  done
  say "imported localhost/routestate:$TAG and localhost/routestate-game-server:$TAG into the node's containerd"
fi
