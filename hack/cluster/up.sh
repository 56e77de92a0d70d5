#!/usr/bin/env bash
# Starts a local Kubernetes control plane whose whole state lives in DIR:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (simulated kubelets), with fake Nodes that ordinary pods schedule onto, and
# the Gateway API CRDs installed. Ports are picked at random on 127.0.0.1, so
# several clusters can run side by side.
#
#   hack/cluster/up.sh DIR      # then: . DIR/env  (KUBECONFIG and PATH)
#
# If DIR already holds a running cluster, says so and exits 0. Writes
# DIR/kubeconfig (admin), DIR/env, DIR/logs/*.log, DIR/pids/*.pid.
# On failure, prints the relevant log tails and stops what it started.
#
# Env:
#   CLUSTER_BIN_DIR      use these binaries instead of running build.sh
#   CLUSTER_NODES        number of fake nodes (default 3)
#   CLUSTER_UP_TIMEOUT   seconds for each readiness wait (default 90)
#   CLUSTER_OWNER_PID    if set, a watchdog runs down.sh DIR once that process
#                        is gone (a backstop for test sessions that are killed)
#   CLUSTER_KEEP_ON_FAILURE=1  keep DIR (logs) when startup fails
#   CLUSTER_APISERVER_ARGS  extra kube-apiserver flags, split on spaces (e.g. an
#                        audit policy and log, to see which requests each client makes)
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

t0=$EPOCHREALTIME
dir=$(abspath "$1")
nodes=${CLUSTER_NODES:-3}
timeout=${CLUSTER_UP_TIMEOUT:-90}
service_cidr=10.96.0.0/16
service_ip=10.96.0.1
pod_cidr=10.244.0.0/16

log() { printf '[up %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in openssl base64 setsid; do
  command -v "$tool" >/dev/null || die "$tool is not installed (Debian: apt-get install -y openssl coreutils util-linux)"
done

kube() { "$bin/kubectl" --kubeconfig="$dir/kubeconfig" "$@"; }

# --- an existing directory -------------------------------------------------

cluster_running() {
  local c pid
  for c in "${CLUSTER_COMPONENTS[@]}"; do
    pid=$(cat "$dir/pids/$c.pid" 2>/dev/null) || return 1
    pid_of_cluster "$pid" "$dir" || return 1
  done
  [ -r "$dir/bin-dir" ] || return 1
  bin=$(cat "$dir/bin-dir")
  kube get --raw /readyz >/dev/null 2>&1
}

if [ -e "$dir/$CLUSTER_MARKER" ]; then
  if cluster_running; then
    echo "cluster already running in $dir (use: . $dir/env)"
    exit 0
  fi
  log "stale cluster state in $dir: stopping leftovers and starting afresh"
  stop_cluster "$dir" 10 || die "could not stop the leftovers of $dir"
  rm -rf "$dir"
elif [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir exists, is not empty and is not a cluster directory"
fi

# --- binaries ----------------------------------------------------------------

if [ -n "${CLUSTER_BIN_DIR:-}" ]; then
  bin=$CLUSTER_BIN_DIR
else
  bin=$("$here/build.sh" | tail -n 1)
fi
cache=$(dirname "$bin")
stages=$cache/kwok-stages
gateway_crds=$cache/gateway-api-crds
kwok_crds=$cache/kwok-crds
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing (run hack/cluster/build.sh)"
done
[ -n "$(ls "$stages"/*.yaml 2>/dev/null)" ] || die "no kwok stages in $stages"
[ -n "$(ls "$gateway_crds"/*.yaml 2>/dev/null)" ] || die "no Gateway API CRDs in $gateway_crds"
[ -n "$(ls "$kwok_crds"/*.yaml 2>/dev/null)" ] || die "no kwok CRDs in $kwok_crds (run hack/cluster/build.sh)"

# --- from here on, failure cleans up -----------------------------------------

mkdir -p "$dir"/{pki,logs,pids,etcd,kwok-home}
touch "$dir/$CLUSTER_MARKER"
echo "$bin" >"$dir/bin-dir"
ok=0
failed_component=""
signalled=""
# A copy of the caller's stderr: a trap may fire while a command's output is
# redirected to /dev/null (wait_until), and its report must still be seen.
# Children never inherit it (3>&-), or they would hold the caller's pipe open.
exec 3>&2

on_exit() {
  local rc=${signalled:-$?}
  [ "$ok" = 1 ] && return 0
  exec 1>&3 2>&3
  [ "$rc" != 0 ] || rc=1
  log "cluster startup failed (exit $rc)"
  local c pid
  for c in "${CLUSTER_COMPONENTS[@]}"; do
    [ -s "$dir/logs/$c.log" ] || continue
    pid=$(cat "$dir/pids/$c.pid" 2>/dev/null || echo none)
    if [ "$c" = "$failed_component" ] || ! pid_of_cluster "$pid" "$dir"; then
      printf '\n----- %s (%s) last lines of %s -----\n' "$c" \
        "$(pid_of_cluster "$pid" "$dir" && echo running || echo "not running")" "$dir/logs/$c.log" >&2
      tail -n 40 "$dir/logs/$c.log" >&2
    fi
  done
  stop_cluster "$dir" 5 || true
  if [ "${CLUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
    log "kept $dir for inspection (stop with hack/cluster/down.sh $dir)"
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'signalled=130; exit 130' INT
trap 'signalled=143; exit 143' TERM

# --- ports --------------------------------------------------------------------

# Random ports below the kernel's ephemeral range, avoiding every port that
# appears in /proc/net/tcp{,6} (any state).
pick_ports() {
  local want=$1 used=" " port p
  while read -r _ port _; do
    port=${port##*:}
    [[ $port =~ ^[0-9A-Fa-f]+$ ]] && used+="$((16#$port)) "
  done < <(tail -q -n +2 /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  local -a picked=()
  while [ ${#picked[@]} -lt "$want" ]; do
    p=$((20000 + RANDOM % 12000))
    [[ $used == *" $p "* ]] && continue
    used+="$p "
    picked+=("$p")
  done
  echo "${picked[@]}"
}
read -r etcd_port etcd_peer_port api_port kwok_port < <(pick_ports 4)
server=https://127.0.0.1:$api_port

# --- certificates ---------------------------------------------------------------

pki=$dir/pki
gen_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# sign NAME SUBJECT EXTENSIONS: key + certificate signed by the cluster CA
sign() {
  local name=$1 subj=$2 ext=$3
  gen_key "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}
client_ext='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'

(
  set -e
  umask 077
  gen_key "$pki/ca.key"
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=canary-operator-local-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/ca.crt" 2>/dev/null
  sign apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=kubernetes-admin" "$client_ext"
  sign controller-manager "/CN=system:kube-controller-manager" "$client_ext"
  sign scheduler "/CN=system:kube-scheduler" "$client_ext"
  # kwok plays every kubelet (node status, leases, pod status of all nodes).
  sign kwok "/O=system:masters/CN=kwok-controller" "$client_ext"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
) || die "certificate generation with openssl failed"

# kubeconfig FILE USER: a kubeconfig for a client certificate of the CA
kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: canary-local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/$user.crt")
    client-key-data: $(base64 -w0 "$pki/$user.key")
contexts:
- name: canary-local
  context:
    cluster: canary-local
    user: $user
current-context: canary-local
EOF
  chmod 600 "$file"
}
kubeconfig "$dir/kubeconfig" admin
kubeconfig "$pki/controller-manager.kubeconfig" controller-manager
kubeconfig "$pki/scheduler.kubeconfig" scheduler
kubeconfig "$pki/kwok.kubeconfig" kwok

# --- processes -------------------------------------------------------------------

# start NAME CMD...: run CMD detached (own session, no terminal, output to
# DIR/logs/NAME.log); the process itself writes its pid before exec'ing.
start() {
  local name=$1
  shift
  setsid bash -c 'echo $$ >"$0" && exec "$@"' "$dir/pids/$name.pid" "$@" \
    >"$dir/logs/$name.log" 2>&1 </dev/null 3>&- &
}

# wait_until TIMEOUT COMPONENT DESCRIPTION CMD...: poll CMD until it succeeds;
# fail early if COMPONENT's process died.
wait_until() {
  local limit=$1 component=$2 what=$3 pid
  shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$component" ]; then
      pid=$(cat "$dir/pids/$component.pid" 2>/dev/null || true)
      if [ -n "$pid" ] && ! pid_of_cluster "$pid" "$dir"; then
        failed_component=$component
        die "$component exited while waiting for $what"
      fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      failed_component=$component
      die "timed out after ${limit}s waiting for $what"
    fi
    sleep 0.2
  done
}

log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok in $dir (API $server)"

start etcd "$bin/etcd" \
  --name=node0 \
  --data-dir="$dir/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" \
  --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="node0=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync \
  --auto-compaction-retention=1 \
  --quota-backend-bytes=$((4 * 1024 * 1024 * 1024)) \
  --log-level=warn

# --endpoint-reconciler-type=none: the "kubernetes" Service cannot point at a
# loopback address (Endpoints validation), and nothing runs in a pod here.
# --kubelet-preferred-address-types: reach a real node's kubelet (logs, exec)
# by its InternalIP; its name resolves nowhere (hack/realnode/up.sh).
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$api_port" \
  --tls-cert-file="$pki/apiserver.crt" \
  --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$service_cidr" \
  --authorization-mode=Node,RBAC \
  --allow-privileged=true \
  --endpoint-reconciler-type=none \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --profiling=false \
  ${CLUSTER_APISERVER_ARGS:-} # split on purpose: several flags

# kube-controller-manager gives up after 10 s if /healthz is still forbidden to
# it, i.e. before the RBAC bootstrap roles exist; on a loaded machine that is
# often the case. /readyz includes that bootstrap: wait for it first.
wait_until "$timeout" kube-apiserver "the API server to be ready" kube get --raw /readyz
# The other components wait for the API server themselves.
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$pki/controller-manager.kubeconfig" \
  --secure-port=0 \
  --leader-elect=false \
  --controllers='*' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" \
  --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range="$service_cidr" \
  --allocate-node-cidrs=false \
  --node-monitor-period=5s \
  --node-monitor-grace-period=40s \
  --kube-api-qps=200 \
  --kube-api-burst=400 \
  --profiling=false

start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$pki/scheduler.kubeconfig" \
  --secure-port=0 \
  --leader-elect=false \
  --kube-api-qps=200 \
  --kube-api-burst=400 \
  --profiling=false

stage_args=()
# kwok's own fast stages, except pod-complete: the project's stages in
# hack/cluster/stages/ replace it so tests can make a Job pod fail or run long.
for f in "$stages"/*.yaml; do
  [ "$(basename "$f")" = pod-complete.yaml ] && continue
  stage_args+=("--config=$f")
done
for f in "$here"/stages/*.yaml; do stage_args+=("--config=$f"); done
# HOME points into DIR so that a user's ~/.kwok/kwok.yaml is not picked up.
# kwok also plays the kubelet's API: the nodes' address and kubelet port point at
# its server (TLS, the API server does not verify it without
# --kubelet-certificate-authority), so `kubectl logs` of a simulated pod returns
# what a Logs/ClusterLogs object names (CRDs installed below).
start kwok env HOME="$dir/kwok-home" "$bin/kwok" \
  --kubeconfig="$pki/kwok.kubeconfig" \
  "${stage_args[@]}" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --cidr="$pod_cidr" \
  --node-ip=127.0.0.1 \
  --node-port="$kwok_port" \
  --server-address="127.0.0.1:$kwok_port" \
  --enable-crds=Logs,ClusterLogs \
  --node-lease-duration-seconds=40

wait_until "$timeout" kube-apiserver "the API server to be ready" kube get --raw /readyz

# --- nodes and CRDs -----------------------------------------------------------------

{
  for ((i = 0; i < nodes; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    node-role.kubernetes.io/worker: ""
    topology.kubernetes.io/zone: zone-$((i % 3))
spec:
  podCIDR: 10.244.$i.0/24
  podCIDRs: [10.244.$i.0/24]
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "1000"}
  capacity: {cpu: "32", memory: 256Gi, pods: "1000"}
EOF
  done
} >"$dir/nodes.yaml"
kube apply --server-side --field-manager=canary-up -f "$dir/nodes.yaml" -f "$gateway_crds" -f "$kwok_crds" >"$dir/logs/apply.log" 2>&1 ||
  { cat "$dir/logs/apply.log" >&2; die "could not create the nodes and the Gateway API and kwok CRDs"; }

wait_until "$timeout" kube-apiserver "the Gateway API and kwok CRDs to be Established" \
  kube wait --for=condition=Established --timeout=5s -f "$gateway_crds" -f "$kwok_crds"
wait_until "$timeout" kwok "$nodes nodes to be Ready" \
  kube wait --for=condition=Ready --timeout=5s node -l type=kwok
# The node lifecycle controller removes the not-ready taint once it sees the
# node Ready; until then ordinary pods would not schedule.
nodes_untainted() {
  [ -z "$(kube get nodes -l type=kwok -o jsonpath='{.items[*].spec.taints}')" ]
}
wait_until "$timeout" kube-controller-manager "the nodes' not-ready taints to be removed" nodes_untainted
wait_until "$timeout" kube-controller-manager "the default ServiceAccount" \
  kube get serviceaccount default -n default

# --- done ------------------------------------------------------------------------------

if [ -n "${CLUSTER_OWNER_PID:-}" ]; then
  setsid bash -c 'echo $$ >"$0"; while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" "$3"' \
    "$dir/pids/watchdog.pid" "$CLUSTER_OWNER_PID" "$here/down.sh" "$dir" \
    >"$dir/logs/watchdog.log" 2>&1 </dev/null 3>&- &
fi

cat >"$dir/env" <<EOF
export KUBECONFIG=$dir/kubeconfig
export PATH=$bin:\$PATH
EOF
cat >"$dir/ports" <<EOF
API_SERVER=$server
ETCD=http://127.0.0.1:$etcd_port
ETCD_PEER=http://127.0.0.1:$etcd_peer_port
KWOK_SERVER=https://127.0.0.1:$kwok_port
EOF
ok=1
elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "cluster up in ${elapsed}s: $nodes nodes Ready, API $server"
echo "cluster ready in $dir (use: . $dir/env)"
