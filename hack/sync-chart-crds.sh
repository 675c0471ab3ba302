#!/usr/bin/env bash
# Copies the generated CRDs (crds/, from `routestate crd`) into the Helm chart's crds/ folder.
# A test (tests/it/chart_static.rs) fails when the two differ, so run this after `make crd`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dst=$ROOT/charts/routestate/crds
mkdir -p "$dst"
# Remove chart CRDs that no longer exist at the top level, then copy byte for byte.
for f in "$dst"/*.yaml; do
  [[ -e $f ]] || continue
  [[ -e $ROOT/crds/$(basename "$f") ]] || rm -f "$f"
done
cp "$ROOT"/crds/*.yaml "$dst"/
