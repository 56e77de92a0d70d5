#!/usr/bin/env bash
# Builds Traefik (cmd/traefik at a pinned release) from its Go module into a
# cache directory outside the repository: the Gateway API data plane of the
# real-node tests (e2e/test_realnode_gateway.py). A warm cache returns at once.
#
# A wrapper module requires the release and copies the release's own replace
# and exclude directives (`go install pkg@version` refuses a module that has
# any), so the build list is the release's. One of them points at a nested
# module inside Traefik's repository (github.com/traefik/traefik/dynamic/ext,
# in pkg/config/dynamic/ext) that is neither in the module's zip nor published
# on its own: it is Traefik's extension point for its configuration types, two
# empty structs in the open-source build, so the wrapper provides them.
# The web UI (webui/embed.go: `//go:embed static`) embeds a folder that the
# release ships with one placeholder file, so the build needs no UI assets
# (the dashboard stays off).
#
# Prints the path of the binary on stdout as its last line; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
module=github.com/traefik/traefik/v3

cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}
dest="$cache_root/traefik-$TRAEFIK_VERSION"
bin="$dest/traefik"

log() { printf '[traefik-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$dest.lock"
if ! flock -n 9; then
  log "another build holds $dest.lock; waiting for it"
  flock 9
fi
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
log "fetching $module@$TRAEFIK_VERSION"
src=$(cd "$work" && go mod download -json "$module@$TRAEFIK_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -f "$src/go.mod" ] || { log "module source not found"; exit 1; }
[ -d "$src/webui/static" ] || { log "$module@$TRAEFIK_VERSION has no webui/static to embed"; exit 1; }

# v3.7 and later: the nested extension module, as the open-source build has it.
write_ext_module() {
  mkdir -p "$work/ext"
  printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24\n' >"$work/ext/go.mod"
  cat >"$work/ext/ext.go" <<'GO'
// Package ext holds the extension points of Traefik's dynamic configuration
// types; the open-source build leaves them empty.
package ext

// HTTP is embedded in dynamic.HTTPConfiguration.
type HTTP struct{}

// Router is embedded in dynamic.Router.
type Router struct{}

// RouterIng extends the ingress provider's router annotations.
type RouterIng struct{}

// ToRouter converts RouterIng to a Router.
func (RouterIng) ToRouter() Router { return Router{} }
GO
}
if grep -q '=> \./' "$src/go.mod"; then write_ext_module; fi

{
  echo "module local/traefikbuild"
  echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')"
  echo "require $module $TRAEFIK_VERSION"
  # The release's replace and exclude directives, single-line and block forms
  # alike; a replacement by a path inside the release's tree (./...) is the
  # extension module above.
  awk '
    /^(replace|exclude) \(/ { block = $1; next }
    block != "" && /^\)/ { block = ""; next }
    block != "" && NF && $1 !~ /^\/\// { print block " " $0; next }
    /^(replace|exclude) / { print }
  ' "$src/go.mod" | sed 's#=> \./[^ ]*$#=> ./ext#'
} >"$work/go.mod"
printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/traefik"\n' "$module" >"$work/tools.go"
log "resolving the build list"
(cd "$work" && go mod tidy -e >"$work/tidy.log" 2>&1 || { cat "$work/tidy.log" >&2; false; })
log "building traefik (a cold build takes several minutes)"
mkdir -p "$dest"
v=$module/pkg/version
ldflags="-s -w -X $v.Version=$TRAEFIK_VERSION -X $v.BuildDate=1970-01-01T00:00:00Z"
(cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" "$module/cmd/traefik")
mv "$bin.tmp" "$bin"
log "built in $(( $(date +%s) - start )) s: $bin"
echo "$bin"
