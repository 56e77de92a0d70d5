#!/usr/bin/env bash
# Stops the real node of the cluster in DIR and undoes every host change it
# made: pods' processes, containerd's shims, the node's processes, mounts
# under DIR/realnode, the pod cgroups, the bridge and veths, the kubelet's and
# kube-proxy's netfilter rules, the guard table (last), the hard-coded paths
# it created, and the sysctls (restored to their values before up.sh).
#
#   hack/realnode/down.sh DIR       (hack/cluster/down.sh DIR runs it first)
#
# Idempotent; safe on a half-started node. Prints what it removed.
# Env: REALNODE_KEEP_LOGS=1 keeps DIR/realnode/logs.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 CLUSTER_DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ -d "$1" ] || { echo "real node: nothing in $1"; exit 0; }
cluster=$(cd "$1" && pwd -P)
node_dir=$cluster/realnode
log() { realnode_log "$@"; }
[ -d "$node_dir" ] || { echo "real node: nothing to stop in $cluster"; exit 0; }
t0=$EPOCHREALTIME
rc=0
# up.sh records the binaries it ran (never build anything here)
bin=$(cat "$node_dir/bin-dir" 2>/dev/null) || bin=
sock=$node_dir/containerd/containerd.sock

pid_alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; s=${s%% *}; [ "$s" != Z ] && [ "$s" != X ]; }
stop_pid() { # stop_pid PID TIMEOUT: TERM, then KILL
  local pid=$1 deadline=$((SECONDS + $2))
  kill -TERM "$pid" 2>/dev/null || return 0
  while pid_alive "$pid"; do
    if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null; sleep 0.2; fi
    [ $SECONDS -lt $((deadline + 10)) ] || { log "pid $pid survived KILL"; rc=1; return 1; }
    sleep 0.1
  done
}
stop_component() { # stop_component NAME TIMEOUT
  local pid
  pid=$(cat "$node_dir/pids/$1.pid" 2>/dev/null) || return 0
  realnode_pid_ok "$pid" "$node_dir" && stop_pid "$pid" "$2"
  rm -f "$node_dir/pids/$1.pid"
}
# every live pid in the pod cgroups (any v1 controller, or v2)
pod_pids() {
  find /sys/fs/cgroup -path "*/$REALNODE_CGROUP*" -name cgroup.procs 2>/dev/null | xargs -r cat 2>/dev/null | sort -u
}
# containerd's shims for our socket: reparented to init, they outlive containerd
shim_pids() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    tr '\0' ' ' 2>/dev/null <"$f" | grep -q -- "containerd-shim-runc-v2 .*-address $sock" && echo "$pid"
  done
}

# 1. The clients first, so nothing restarts pods or rewrites rules underneath.
stop_component api-proxy 5
stop_component coredns 5
stop_component kube-proxy 5
stop_component kubelet 10
# 2. The pods: their processes (by cgroup), then their sandboxes and shims.
if [ -n "$bin" ] && [ -S "$sock" ]; then
  ctr() { timeout 20 "$bin/ctr" --address "$sock" -n k8s.io "$@"; }
  for c in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1; done
fi
for pid in $(pod_pids); do kill -KILL "$pid" 2>/dev/null; done
if [ -n "$bin" ] && [ -S "$sock" ]; then
  for c in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$c" >/dev/null 2>&1; done
  for c in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$c" >/dev/null 2>&1; done
fi
stop_component containerd 10
for pid in $(shim_pids); do stop_pid "$pid" 3; done
for pid in $(pod_pids); do kill -KILL "$pid" 2>/dev/null; done
deadline=$((SECONDS + 10))
while [ -n "$(pod_pids)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
[ -z "$(pod_pids)" ] || { log "pod processes left: $(pod_pids | tr '\n' ' ')"; rc=1; }

# 3. Mounts under the node's directory and the hard-coded runtime paths, deepest first.
umount_under() {
  local prefix=$1 m pass
  for pass in 1 2 3; do
    mapfile -t mounts < <(awk -v p="$prefix" '{ gsub(/\\040/, " ", $5); if ($5 == p || index($5, p "/") == 1) print $5 }' /proc/self/mountinfo | sort -r)
    [ ${#mounts[@]} -gt 0 ] || return 0
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  done
  if awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    log "mounts left under $prefix"; rc=1
  fi
}
umount_under "$node_dir"
while read -r p; do [ -n "$p" ] && umount_under "$p"; done <"$node_dir/created-paths" 2>/dev/null

# 4. cgroups of the pods (empty now).
for d in /sys/fs/cgroup/*/"$REALNODE_CGROUP" /sys/fs/cgroup/"$REALNODE_CGROUP"; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  [ ! -d "$d" ] || { log "cgroup $d left"; rc=1; }
done

# 5. Network: veths on our bridge (normally gone with their namespaces), the bridge.
for l in /sys/class/net/*/master; do
  [ "$(basename "$(readlink "$l" 2>/dev/null)")" = "$REALNODE_BRIDGE" ] || continue
  l=${l%/master}; ip link del "${l##*/}" 2>/dev/null
done
ip link del "$REALNODE_BRIDGE" 2>/dev/null
# kube-proxy's own tables (nftables mode: ip/ip6 kube-proxy), then the kubelet's
# iptables chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, ...).
if [ -n "$bin" ] && [ -s "$node_dir/kube-proxy/config.yaml" ]; then
  "$bin/kube-proxy" --cleanup --config="$node_dir/kube-proxy/config.yaml" >"$node_dir/logs/kube-proxy-cleanup.log" 2>&1 || true
fi
for fam in ip ip6; do nft delete table "$fam" kube-proxy 2>/dev/null; done
if command -v iptables-save >/dev/null; then
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      # rules that jump to or are in a KUBE- chain, then the chains
      "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [A-Z-]+ .*-j KUBE-' | while read -r _ chain rest; do
        case $chain in KUBE-*) continue ;; esac
        # shellcheck disable=SC2086
        eval "$ipt -w -t $table -D $chain $rest" 2>/dev/null
      done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\) .*/\1/p'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null
      done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[A-Z0-9-]*\) .*/\1/p'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null
      done
    done
  done
fi
# Tables iptables-nft created for the kubelet, if the host had none before and
# they hold no rules now.
if [ -f "$node_dir/nft-tables.before" ]; then
  nft list tables 2>/dev/null | sort | comm -13 "$node_dir/nft-tables.before" - | while read -r _ fam name; do
    [ "$name" = "$REALNODE_GUARD_TABLE" ] && continue
    if ! nft list table "$fam" "$name" 2>/dev/null | grep -qE '^\s+(ip|ip6|meta|ct|iifname|oifname|counter|jump|drop|accept|tcp|udp)'; then
      nft delete table "$fam" "$name" 2>/dev/null
    fi
  done
fi
# The guard goes last: until here a stray packet could still have been sent.
nft delete table inet "$REALNODE_GUARD_TABLE" 2>/dev/null

# 6. Hard-coded paths it created, sysctls, the host-wide owner record.
while read -r p; do
  [ -n "$p" ] && rm -rf --one-file-system "$p"
done <"$node_dir/created-paths" 2>/dev/null
# libcni's result cache of our network, if the directory was already there
rm -f /var/lib/cni/results/canary-realnode-* 2>/dev/null
while IFS='=' read -r s v; do
  [ -n "$s" ] && [ "$(sysctl -n "$s" 2>/dev/null)" != "$v" ] && sysctl -q -w "$s=$v" >/dev/null
done <"$node_dir/sysctl.saved" 2>/dev/null
if [ "$(cat "$REALNODE_RUN/owner" 2>/dev/null)" = "$cluster" ]; then rm -f "$REALNODE_RUN/owner"; fi
rmdir "$REALNODE_RUN" 2>/dev/null || rm -f "$REALNODE_RUN/lock" 2>/dev/null; rmdir "$REALNODE_RUN" 2>/dev/null

if [ "${REALNODE_KEEP_LOGS:-0}" = 1 ]; then
  find "$node_dir" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf --one-file-system {} +
else
  rm -rf --one-file-system "$node_dir"
fi
elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "real node stopped and removed in ${elapsed}s (rc $rc)"
exit $rc
