#!/usr/bin/env bash
# Builds the real Kubernetes API server and etcd used by the daemon's integration tests and the
# demo, from the Go module proxy, into a cache outside the repository (once per machine):
#
#   $SCALE_CACHE/k8s/bin/kube-apiserver   k8s.io/kubernetes v1.37.2 (cmd/kube-apiserver)
#   $SCALE_CACHE/k8s/bin/etcd             go.etcd.io/etcd/server/v3 v3.7.3 (etcdmain)
#
# k8s.io/kubernetes is not meant to be a dependency: its go.mod replaces every k8s.io/<staging>
# module with a directory inside its own repository. A small wrapper module requires it and
# replaces each of those modules with its published v0.37.2 instead. etcd gets a three-line main
# around etcdmain. Prints the bin directory as its last line. Takes ~14 min on two busy cores.
#
# Flags verified with these binaries (no controllers, loopback only):
#   etcd --data-dir D --listen-client-urls http://127.0.0.1:P --advertise-client-urls http://127.0.0.1:P
#        --listen-peer-urls http://127.0.0.1:Q --initial-advertise-peer-urls http://127.0.0.1:Q
#        --initial-cluster default=http://127.0.0.1:Q --unsafe-no-fsync
#   kube-apiserver --etcd-servers=http://127.0.0.1:P --bind-address=127.0.0.1
#        --advertise-address=127.0.0.1 --secure-port=S --cert-dir=D (self-signed serving cert)
#        --service-account-issuer=https://kubernetes.default.svc --service-account-key-file=sa.pub
#        --service-account-signing-key-file=sa.key --token-auth-file=tokens.csv
#        --authorization-mode=RBAC --service-cluster-ip-range=10.0.0.0/24
#        --endpoint-reconciler-type=none   (required: 127.0.0.1 is refused as a public address)
#   /readyz answers "ok" about 2 s after start; tokens.csv lines: token,user,uid,"group1,group2".
set -euo pipefail
K8S_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.7.3
CACHE="${SCALE_CACHE:-$HOME/.cache/scale}/k8s"
BIN="$CACHE/bin"
STAMP="$BIN/.versions"
WANT="kube-apiserver $K8S_VERSION etcd $ETCD_VERSION"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$BIN" "$CACHE/src"

# --- kube-apiserver -------------------------------------------------------------------------
W="$CACHE/src/kube-apiserver"
rm -rf "$W" && mkdir -p "$W" && cd "$W"
go mod init scale.local/kube-apiserver >/dev/null 2>&1
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$modfile"); do
    go mod edit -replace="$m=$m@$STAGING_VERSION"
done
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the kube-apiserver command for `go build`.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
GO
echo "k8s-bins: resolving kube-apiserver $K8S_VERSION modules" >&2
go mod tidy >&2
echo "k8s-bins: building kube-apiserver (several minutes on two cores)" >&2
go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
    -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver

# --- etcd -----------------------------------------------------------------------------------
W="$CACHE/src/etcd"
rm -rf "$W" && mkdir -p "$W" && cd "$W"
go mod init scale.local/etcd >/dev/null 2>&1
cat > main.go <<'GO'
// Command etcd is etcd's own server entry point (go.etcd.io/etcd/server/v3/etcdmain).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
echo "k8s-bins: resolving etcd $ETCD_VERSION modules" >&2
go mod tidy >&2
echo "k8s-bins: building etcd" >&2
go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .

echo "$WANT" > "$STAMP"
"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version >&2 | head -1 || true
echo "$BIN"
