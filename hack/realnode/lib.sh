# Shared by up.sh, down.sh and check.sh of the real node. Sourced, not executed.
#
# One real node per host: its bridge, addresses, ports and the paths the
# kubelet and containerd hard-code are host-wide. The node's state lives in
# CLUSTER_DIR/realnode; /run/canary-realnode/owner names the cluster directory
# of the node that runs now.

REALNODE_NAME=realnode-0
REALNODE_BRIDGE=rn-cni0
# TEST-NET-2 (RFC 5737): documentation addresses, never routed anywhere. The
# node's own address is the bridge's, so nothing of the node listens on, or
# is reached through, the host's uplink.
REALNODE_POD_CIDR=198.51.100.0/24
REALNODE_NODE_IP=198.51.100.1
# The control plane's Service range (hack/cluster/up.sh).
REALNODE_SERVICE_CIDR=10.96.0.0/16
REALNODE_GUARD_TABLE=canary_realnode_guard
REALNODE_RUN=/run/canary-realnode
REALNODE_TAINT=realnode=true:NoSchedule
# Paths the kubelet, containerd's shims and libcni use whatever their config
# says; created (and so removed) only if absent before the node started.
REALNODE_HOST_PATHS=(/run/containerd /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni)
# Sysctls the kubelet (and the bridge plugin: ip_forward) change; restored on down.
REALNODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic
  kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)
# cgroup v1 controllers' pod hierarchy (cgroupDriver cgroupfs, cgroupsPerQOS).
REALNODE_CGROUP=kubepods
REALNODE_COMPONENTS=(api-proxy coredns kube-proxy kubelet containerd)

realnode_log() { printf '[realnode %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# realnode_uplinks: the host's interfaces other than lo, the node's bridge and pod veths.
realnode_uplinks() {
  local i
  for i in /sys/class/net/*; do
    i=${i##*/}
    case $i in lo | "$REALNODE_BRIDGE" | veth*) ;; *) echo "$i" ;; esac
  done
}

# realnode_guard_rules: the nft ruleset of the guard table. Installed before
# anything of the node starts and removed last: no packet from a pod, to a pod
# or to a Service address may leave through any interface but the node's own
# bridge (and the pods' veths on it). Hooks at priority -10 run after
# kube-proxy's DNAT (nat output/prerouting at -100), so a Service address
# still seen here has no endpoint and would otherwise follow the default route.
# Interface matches are made in forward and postrouting only: in the output
# hook oifname is the route chosen before kube-proxy's DNAT (the uplink, for a
# ClusterIP), and the packet is rerouted after it.
realnode_guard_rules() {
  cat <<NFT
table inet $REALNODE_GUARD_TABLE {
  comment "canary-operator real node: pod and Service traffic never leaves the host"
  chain forward {
    type filter hook forward priority -10; policy accept;
    ip saddr $REALNODE_POD_CIDR oifname != "$REALNODE_BRIDGE" oifname != "veth*" counter drop comment "pod-to-uplink"
    ip daddr $REALNODE_SERVICE_CIDR counter drop comment "service-unresolved"
    iifname "veth*" meta nfproto ipv6 counter drop comment "pod-ipv6"
    iifname "$REALNODE_BRIDGE" meta nfproto ipv6 counter drop comment "pod-ipv6-bridge"
  }
  chain output {
    type filter hook output priority -10; policy accept;
    ip daddr $REALNODE_SERVICE_CIDR counter drop comment "service-unresolved"
  }
  chain postrouting {
    type filter hook postrouting priority -10; policy accept;
    ip saddr $REALNODE_POD_CIDR oifname != "$REALNODE_BRIDGE" oifname != "veth*" oifname != "lo" counter drop comment "pod-source-off-bridge"
    ip daddr { $REALNODE_POD_CIDR, $REALNODE_SERVICE_CIDR } oifname != "$REALNODE_BRIDGE" oifname != "veth*" oifname != "lo" counter drop comment "pod-or-service-off-bridge"
  }
}
NFT
}

# realnode_guard_ok: the guard table is installed with every rule (by comment).
realnode_guard_ok() {
  local rules c
  rules=$(nft list table inet "$REALNODE_GUARD_TABLE" 2>/dev/null) || return 1
  for c in pod-to-uplink service-unresolved pod-ipv6 pod-source-off-bridge pod-or-service-off-bridge; do
    grep -q "comment \"$c\"" <<<"$rules" || return 1
  done
}

# realnode_pid_ok PID DIR: a live process whose command line names DIR/.
realnode_pid_ok() {
  local pid=$1 dir=$2 stat state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  state=${stat##*) }; state=${state%% *}
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}

# realnode_owner_running: true if the node recorded in $REALNODE_RUN/owner runs.
realnode_owner_running() {
  local owner pid
  owner=$(cat "$REALNODE_RUN/owner" 2>/dev/null) || return 1
  pid=$(cat "$owner/realnode/pids/containerd.pid" 2>/dev/null) || pid=
  [ -n "$pid" ] && realnode_pid_ok "$pid" "$owner/realnode"
}
