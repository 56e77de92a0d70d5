#!/usr/bin/env bash
# `make demo`: a local cluster, the CRD, the operator, and the seed rollout, shown
# live until it ends. The cluster and the operator keep running afterwards so you
# can look around (. .cluster/env; kubectl get cro -A); `make cluster-down` stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/.cluster
ns=${DEMO_NAMESPACE:-demo}
example=${DEMO_EXAMPLE:-examples/seed-pipeline.yaml}

hack/cluster/up.sh "$dir"
# shellcheck disable=SC1091
. "$dir/env"
kubectl apply --server-side --force-conflicts -f crds/canaryrollouts.yaml >/dev/null
kubectl wait --for=condition=Established crd/canaryrollouts.canary-operator.dev --timeout=60s >/dev/null

pidfile=$dir/pids/operator.pid
if [ -r "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$pidfile"))"
else
  # --kubeconfig names a path under .cluster/, so `make cluster-down` stops it too.
  setsid .venv/bin/canary-operator run --kubeconfig "$dir/kubeconfig" \
    >"$dir/logs/operator.log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
  echo "operator started (pid $!), log: .cluster/logs/operator.log"
fi

kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
name=$(.venv/bin/python -c 'import sys, yaml
print(next(d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1]))
           if d and d.get("kind") == "CanaryRollout"))' "$example")
kubectl delete -n "$ns" -f "$example" --ignore-not-found --wait=true >/dev/null
kubectl apply -n "$ns" -f "$example"
echo
echo "Following cro/$name in namespace $ns (Ctrl-C stops watching, not the rollout):"
if .venv/bin/kubectl-canary --help >/dev/null 2>&1; then
  .venv/bin/kubectl-canary watch "$name" -n "$ns" || true
else
  last=""
  for _ in $(seq 600); do
    line=$(kubectl get cro "$name" -n "$ns" --no-headers 2>/dev/null || true)
    [ "$line" != "$last" ] && echo "$line" && last=$line
    case $line in *Succeeded*|*Failed*|*Aborted*|*Superseded*) break ;; esac
    sleep 0.5
  done
fi
echo
kubectl get cro -n "$ns"
echo
echo "Events:"
uid=$(kubectl get cro "$name" -n "$ns" -o jsonpath='{.metadata.uid}')
kubectl get events -n "$ns" --field-selector "involvedObject.uid=$uid" \
  --sort-by=.eventTime -o custom-columns=REASON:.reason,MESSAGE:.message | tail -n 25
echo
echo "Cluster and operator are still running: . .cluster/env; kubectl get cro -A"
echo "Stop both with: make cluster-down"
