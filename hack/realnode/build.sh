#!/usr/bin/env bash
# Builds the parts of a real node (kubelet, kube-proxy, containerd, ctr, the
# runc shim, runc, the CNI plugins) from Go modules into a cache directory
# outside the repository, keyed by the pinned versions. A warm cache returns
# at once. kubelet and kube-proxy come from the same k8s.io/kubernetes wrapper
# module as the control plane (hack/cluster/build.sh), so the Go build cache
# it left behind makes them cheap.
#
# Prints the bin directory on stdout as its last line; progress goes to stderr.
# Needs go, and cgo with libseccomp-dev for runc (hack/realnode/deps.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../cluster/versions.env
. "$here/../cluster/versions.env"
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}
key="realnode-k8s-${KUBERNETES_VERSION}_containerd-${CONTAINERD_VERSION}_runc-${RUNC_VERSION}_cni-${CNI_PLUGINS_VERSION}_coredns-${COREDNS_VERSION}"
dest="$cache_root/$key"
bin="$dest/bin"
cni_bin="$dest/cni-bin"

log() { printf '[realnode-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

want=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2 runc coredns)
cni_want=(bridge host-local loopback portmap)

is_complete() {
  local b
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
  for b in "${cni_want[@]}"; do [ -x "$cni_bin/$b" ] || return 1; done
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
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
mkdir -p "$bin" "$cni_bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
goversion=$(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')
# Each binary is built into the work dir and moved in whole, so an
# interrupted build never leaves a truncated executable that looks complete.
install_bin() { chmod 0755 "$1" && mv -f "$1" "$2"; }

build_kubernetes() {
  local m="$work/kubernetes" staging_version="v0.${KUBERNETES_VERSION#v1.}" gomod
  mkdir -p "$m"
  log "resolving k8s.io/kubernetes@$KUBERNETES_VERSION"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  {
    echo "module local/kubebuild"
    echo "go $goversion"
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    # The release's go.mod replaces every staging module by a path inside its
    # own tree; point each one at its published version instead.
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#replace \1 => \1 '"$staging_version"'#p' "$gomod"
  } >"$m/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kubelet"\n\t_ "k8s.io/kubernetes/cmd/kube-proxy"\n)\n' >"$m/tools.go"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  log "downloading Kubernetes modules"
  (cd "$m" && go mod tidy -e >&2 2>"$work/tidy.log" || { cat "$work/tidy.log" >&2; false; })
  local c
  for c in kubelet kube-proxy; do
    [ -x "$bin/$c" ] && continue
    log "building $c"
    (cd "$m" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$work/$c" "k8s.io/kubernetes/cmd/$c")
    install_bin "$work/$c" "$bin/$c"
  done
}

build_containerd() {
  local tags="urfave_cli_no_docs osusergo netgo static_build no_btrfs no_devmapper no_zfs"
  local ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  local gobin="$work/containerd-bin"
  mkdir -p "$gobin"
  if [ ! -x "$bin/containerd" ] || [ ! -x "$bin/ctr" ]; then
    log "building containerd and ctr $CONTAINERD_VERSION (the longest build: about 10 min cold)"
    GOBIN="$gobin" CGO_ENABLED=0 go install -trimpath -tags "$tags" -ldflags "$ldflags" \
      "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
    install_bin "$gobin/containerd" "$bin/containerd"
    install_bin "$gobin/ctr" "$bin/ctr"
  fi
  if [ ! -x "$bin/containerd-shim-runc-v2" ]; then
    log "building containerd-shim-runc-v2 $CONTAINERD_VERSION"
    GOBIN="$gobin" CGO_ENABLED=0 go install -trimpath -tags "$tags no_grpc" -ldflags "$ldflags" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
    install_bin "$gobin/containerd-shim-runc-v2" "$bin/containerd-shim-runc-v2"
  fi
}

build_runc() {
  # Debian's crun (1.8.1) rejects containerd 2.4's ociVersion and the host's
  # hybrid cgroup layout; runc from source handles both. It needs cgo and
  # libseccomp's headers.
  [ -e /usr/include/seccomp.h ] || { log "libseccomp-dev is missing (run hack/realnode/deps.sh)"; exit 1; }
  log "building runc $RUNC_VERSION"
  local gobin="$work/runc-bin"
  mkdir -p "$gobin"
  GOBIN="$gobin" CGO_ENABLED=1 go install -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
  install_bin "$gobin/runc" "$bin/runc"
}

build_cni() {
  log "building CNI plugins $CNI_PLUGINS_VERSION (${cni_want[*]})"
  local gobin="$work/cni-bin" p pkgs=()
  mkdir -p "$gobin"
  local mod=github.com/containernetworking/plugins/plugins
  pkgs=("$mod/main/bridge" "$mod/main/loopback" "$mod/meta/portmap" "$mod/ipam/host-local")
  pkgs=("${pkgs[@]/%/@$CNI_PLUGINS_VERSION}")
  GOBIN="$gobin" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "${pkgs[@]}"
  for p in "${cni_want[@]}"; do install_bin "$gobin/$p" "$cni_bin/$p"; done
}

build_coredns() {
  # The Job tests reach the canary by its Service's name, so the node needs a
  # cluster DNS. A wrapper main with only the plugins the node uses (CoreDNS's
  # own way of choosing plugins at compile time) keeps the build small.
  local m="$work/coredns"
  mkdir -p "$m"
  cat >"$m/go.mod" <<MOD
module local/corednsbuild
go $goversion
require github.com/coredns/coredns $COREDNS_VERSION
MOD
  cat >"$m/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order plugins run in; CoreDNS's plugin.cfg fixes the same relative order.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "kubernetes"}
}

func main() { coremain.Run() }
GO
  log "building coredns $COREDNS_VERSION (bind, ready, health, errors, log, kubernetes)"
  (cd "$m" && go mod tidy >&2 2>"$work/coredns-tidy.log" || { cat "$work/coredns-tidy.log" >&2; false; })
  (cd "$m" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/coredns-out" .)
  install_bin "$work/coredns-out" "$bin/coredns"
}

start=$(date +%s)
step() { # step NAME FUNCTION: run it and log its duration
  local s=$EPOCHSECONDS
  "$2"
  log "$1 took $((EPOCHSECONDS - s)) s"
}
[ -x "$bin/runc" ] || step runc build_runc
ok=1; for b in "${cni_want[@]}"; do [ -x "$cni_bin/$b" ] || ok=0; done
[ $ok = 1 ] || step cni build_cni
{ [ -x "$bin/kubelet" ] && [ -x "$bin/kube-proxy" ]; } || step kubelet+kube-proxy build_kubernetes
{ [ -x "$bin/containerd" ] && [ -x "$bin/ctr" ] && [ -x "$bin/containerd-shim-runc-v2" ]; } || step containerd build_containerd
[ -x "$bin/coredns" ] || step coredns build_coredns
log "built in $(( $(date +%s) - start )) s into $bin"
echo "$bin"
