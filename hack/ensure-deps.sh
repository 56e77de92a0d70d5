#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, and only those
# that are missing (a no-op on a prepared machine). Run by `make test` and
# .ci/run. Go is not installed here: it must be on PATH to build the local
# control plane (unless its binaries are already cached).
#
#   hack/ensure-deps.sh
set -euo pipefail

log() { printf '[deps] %s\n' "$*" >&2; }

missing=()
need() { # need PACKAGE CHECK-COMMAND...
  local pkg=$1
  shift
  if ! "$@" >/dev/null 2>&1; then missing+=("$pkg"); fi
}
have() { command -v "$1"; }

need make have make
need python3 have python3
# venv + ensurepip: Debian splits them out of python3. The package is named
# after the interpreter's version when python3 is Debian's own.
if have python3 >/dev/null && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=("python3-venv")
  pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  missing+=("python${pyver}-venv")
fi
need openssl have openssl
need util-linux have setsid       # setsid, flock
need util-linux have flock
need coreutils have base64
need procps have ps
need ca-certificates test -e /etc/ssl/certs/ca-certificates.crt
# The analysis tests run a real Prometheus server.
need prometheus have prometheus
need prometheus have promtool     # the alert rule tests (manifests/monitoring)
# `make image` (and its test): a Debian root filesystem and an OCI layout, no daemon.
need mmdebstrap have mmdebstrap
need umoci have umoci

if [ ${#missing[@]} -gt 0 ]; then
  # de-duplicate, keep only packages the archive knows
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "missing ${missing[*]} and not root (no sudo)"; exit 1; }
    sudo=(sudo)
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  available=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then available+=("$p"); else log "no package $p here; skipping"; fi
  done
  # Packaged services (prometheus) must not start on install: the tests run
  # their own instances. policy-rc.d exit 101 = "action forbidden".
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
  fi
  [ ${#available[@]} -eq 0 ] ||
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${available[@]}" >&2
fi

# prometheus from Debian lives in /usr/bin; double-check everything landed.
for tool in make python3 openssl setsid flock base64 prometheus promtool mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { log "$tool is still missing"; exit 1; }
done
python3 -c 'import ensurepip, venv' 2>/dev/null || { log "python3 venv support is still missing"; exit 1; }

if ! command -v go >/dev/null; then
  log "warning: go is not on PATH; building the local control plane needs it" \
    "(unless ~/.cache/canary-operator already holds the binaries)"
fi
