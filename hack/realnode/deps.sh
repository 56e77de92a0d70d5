#!/usr/bin/env bash
# Installs the Debian packages a real node needs, only those missing (a no-op
# on a prepared machine): nftables and iptables (the guard table, kube-proxy,
# the kubelet's chains), libseccomp-dev (runc's cgo build), busybox-static
# (the test-runner and pause images), mmdebstrap (the demo app's image),
# iproute2 (the bridge). Root only.
set -euo pipefail
log() { printf '[realnode-deps] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
missing=()
need() { local pkg=$1; shift; "$@" >/dev/null 2>&1 || missing+=("$pkg"); }
need nftables command -v nft
need iptables command -v iptables-save
need libseccomp-dev test -e /usr/include/seccomp.h
need busybox-static test -x /bin/busybox
need mmdebstrap command -v mmdebstrap
need iproute2 command -v ip
need util-linux command -v mountpoint
need curl command -v curl
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
