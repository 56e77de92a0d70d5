#!/usr/bin/env bash
# Adds one real node to the local cluster whose state lives in DIR (started by
# hack/cluster/up.sh): containerd + runc, a kubelet with a node certificate
# signed by the cluster CA, kube-proxy (nftables mode) and CoreDNS (cluster
# names for the pods), all as plain background processes, state in DIR/realnode.
#
#   hack/realnode/up.sh DIR          # stop with hack/realnode/down.sh DIR
#                                    # (hack/cluster/down.sh DIR does it too)
#
# Traffic safety comes first: the node's address, its pods and its bridge are
# in TEST-NET-2, the guard table (lib.sh) that drops pod and Service traffic
# on every other interface is installed before anything starts, pods resolve
# through CoreDNS on the bridge only (the kubelet's resolvConf is a file with
# nameserver 127.0.0.1, so no host resolver is ever copied into a pod), and
# up.sh checks the guard again at the end.
#
# The node is tainted realnode=true:NoSchedule and labelled realnode=true,
# type=real: only pods that tolerate and select it run there, so the kwok
# nodes keep every other test. Images: registry.local/* (images/build.sh),
# imported and pinned; pods must use imagePullPolicy Never or IfNotPresent.
#
# Needs root, the Debian packages of deps.sh, and the builds (build.sh,
# images/build.sh; run on demand). Env: REALNODE_UP_TIMEOUT (default 120 s).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 CLUSTER_DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
t0=$EPOCHREALTIME
cluster=$(cd "$1" && pwd -P)
node_dir=$cluster/realnode
timeout=${REALNODE_UP_TIMEOUT:-120}
log() { realnode_log "$@"; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "a real node needs root (network namespaces, cgroups, mounts)"
[ -e "$cluster/.canary-cluster" ] && [ -s "$cluster/ports" ] || die "$cluster is not a running local cluster (hack/cluster/up.sh)"
for tool in nft ip openssl setsid sysctl mountpoint curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (hack/realnode/deps.sh)"
done
if [ -e "$node_dir/pids/containerd.pid" ] && realnode_pid_ok "$(cat "$node_dir/pids/containerd.pid")" "$node_dir"; then
  echo "real node already running in $node_dir"
  exit 0
fi
mkdir -p "$REALNODE_RUN"
exec 8>"$REALNODE_RUN/lock"
flock -n 8 || die "another real node is starting or stopping on this host"
if realnode_owner_running; then
  die "a real node already runs on this host (cluster $(cat "$REALNODE_RUN/owner")); one per host"
fi
[ ! -e "$REALNODE_RUN/owner" ] || [ "$(cat "$REALNODE_RUN/owner")" = "$cluster" ] ||
  die "stale real node of $(cat "$REALNODE_RUN/owner") on this host: run hack/realnode/down.sh $(cat "$REALNODE_RUN/owner")"
ip link show "$REALNODE_BRIDGE" >/dev/null 2>&1 && die "interface $REALNODE_BRIDGE already exists (a leftover? hack/realnode/down.sh)"

bin=$("$here/build.sh" | tail -n 1)
cni_bin=$(dirname "$bin")/cni-bin
images=$("$here/images/build.sh" | tail -n 1)
kubectl=$(cat "$cluster/bin-dir")/kubectl
. "$cluster/ports"
server=$API_SERVER
kube() { "$kubectl" --kubeconfig="$cluster/kubeconfig" "$@"; }

# --- from here on, failure undoes everything -------------------------------------
rm -rf "$node_dir"
mkdir -p "$node_dir"/{pids,logs,pki,containerd,cni/net.d,cni/data,kubelet,pod-logs,kube-proxy,coredns}
echo "$cluster" >"$REALNODE_RUN/owner"
echo "$bin" >"$node_dir/bin-dir"
ok=0
on_exit() {
  local rc=$?
  [ $ok = 1 ] && return 0
  log "real node startup failed (exit $rc); last lines of the logs:"
  local f
  for f in "$node_dir"/logs/*.log; do
    [ -s "$f" ] || continue
    printf '\n----- %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
  REALNODE_KEEP_LOGS=1 "$here/down.sh" "$cluster" >&2 || true
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What the host had before: down.sh restores exactly this.
for s in "${REALNODE_SYSCTLS[@]}"; do
  v=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$v"
done >"$node_dir/sysctl.saved"
for p in "${REALNODE_HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$node_dir/created-paths"
nft list tables 2>/dev/null | sort >"$node_dir/nft-tables.before" || true

# --- 1. network and guards, before anything else -------------------------------------
log "guard table inet $REALNODE_GUARD_TABLE and bridge $REALNODE_BRIDGE ($REALNODE_NODE_IP)"
realnode_guard_rules | nft -f - || die "could not install the guard table"
realnode_guard_ok || die "guard table incomplete"
ip link add "$REALNODE_BRIDGE" type bridge
ip addr add "$REALNODE_NODE_IP/${REALNODE_POD_CIDR#*/}" dev "$REALNODE_BRIDGE"
ip link set "$REALNODE_BRIDGE" up
echo "nameserver 127.0.0.1" >"$node_dir/resolv.conf"

# --- 2. credentials ----------------------------------------------------------------------
pki=$node_dir/pki
sign() { # sign NAME SUBJECT: a client key + certificate of the cluster CA
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key" 2>/dev/null
  openssl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$cluster/pki/ca.crt" -CAkey "$cluster/pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -sha256 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
  cat >"$pki/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$server", certificate-authority: "$cluster/pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
KC
}
(umask 077
 sign kubelet "/O=system:nodes/CN=system:node:$REALNODE_NAME"
 sign kube-proxy "/CN=system:kube-proxy"
 sign coredns "/CN=system:coredns") || die "certificate generation failed"
# CoreDNS reads Services, EndpointSlices and Namespaces (the rules kubeadm grants it).
kube apply --server-side --field-manager=canary-realnode -f - >"$node_dir/logs/rbac.log" 2>&1 <<'YAML' || die "could not create CoreDNS's RBAC"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
YAML

start() { # start NAME CMD...: detached, own session, pid file, log file
  local name=$1; shift
  setsid bash -c 'echo $$ >"$0" && exec "$@"' "$node_dir/pids/$name.pid" "$@" \
    >"$node_dir/logs/$name.log" 2>&1 </dev/null &
}
wait_until() { # wait_until COMPONENT WHAT CMD...
  local component=$1 what=$2 pid deadline=$((SECONDS + timeout))
  shift 2
  until "$@" >/dev/null 2>&1; do
    pid=$(cat "$node_dir/pids/$component.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && ! realnode_pid_ok "$pid" "$node_dir"; then die "$component exited while waiting for $what"; fi
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

# --- 3. containerd -----------------------------------------------------------------------
sock=$node_dir/containerd/containerd.sock
cat >"$node_dir/containerd/config.toml" <<TOML
version = 3
root = "$node_dir/containerd/root"
state = "$node_dir/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.local/pause:local"
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # This host's root lacks CAP_SYS_RESOURCE: runc must not raise oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$bin/runc"
        Root = "$node_dir/containerd/runc-root"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$cni_bin"]
    conf_dir = "$node_dir/cni/net.d"
    max_conf_num = 1
TOML
cat >"$node_dir/cni/net.d/10-realnode.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "canary-realnode",
  "plugins": [
    {"type": "bridge", "bridge": "$REALNODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$node_dir/cni/data",
              "ranges": [[{"subnet": "$REALNODE_POD_CIDR", "rangeStart": "${REALNODE_NODE_IP%.*}.10", "gateway": "$REALNODE_NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
log "starting containerd"
start containerd env PATH="$bin:$PATH" "$bin/containerd" --config "$node_dir/containerd/config.toml"
ctr() { "$bin/ctr" --address "$sock" -n k8s.io "$@"; }
wait_until containerd "containerd to serve $sock" ctr version
log "importing the test images"
ctr images import --platform linux/amd64 "$images" >"$node_dir/logs/import.log" 2>&1 || die "image import failed: $(tail -3 "$node_dir/logs/import.log")"
# Pinned: the kubelet's image GC must never delete them (nothing could pull them back).
for ref in $(ctr images ls -q | grep '^registry\.local/'); do
  ctr images label "$ref" io.cri-containerd.pinned=pinned >/dev/null 2>&1
done

# --- 4. kubelet --------------------------------------------------------------------------
cat >"$node_dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $REALNODE_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: "$cluster/pki/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
podLogsDir: $node_dir/pod-logs
resolvConf: $node_dir/resolv.conf
clusterDNS: [$REALNODE_NODE_IP]
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
maxPods: 60
serializeImagePulls: false
registerWithTaints:
- {key: realnode, value: "true", effect: NoSchedule}
YAML
log "starting the kubelet ($REALNODE_NAME)"
start kubelet "$bin/kubelet" --config="$node_dir/kubelet/config.yaml" \
  --kubeconfig="$pki/kubelet.kubeconfig" --hostname-override="$REALNODE_NAME" \
  --node-ip="$REALNODE_NODE_IP" --node-labels=realnode=true,type=real \
  --root-dir="$node_dir/kubelet/root" --cert-dir="$node_dir/kubelet/pki" --v=2
node_ready() { [ "$(kube get node "$REALNODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_until kubelet "node $REALNODE_NAME to be Ready" node_ready

# --- 5. kube-proxy and CoreDNS -------------------------------------------------------------
cat >"$node_dir/kube-proxy/config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$pki/kube-proxy.kubeconfig"}
hostnameOverride: $REALNODE_NAME
mode: nftables
clusterCIDR: $REALNODE_POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
# Zeros: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: ["$REALNODE_NODE_IP/32"]
YAML
log "starting kube-proxy (nftables) and CoreDNS"
start kube-proxy "$bin/kube-proxy" --config="$node_dir/kube-proxy/config.yaml"
cat >"$node_dir/coredns/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 {
  bind $REALNODE_NODE_IP
  errors
  kubernetes cluster.local in-addr.arpa {
    kubeconfig $pki/coredns.kubeconfig local
    pods insecure
  }
}
.:53 {
  # Anything outside the cluster: refused, never forwarded off the host.
  bind $REALNODE_NODE_IP
  errors
}
COREFILE
# ready/health would need ports of their own; a real answer is the better check.
start coredns "$bin/coredns" -conf "$node_dir/coredns/Corefile"
proxy_healthy() { curl -sf -o /dev/null http://127.0.0.1:10256/healthz; }
wait_until kube-proxy "kube-proxy to be healthy" proxy_healthy
dns_answers() { # the API server's Service resolves: CoreDNS has synced
  python3 - "$REALNODE_NODE_IP" <<'PY'
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "kubernetes.default.svc.cluster.local".split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, (sys.argv[1], 53)); r = s.recv(512)
sys.exit(0 if r[3] & 0x0F == 0 and struct.unpack(">H", r[6:8])[0] >= 1 else 1)
PY
}
wait_until coredns "CoreDNS to answer for kubernetes.default.svc" dns_answers
# --- 6. the API server for pods ----------------------------------------------------------
# It listens on 127.0.0.1 only; a relay on the node's address and an
# EndpointSlice for the `kubernetes` Service (the API server reconciles none
# here) let in-cluster clients reach it at 10.96.0.1:443 as anywhere else.
api_port=${server##*:}
start api-proxy python3 "$here/api_proxy.py" "$REALNODE_NODE_IP" 6443 127.0.0.1 "$api_port" "$node_dir/"
kube apply --server-side --field-manager=canary-realnode -f - >>"$node_dir/logs/rbac.log" 2>&1 <<YAML || die "could not give the kubernetes Service its endpoint"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-realnode
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: canary-realnode
addressType: IPv4
endpoints:
- addresses: ["$REALNODE_NODE_IP"]
  conditions: {ready: true}
ports:
- {name: https, port: 6443, protocol: TCP}
YAML
api_relayed() { curl -sk -o /dev/null "https://$REALNODE_NODE_IP:6443/readyz"; }
wait_until api-proxy "the API relay on $REALNODE_NODE_IP:6443" api_relayed
realnode_guard_ok || die "the guard table went missing during startup"

ok=1
elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "real node $REALNODE_NAME Ready in ${elapsed}s (pods $REALNODE_POD_CIDR on $REALNODE_BRIDGE, guard table inet $REALNODE_GUARD_TABLE)"
echo "real node $REALNODE_NAME ready in $node_dir"
