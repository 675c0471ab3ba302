#!/usr/bin/env bash
# `make test`: lint, unit tests and integration tests against the local cluster. Starts the
# cluster when it is not already running and stops it afterwards only if this run started it.
# With TEST_KUBECONFIG and REDIS_URL set, uses that cluster and Redis instead.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
t0=$SECONDS
step() { echo "== test: $* ($((SECONDS - t0))s)" >&2; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (see README)" >&2; exit 1; }

# Compiled artifacts live outside the repository, like the Go test binaries, so a fresh clone
# compiles only routestate itself, not its dependencies again (cargo keeps them apart per
# source and profile). CARGO_TARGET_DIR overrides it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/routestate-target}

# Build the Go binaries first: on a cold machine this is the long part, and a failure here
# should say so before anything else runs.
step "test binaries"
hack/testbin/build.sh >/dev/null
hack/testbin/build.sh node >/dev/null

started=0
if [[ -n ${TEST_KUBECONFIG:-} ]]; then
  export KUBECONFIG=$TEST_KUBECONFIG
  : "${REDIS_URL:?set REDIS_URL together with TEST_KUBECONFIG}"
else
  if ! hack/cluster.sh status 2>/dev/null; then
    step "starting the local cluster"
    hack/cluster.sh up
    started=1
  fi
  # shellcheck disable=SC1090
  source <(hack/cluster.sh env)
fi
cleanup() { if ((started)); then step "stopping the local cluster"; hack/cluster.sh down; fi; }
trap cleanup EXIT

# --- real node: the images its tests run (one release build for both) ---
if [[ -n ${ROUTESTATE_NODE:-} ]]; then
  step "images for the real node (make image-load)"
  hack/image/build.sh load
else
  echo "== test: NO real node (${ROUTESTATE_NODE_ABSENT:-not this cluster}): its tests will fail with that reason" >&2
fi
# --- end real node ---

step "lint"
make -s lint

step "unit and integration tests"
# Library, binary, integration and doc tests (benches are compiled by clippy above and run by `make bench`).
cargo test --workspace --locked

step "library examples"
# The runnable examples of the client and server roles, against the test Redis (own namespace).
EXAMPLE_NAMESPACE="example-$$" cargo run --locked -q --example client
EXAMPLE_NAMESPACE="example-$$" cargo run --locked -q --example server

# --- fuzz: every codec fuzz target for a bounded time; fails if nightly is missing ---
step "fuzz targets (${FUZZ_SECONDS:-20}s each)"
hack/fuzz.sh
# --- end fuzz ---

step "done"
