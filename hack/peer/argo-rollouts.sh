#!/usr/bin/env bash
# Builds Argo Rollouts' controller (cmd/rollouts-controller at a pinned release)
# from its Go module into a cache directory outside the repository, for the
# side-by-side benchmark (bench/bench_peer.py). A warm cache returns at once.
#
# A wrapper module requires the release and copies the release's own replace
# directives (a `go install pkg@version` refuses modules that have any), so the
# build list is the release's.
#
# Prints the path of the binary on stdout as its last line; progress goes to stderr.
set -euo pipefail

ARGO_ROLLOUTS_VERSION=${ARGO_ROLLOUTS_VERSION:-v1.9.1}
module=github.com/argoproj/argo-rollouts

cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}
dest="$cache_root/argo-rollouts-$ARGO_ROLLOUTS_VERSION"
bin="$dest/rollouts-controller"

log() { printf '[argo-rollouts %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$dest.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
log "fetching $module@$ARGO_ROLLOUTS_VERSION"
src=$(cd "$work" && go mod download -json "$module@$ARGO_ROLLOUTS_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -f "$src/go.mod" ] || { log "module source not found"; exit 1; }

{
  echo "module local/argorolloutsbuild"
  echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')"
  echo "require $module $ARGO_ROLLOUTS_VERSION"
  # The release's replace directives, single-line and block forms alike.
  awk '
    /^replace \(/ { block = 1; next }
    block && /^\)/ { block = 0; next }
    block && NF { print "replace " $0; next }
    /^replace / { print }
  ' "$src/go.mod"
} >"$work/go.mod"
printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/rollouts-controller"\n' "$module" >"$work/tools.go"
(cd "$work" && go mod tidy -e >"$work/tidy.log" 2>&1 || { cat "$work/tidy.log" >&2; false; })
log "building rollouts-controller (a cold build takes several minutes)"
mkdir -p "$dest"
ldflags="-s -w -X $module/utils/version.version=${ARGO_ROLLOUTS_VERSION#v} -X $module/utils/version.gitTreeState=clean"
(cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" "$module/cmd/rollouts-controller")
# The CRDs the controller needs, from the same release.
cp "$src/manifests/crds/rollout-crd.yaml" "$src/manifests/crds/analysis-run-crd.yaml" \
  "$src/manifests/crds/analysis-template-crd.yaml" "$src/manifests/crds/cluster-analysis-template-crd.yaml" \
  "$src/manifests/crds/experiment-crd.yaml" "$dest/"
chmod u+w "$dest"/*-crd.yaml
mv "$bin.tmp" "$bin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"
