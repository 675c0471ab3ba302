#!/usr/bin/env bash
# Regenerates the wrapper modules hack/testbin/{k8s,etcd}/go.mod+go.sum that let us build
# kube-apiserver & co. from the Go module proxy. k8s.io/kubernetes requires its staging
# modules at v0.0.0 with ./staging replaces, which a consumer cannot see; we replace each
# staging module (read from the real upstream go.mod) with its published v0.X.Y tag.
# Usage: hack/testbin/gen-gomod.sh [K8S_VERSION] [ETCD_VERSION]
set -euo pipefail
K8S_VERSION=${1:-1.37.2}
ETCD_VERSION=${2:-3.6.16}
SV="v0.${K8S_VERSION#1.}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOFLAGS=-mod=mod CGO_ENABLED=0
MC=$(go env GOMODCACHE)

rm -rf "$HERE/k8s"; mkdir -p "$HERE/k8s"; cd "$HERE/k8s"
go mod init testbin.local/k8s
go mod edit -go=1.26.0
go mod download "k8s.io/kubernetes@v$K8S_VERSION"
UP="$MC/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
echo "k8s.io/kubernetes v$K8S_VERSION: $(grep -E '^go ' "$UP") (local: $(go env GOVERSION))"
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$UP"); do
  go mod edit -replace="$m=$m@$SV"
done
go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands this wrapper module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
go mod tidy

rm -rf "$HERE/etcd"; mkdir -p "$HERE/etcd"; cd "$HERE/etcd"
go mod init testbin.local/etcd
go mod edit -go=1.26.0
go mod edit -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the etcd server this wrapper module builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
GO
go mod tidy
