#!/usr/bin/env bash
# Stops every process of the cluster whose state lives in DIR (TERM, then KILL
# after a timeout), waits until they are gone, and removes DIR.
#
#   hack/cluster/down.sh DIR
#
# Env: CLUSTER_STOP_TIMEOUT (seconds before KILL, per phase, default 10),
#      CLUSTER_KEEP_DIR=1 (stop the processes but keep DIR, e.g. for its logs).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

dir=$(abspath "$1")
if [ ! -e "$dir" ]; then
  echo "cluster: nothing to stop in $dir"
  exit 0
fi
if [ ! -e "$dir/$CLUSTER_MARKER" ]; then
  if [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ]; then
    rmdir "$dir"
    exit 0
  fi
  echo "cluster: $dir is not a cluster directory (no $CLUSTER_MARKER); refusing to touch it" >&2
  exit 1
fi

# A real node (hack/realnode/up.sh) goes first: its pods, rules and mounts
# must be undone while the host still knows what they were.
if [ -d "$dir/realnode" ]; then
  "$here/../realnode/down.sh" "$dir" || echo "cluster: the real node's teardown reported leftovers" >&2
fi

n=$(cluster_pids "$dir" | wc -l)
stop_cluster "$dir" "${CLUSTER_STOP_TIMEOUT:-10}"
if [ "${CLUSTER_KEEP_DIR:-0}" = 1 ]; then
  echo "cluster: stopped $n processes; kept $dir"
else
  rm -rf "$dir"
  echo "cluster: stopped $n processes; removed $dir"
fi
