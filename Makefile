# routestate developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

.PHONY: help test unit lint fmt testbin cluster-up cluster-down cluster-env cluster-status crd bench run

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

test: ## everything, unit to end-to-end: starts the local cluster + Redis if needed, stops what it started
	hack/test.sh

unit: ## unit tests only (no cluster): the core crate and the library's own; the controller's scenario tests start a private redis-server
	cargo test --workspace --lib

lint: ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format the code
	cargo fmt --all

testbin: ## build (or find cached) etcd, kube-*, kwok, helm from Go modules
	hack/testbin/build.sh

cluster-up: ## start the local control plane, kwok node, Redis and Redis Cluster
	hack/cluster.sh up

cluster-down: ## stop what cluster-up started
	hack/cluster.sh down

cluster-env: ## print the env file (source it: `source <(make -s cluster-env)`)
	@hack/cluster.sh env

cluster-status: ## exit 0 when the local cluster is healthy
	hack/cluster.sh status

bench: ## library benchmarks vs redis-benchmark, then the operator at fleet scale on a private cluster (SIZES="1000 5000 10000" for the full fleet; docs/performance.md)
	cargo bench --bench library
	cargo bench --bench system_publish
	hack/bench-cluster.sh

# --- operating routestate (chart, image, local run) ---
.PHONY: run image chart-lint crd

run: ## the operator on the local cluster (started if needed) with examples/; Ctrl-C stops what it started
	hack/run.sh

crd: ## regenerate crds/ from the Rust types and copy them into the chart
	cargo run -q -- crd > crds/routestate.yaml.tmp && mv crds/routestate.yaml.tmp crds/routestate.yaml
	hack/sync-chart-crds.sh

chart-lint: ## helm lint (strict) and render the chart
	helm=$$(command -v helm || echo "$$(hack/testbin/build.sh)/helm"); \
	"$$helm" lint --strict charts/routestate && "$$helm" template routestate charts/routestate >/dev/null

image: ## build the container image routestate:dev with Docker (elsewhere: make image-oci)
	docker build -t routestate:dev .

.PHONY: image-oci image-load
image-oci: ## the operator and example game-server images as OCI archives in target/images/, without Docker
	hack/image/build.sh

image-load: ## image-oci, then import both images into the local cluster's real node
	hack/image/build.sh load

# --- reliability: soak, fuzz and mutation testing; each starts what it needs privately ---
.PHONY: soak fuzz mutants

soak: ## 10 minutes of churn (pod deletions, RouteState patches, Redis restarts) on a private cluster, invariants checked continuously
	hack/soak.sh

fuzz: ## every cargo-fuzz target for FUZZ_SECONDS (default 20) each; needs nightly, installs cargo-fuzz if missing
	hack/fuzz.sh

mutants: ## mutation testing of the pure code (cargo-mutants; by hand, about 30 min): see docs/mutation-testing.md
	hack/mutants.sh
