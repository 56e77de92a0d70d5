#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3/cmd/helm at a pinned version)
# into a cache directory outside the repository; a warm cache returns at once.
# Used by the chart tests (tests/harness/helm.py) and by anyone who wants the
# same helm the tests use.
#
# Prints the path of the helm binary on stdout as its last line; progress goes
# to stderr.
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}

cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}
dest="$cache_root/helm-$HELM_VERSION"
helm="$dest/helm"

log() { printf '[helm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi

# Serialise concurrent builds (two test sessions on a cold machine).
mkdir -p "$cache_root"
exec 9>"$dest.lock"
flock 9
if [ -x "$helm" ]; then
  echo "$helm"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A wrapper module, like the cluster binaries: it pins helm's own dependency
# versions (go.mod of the release) without needing `go install pkg@version`.
cat >"$work/go.mod" <<MOD
module local/helmbuild
go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')
require helm.sh/helm/v3 $HELM_VERSION
MOD
printf '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n' >"$work/tools.go"
start=$(date +%s)
log "resolving helm.sh/helm/v3@$HELM_VERSION"
(cd "$work" && go mod tidy -e >"$work/tidy.log" 2>&1 || { cat "$work/tidy.log" >&2; false; })
log "building helm (a cold build takes a few minutes)"
mkdir -p "$dest"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
(cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$helm.tmp" helm.sh/helm/v3/cmd/helm)
mv "$helm.tmp" "$helm"
log "built in $(( $(date +%s) - start )) s: $helm"
echo "$helm"
