#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from Go modules into a cache directory outside
# the repository, keyed by the pinned versions. A warm cache returns at once.
#
# Prints the bin directory on stdout as its last line; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_gw-${GATEWAY_API_VERSION}"
dest="$cache_root/$key"
bin="$dest/bin"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
# The stage set kwok's own default ("kustomize/stage/fast") is made of: node
# initialize + node heartbeat (lease flavour: kwok renews the node Leases, so
# the status heartbeat is rare) + pod ready/complete/delete.
kwok_stages=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
)

stages_complete() {
  local s
  for s in "${kwok_stages[@]}"; do [ -s "$dest/kwok-stages/${s##*/}" ] || return 1; done
}
gateway_complete() { [ -s "$dest/gateway-api-crds/gateway.networking.k8s.io_httproutes.yaml" ]; }
# kwok's log simulation (Logs, ClusterLogs): up.sh installs these CRDs so tests can
# say what `kubectl logs` of a simulated pod returns.
kwok_crds=(kwok.x-k8s.io_logs.yaml kwok.x-k8s.io_clusterlogs.yaml)
kwok_crds_complete() {
  local c
  for c in "${kwok_crds[@]}"; do [ -s "$dest/kwok-crds/$c" ] || return 1; done
}
is_complete() {
  local b
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
  stages_complete && gateway_complete && kwok_crds_complete
}

if is_complete; then
  log "using cached binaries in $bin"
  echo "$bin"
  exit 0
fi

# Serialise concurrent builds (two test sessions on a cold machine).
mkdir -p "$cache_root"
exec 9>"$dest.lock"
if ! flock -n 9; then
  log "another build holds $dest.lock; waiting for it"
  flock 9
fi
if is_complete; then
  log "using cached binaries in $bin (built by a concurrent run)"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Staging modules are published as k8s.io/<name> v0.<minor>.<patch>.
staging_version="v0.${KUBERNETES_VERSION#v1.}"

modfile() { # module@version -> path of its go.mod in the module cache
  go mod download -json "$1" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p'
}

build_kubernetes() {
  local m="$work/kubernetes"
  mkdir -p "$m"
  log "resolving k8s.io/kubernetes@$KUBERNETES_VERSION"
  local gomod
  gomod=$(modfile "k8s.io/kubernetes@$KUBERNETES_VERSION")
  {
    echo "module local/kubebuild"
    echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')"
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    # The release's go.mod replaces every staging module by a path inside its
    # own tree; point each one at its published version instead.
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
  } >"$m/go.mod"
  cat >"$m/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  log "downloading Kubernetes modules"
  (cd "$m" && go mod tidy -e >&2 2>"$work/tidy.log" || { cat "$work/tidy.log" >&2; false; })
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "building $c (a cold build takes several minutes)"
    (cd "$m" && go build -trimpath -ldflags "$ldflags" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c")
  done
}

build_etcd() {
  local m="$work/etcd"
  mkdir -p "$m"
  log "resolving go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  cat >"$m/go.mod" <<MOD
module local/etcdbuild
go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
replace go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
replace go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
replace go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
replace go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
MOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$m/tools.go"
  (cd "$m" && go mod tidy -e >&2 2>"$work/etcd-tidy.log" || { cat "$work/etcd-tidy.log" >&2; false; })
  log "building etcd"
  (cd "$m" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  log "building kwok $KWOK_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

copy_kwok_stages() {
  # kwok >= 0.8 ships no built-in stages: take the stage files from the module.
  log "copying kwok $KWOK_VERSION stages"
  local src s
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  rm -rf "$dest/kwok-stages.tmp"; mkdir -p "$dest/kwok-stages.tmp"
  for s in "${kwok_stages[@]}"; do
    cp "$src/kustomize/stage/$s" "$dest/kwok-stages.tmp/"
  done
  chmod u+w "$dest/kwok-stages.tmp"/*
  rm -rf "$dest/kwok-stages"; mv "$dest/kwok-stages.tmp" "$dest/kwok-stages"
  ls "$dest/kwok-stages" >&2
}

copy_kwok_crds() {
  log "copying kwok $KWOK_VERSION Logs/ClusterLogs CRDs"
  local src c
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  rm -rf "$dest/kwok-crds.tmp"; mkdir -p "$dest/kwok-crds.tmp"
  for c in "${kwok_crds[@]}"; do cp "$src/kustomize/crd/bases/$c" "$dest/kwok-crds.tmp/"; done
  chmod u+w "$dest/kwok-crds.tmp"/*
  rm -rf "$dest/kwok-crds"; mv "$dest/kwok-crds.tmp" "$dest/kwok-crds"
}

fetch_gateway_api() {
  log "fetching Gateway API $GATEWAY_API_VERSION CRDs"
  local src
  src=$(go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
  rm -rf "$dest/gateway-api-crds"; mkdir -p "$dest/gateway-api-crds"
  cp "$src"/config/crd/standard/*.yaml "$dest/gateway-api-crds/"
  rm -f "$dest/gateway-api-crds/kustomization.yaml"
  chmod u+w "$dest/gateway-api-crds"/*
}

start=$(date +%s)
[ -x "$bin/kwok" ] || build_kwok
stages_complete || copy_kwok_stages
gateway_complete || fetch_gateway_api
kwok_crds_complete || copy_kwok_crds
[ -x "$bin/etcd" ] || build_etcd
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$bin/$b" ] || { build_kubernetes; break; }
done
log "built in $(( $(date +%s) - start )) s into $bin"
echo "$bin"
