#!/usr/bin/env bash
# `make mutants` (by hand, not in CI): mutation testing of the pure code with cargo-mutants.
# Copies of the tree leave out what .gitignore names (a running local cluster's mounts among it).
# Every surviving mutant must be killed by a test or be listed, with why it is equivalent, in
# docs/mutation-testing.md. Installs cargo-mutants when missing.
#
# Scope: the crate routestate-core (wire codecs, keys, selection), and the pure parts of the
# operator: the derivation (derive.rs), the Event diff and the pod index of the controller
# (controller/events.rs, controller/pods.rs), the status patch interval (reconcile.rs), the error
# labels (error.rs) and the decision functions of leader.rs (its async loop is I/O and is tested
# against the real cluster instead). Each mutant is built and run against the unit tests
# (`--lib`, which include the controller's scenario tests against a scripted API); about 4 min for
# the core and 30 min for the operator part on 2 cores.
#
#   hack/mutants.sh            both parts
#   hack/mutants.sh core       the core crate only
#   hack/mutants.sh operator   derive.rs and leader.rs only
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${MUTANTS_OUT:-$ROOT/target/mutants}
part=${1:-all}
if ! cargo mutants --version >/dev/null 2>&1; then
  echo "mutants: installing cargo-mutants (cargo install --locked cargo-mutants)" >&2
  cargo install --locked cargo-mutants >&2
fi
mkdir -p "$OUT/core" "$OUT/operator"
status=0
if [[ $part == all || $part == core ]]; then
  cargo mutants --gitignore=true --package routestate-core --output "$OUT/core" -- --lib || status=$?
fi
if [[ $part == all || $part == operator ]]; then
  # leader.rs and reconcile.rs: only their pure functions; the rest talks to the API server.
  cargo mutants --gitignore=true --package routestate --file src/operator/derive.rs --file src/operator/leader.rs \
    --file src/operator/error.rs --file src/operator/controller/events.rs \
    --file src/operator/controller/pods.rs --file src/operator/controller/reconcile.rs \
    --re 'derive\.rs|error\.rs|events\.rs|pods\.rs|reconcile\.rs.*\bstatus_patch_wait\b' \
    --re 'leader\.rs.*\b(decide|claimed|check_timing|validate|claim_validity|valid_at|publish_claim)\b' \
    --output "$OUT/operator" -- --lib || status=$?
fi
echo "mutants: reports in $OUT/*/mutants.out (missed.txt, caught.txt, timeout.txt)" >&2
exit "$status"
