# Helpers shared by up.sh and down.sh. Sourced, not executed.
#
# A cluster directory is recognised by the marker file $CLUSTER_MARKER; the
# scripts refuse to start in, stop or delete a non-empty directory without it.
# Every process of a cluster records its pid in DIR/pids/<name>.pid and names a
# path under DIR/ on its command line: that is how a recorded pid is told
# apart from an unrelated process that reused the number.

CLUSTER_MARKER=.canary-cluster
# Stop order: the clients first, the API server, then its storage.
CLUSTER_COMPONENTS=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

# abspath PATH -> absolute path (PATH need not exist).
abspath() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd -P)" "${1#./}" ;;
  esac | sed 's#/\{2,\}#/#g; s#/$##'
}

# pid_of_cluster PID DIR: true if PID is a live (non-zombie) process whose
# command line mentions DIR/.
pid_of_cluster() {
  local pid=$1 dir=$2 stat state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  state=${stat##*) }
  state=${state%% *}
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}

# cluster_pids DIR: "PID NAME" lines for the live processes of the cluster,
# from the pid files plus a scan of /proc for component binaries whose
# arguments point into DIR (catches a process whose pid file was never
# written). Excludes the caller and its parent (the watchdog runs down.sh by
# exec'ing into it).
cluster_pids() {
  local dir=$1 f pid exe name found=" "
  for f in "$dir"/pids/*.pid; do
    [ -r "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    [[ $found == *" $pid "* ]] && continue
    [ "$pid" = "$$" ] || [ "$pid" = "$PPID" ] && continue
    if pid_of_cluster "$pid" "$dir"; then
      found+="$pid "
      name=${f##*/}
      echo "$pid ${name%.pid}"
    fi
  done
  for exe in /proc/[0-9]*/exe; do
    pid=${exe#/proc/}
    pid=${pid%/exe}
    [[ $found == *" $pid "* ]] && continue
    name=$(readlink "$exe" 2>/dev/null) || continue
    name=${name##*/}
    case " ${CLUSTER_COMPONENTS[*]} " in *" $name "*) ;; *) continue ;; esac
    if pid_of_cluster "$pid" "$dir"; then
      found+="$pid "
      echo "$pid $name"
    fi
  done
}

# stop_pids DIR TIMEOUT PID...: TERM, wait up to TIMEOUT s, KILL, wait.
# pid_alive PID: the process exists and is not a zombie. Used once a pid was
# verified ours and signalled: an exiting process's cmdline reads empty before it
# is a zombie, so "no longer names DIR" is not yet "gone".
pid_alive() {
  local stat state
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  state=${stat##*) }
  state=${state%% *}
  [ "$state" != Z ] && [ "$state" != X ]
}

stop_pids() {
  local dir=$1 timeout=$2 pid left deadline
  shift 2
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while :; do
    left=""
    for pid in "$@"; do pid_alive "$pid" && left+="$pid "; done
    [ -n "$left" ] || return 0
    [ $SECONDS -lt $deadline ] || break
    sleep 0.1
  done
  echo "cluster: still running after ${timeout}s, sending KILL to: $left" >&2
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while :; do
    left=""
    for pid in "$@"; do pid_alive "$pid" && left+="$pid "; done
    [ -n "$left" ] || return 0
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster: processes survived KILL: $left" >&2
      return 1
    fi
    sleep 0.1
  done
}

# stop_cluster DIR [TERM_TIMEOUT_S]: stop every process of the cluster and
# return once none is alive. Order matters: the API server's graceful shutdown
# waits for its clients' watches (up to 60 s) and needs etcd, so the clients
# (and the watchdog) go first, then the API server, then etcd.
stop_cluster() {
  local dir=$1 timeout=${2:-10} pid name rc=0
  local -a clients=() apiserver=() storage=()
  while read -r pid name; do
    case $name in
      kube-apiserver) apiserver+=("$pid") ;;
      etcd) storage+=("$pid") ;;
      *) clients+=("$pid") ;;
    esac
  done < <(cluster_pids "$dir")
  stop_pids "$dir" "$timeout" "${clients[@]}" || rc=1
  stop_pids "$dir" "$timeout" "${apiserver[@]}" || rc=1
  stop_pids "$dir" "$timeout" "${storage[@]}" || rc=1
  return $rc
}
