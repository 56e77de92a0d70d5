#!/usr/bin/env bash
# Builds the canary-operator OCI image without a container daemon or a registry
# base image (`make image`):
#   1. a root filesystem from Debian packages (mmdebstrap: python3, ca-certificates);
#   2. the project's wheel and its pinned dependencies (requirements.txt) installed
#      into it with pip, compiled to bytecode (the root filesystem is read-only);
#   3. a non-root user 65532, then committed to an OCI layout by umoci and archived.
# The tag is the version plus a content hash (the image manifest's digest); the
# layout also carries the plain version tag the install manifests use.
#
# Everything is cached in ~/.cache/canary-operator/image/, keyed by the inputs
# (this script, the package list, the pinned requirements, the project's sources):
# a second run with the same inputs returns at once.
#
# Needs root (mmdebstrap and the layer's file owners) and the Debian packages
# mmdebstrap and umoci (hack/ensure-deps.sh installs them).
#
# Prints on stdout, last lines: `tag=<tag>`, `archive=<path of the .oci.tar>`,
# `layout=<path of the OCI layout directory>`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
suite=${IMAGE_SUITE:-bookworm}
packages=python3,ca-certificates
# A fixed time for every file, the config and the archive: the same inputs give
# the same bytes (mmdebstrap, pip's wheel build and compileall honour it too).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
uid=65532
site=/opt/canary-operator/site

cache_root=${CANARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canary-operator}/image
log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root, file owners in the layer)"
for tool in mmdebstrap umoci tar sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing: run hack/ensure-deps.sh"
done

# Debian's sources as this machine has them (the archive the image is built from).
sources=${IMAGE_APT_SOURCES:-}
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then sources=$f; break; fi
  done
fi
[ -n "$sources" ] || die "no apt sources found (set IMAGE_APT_SOURCES)"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -1)
[ -n "$version" ] || die "no version in pyproject.toml"

# --- the cache keys ---------------------------------------------------------------
rootfs_key=$(
  {
    echo "$suite $packages $SOURCE_DATE_EPOCH"
    cat "$here/build.sh" "$sources"
  } | sha256sum | cut -c1-16
)
source_files() {
  (cd "$repo" && find operator -type f -name '*.py' -o -type f -name py.typed | grep -v __pycache__ | LC_ALL=C sort
   echo pyproject.toml; echo README.md)
}
image_key=$(
  {
    echo "$rootfs_key"
    cat "$here/requirements.txt"
    (cd "$repo" && source_files | xargs sha256sum)
  } | sha256sum | cut -c1-16
)
mkdir -p "$cache_root"
result="$cache_root/by-input/$image_key"
if [ -s "$result/tag" ] && [ -s "$result/archive" ] && [ -s "$(cat "$result/archive")" ]; then
  log "cached: $(cat "$result/tag")"
  echo "tag=$(cat "$result/tag")"
  echo "archive=$(cat "$result/archive")"
  echo "layout=$(cat "$result/layout")"
  exit 0
fi

exec 9>"$cache_root/build.lock"
flock 9

work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# --- 1. root filesystem -----------------------------------------------------------
rootfs_tar="$cache_root/rootfs-$rootfs_key.tar"
if [ ! -s "$rootfs_tar" ]; then
  log "mmdebstrap $suite ($packages)"
  mmdebstrap --quiet --mode=root --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$work/rootfs.tar" "$sources" >&2
  mv "$work/rootfs.tar" "$rootfs_tar"
fi
rootfs="$work/bundle/rootfs"
mkdir -p "$rootfs"
tar -xf "$rootfs_tar" -C "$rootfs" --numeric-owner

# --- 2. the project and its dependencies ------------------------------------------
log "building the wheel"
# From a clean copy of exactly the hashed sources: nothing stale (build/, egg-info)
# can reach the wheel, and the work tree gets no build outputs.
mkdir -p "$work/wheels" "$work/src"
(cd "$repo" && source_files | tar -cf - -T -) | tar -xf - -C "$work/src"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$work/src" >&2
# The image's Python is Debian's 3.11: take binary wheels built for it, pinned.
log "installing the wheel and $(grep -c '==' "$here/requirements.txt") pinned dependencies"
"$python" -m pip install --quiet --no-deps --no-compile --no-warn-script-location \
  --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
  --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --target "$rootfs$site" -r "$here/requirements.txt" "$work"/wheels/*.whl >&2
rm -rf "$rootfs$site/bin"  # console scripts with the build host's interpreter path
# pip records the wheel's temporary path: drop it, so equal inputs give equal bytes.
for record in "$rootfs$site"/canary_operator-*.dist-info; do
  rm -f "$record/direct_url.json"
  sed -i '/direct_url\.json/d' "$record/RECORD"
done
# Bytecode by the image's own interpreter; hash-based, so file times do not matter.
chroot "$rootfs" /usr/bin/python3 -m compileall -q -j 0 \
  --invalidation-mode unchecked-hash "$site" >&2

# --- 3. the user, and normalised contents -----------------------------------------
echo "nonroot:x:$uid:$uid:nonroot:/nonexistent:/usr/sbin/nologin" >>"$rootfs/etc/passwd"
echo "nonroot:x:$uid:" >>"$rootfs/etc/group"
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
  "$rootfs"/tmp/* "$rootfs"/var/cache/ldconfig/aux-cache
find "$rootfs$site" -exec chown -h 0:0 {} + -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
find "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# --- 4. OCI layout ------------------------------------------------------------------
layout="$work/oci"
ref="$layout:build"
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
umoci init --layout "$layout"
umoci new --image "$ref"
# The bundle umoci expects next to the root filesystem (its mtree of the empty image).
mv "$rootfs" "$work/rootfs.ready"
umoci unpack --image "$ref" "$work/bundle" >/dev/null
rm -rf "$work/bundle/rootfs"
mv "$work/rootfs.ready" "$work/bundle/rootfs"
touch -h -d "@$SOURCE_DATE_EPOCH" "$work/bundle/rootfs"
log "committing the layer"
umoci repack --image "$ref" --history.created "$created" \
  --history.created_by "hack/image/build.sh" --history.comment "Debian $suite ($packages) + canary-operator $version" \
  "$work/bundle"
umoci config --image "$ref" --no-history \
  --created "$created" --author canary-operator --os linux --architecture amd64 \
  --config.user "$uid:$uid" --config.workingdir / \
  --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --config.env "PYTHONPATH=$site" --config.env PYTHONDONTWRITEBYTECODE=1 \
  --config.env PYTHONUNBUFFERED=1 \
  --config.entrypoint /usr/bin/python3 --config.entrypoint -m \
  --config.entrypoint canary_operator.cli.main \
  --config.cmd run --config.cmd --leader-elect --config.cmd --http-port=8080 \
  --config.cmd --log-format=json \
  --config.exposedports 8080/tcp \
  --config.label "org.opencontainers.image.title=canary-operator" \
  --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$layout"

digest=$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$layout/index.json" | head -1)
[ -n "$digest" ] || die "no manifest digest in index.json"
tag="$version-${digest:0:12}"
umoci tag --image "$ref" "$tag"
umoci tag --image "$ref" "$version"
umoci rm --image "$ref"

# --- 5. archive, cached by content --------------------------------------------------
out="$cache_root/$tag"
rm -rf "$out"
mkdir -p "$out"
mv "$layout" "$out/oci"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -C "$out/oci" -cf "$out/canary-operator-$tag.oci.tar" .
mkdir -p "$result"
echo "$tag" >"$result/tag"
echo "$out/canary-operator-$tag.oci.tar" >"$result/archive"
echo "$out/oci" >"$result/layout"
size=$(du -b "$out/canary-operator-$tag.oci.tar" | cut -f1)
log "built $tag in $(( $(date +%s) - start )) s: $(( size / 1024 / 1024 )) MiB"
echo "tag=$tag"
echo "archive=$out/canary-operator-$tag.oci.tar"
echo "layout=$out/oci"
