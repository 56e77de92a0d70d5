#!/usr/bin/env bash
# Builds the real node's test images as one OCI layout archive, from Debian
# packages only (no registry, no daemon), cached outside the repository keyed
# by the inputs (these scripts, the app, the Debian sources):
#
#   registry.local/pause:local          the pod sandbox (busybox sleep)
#   registry.local/busybox:local        the test runner (sh, wget, nc, ...)
#   registry.local/canary-demo:v1       the demo app, version v1 (stable)
#   registry.local/canary-demo:v2       version v2, healthy (the good canary)
#   registry.local/canary-demo:bad      version bad: answers 500 to every request
#   registry.local/canary-demo:slow     version slow: 300 ms per request
#
# The demo app's env (APP_VERSION, ERROR_RATE, LATENCY_MS) can be overridden
# in a pod spec. Needs root (mmdebstrap) and busybox-static, mmdebstrap.
# Prints the archive's path on stdout as its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
suite=${IMAGE_SUITE:-bookworm}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}/realnode-images
log() { printf '[realnode-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root)"
[ -x /bin/busybox ] || die "busybox-static is missing (hack/realnode/deps.sh)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (hack/realnode/deps.sh)"

sources=${IMAGE_APT_SOURCES:-}
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then sources=$f; break; fi
  done
fi
[ -n "$sources" ] || die "no apt sources found (set IMAGE_APT_SOURCES)"

rootfs_key=$({ echo "$suite python3 $SOURCE_DATE_EPOCH"; cat "$sources"; } | sha256sum | cut -c1-16)
key=$({ echo "$rootfs_key"; cat "$here/build.sh" "$here/oci.py" "$here/demo_app.py"; sha256sum /bin/busybox; } | sha256sum | cut -c1-16)
archive="$cache_root/images-$key.oci.tar"
if [ -s "$archive" ]; then
  log "cached: $archive"
  echo "$archive"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/build.lock"
flock 9
if [ -s "$archive" ]; then echo "$archive"; exit 0; fi
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$EPOCHSECONDS

rootfs_tar="$cache_root/python-rootfs-$rootfs_key.tar"
if [ ! -s "$rootfs_tar" ]; then
  log "mmdebstrap $suite (python3), about 2 min"
  mmdebstrap --quiet --mode=root --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --include=python3 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    "$suite" "$work/rootfs.tar" "$sources" >&2
  mv "$work/rootfs.tar" "$rootfs_tar"
fi

log "busybox and app layers"
bb="$work/busybox"
mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp"
cp /bin/busybox "$bb/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$bb/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$bb/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$bb/etc/group"
chmod 1777 "$bb/tmp"
"$python" "$here/oci.py" layer "$bb" "$work/busybox.tar"
app="$work/app"
mkdir -p "$app/app"
cp "$here/demo_app.py" "$app/app/demo_app.py"
"$python" "$here/oci.py" layer "$app" "$work/app.tar"

path_env="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
demo() { # demo TAG ERROR_RATE LATENCY_MS
  printf '{"name":"registry.local/canary-demo:%s","layers":["python","app"],"config":{"Env":["%s","APP_VERSION=%s","ERROR_RATE=%s","LATENCY_MS=%s","PYTHONUNBUFFERED=1"],"Entrypoint":["/usr/bin/python3","/app/demo_app.py"],"ExposedPorts":{"8080/tcp":{}},"User":"65534:65534","WorkingDir":"/app"}}' \
    "$1" "$path_env" "$1" "$2" "$3"
}
cat >"$work/spec.json" <<JSON
{"layers": {"busybox": "$work/busybox.tar", "python": "$rootfs_tar", "app": "$work/app.tar"},
 "images": [
  {"name": "registry.local/pause:local", "layers": ["busybox"],
   "config": {"Env": ["$path_env"], "Cmd": ["/bin/busybox", "sleep", "2147483647"]}},
  {"name": "registry.local/busybox:local", "layers": ["busybox"],
   "config": {"Env": ["$path_env"], "Cmd": ["/bin/sh"]}},
  $(demo v1 0 0), $(demo v2 0 0), $(demo bad 1 0), $(demo slow 0 300)
 ]}
JSON
log "packing the OCI archive"
"$python" "$here/oci.py" "$work/spec.json" "$work/images.oci.tar"
mv "$work/images.oci.tar" "$archive"
log "built $archive in $((EPOCHSECONDS - start)) s ($(( $(stat -c %s "$archive") / 1024 / 1024 )) MiB)"
echo "$archive"
