"""The OCI image of `make image` for tests: built (cached) by hack/image/build.sh,
unpacked by umoci, and its process run as a container runtime would: the config's
user and environment, the root filesystem read-only (readOnlyRootFilesystem), a
writable /tmp (the Deployment's emptyDir). Needs root."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.cluster import REPO_ROOT

BUILD = REPO_ROOT / "hack" / "image" / "build.sh"


@dataclass(frozen=True)
class Image:
    tag: str
    archive: Path
    layout: Path
    build_seconds: float

    @property
    def version(self) -> str:
        return self.tag.split("-")[0]


def build_image(timeout: float = 1500) -> Image:
    started = time.monotonic()
    result = subprocess.run(
        [str(BUILD)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/image/build.sh failed: {result.stderr[-5000:]}")
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return Image(
        fields["tag"], Path(fields["archive"]), Path(fields["layout"]), time.monotonic() - started
    )


def unpack(image: Image, bundle: Path) -> Path:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{image.layout}:{image.version}", str(bundle)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return bundle


def runtime_config(bundle: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    return config


def image_command(
    bundle: Path, args: list[str], tmp: Path | None = None, entrypoint: list[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the image's entrypoint with `args`.
    `tmp`: a host directory mounted on the image's /tmp (writable), else a tmpfs;
    `entrypoint`: instead of the image's own."""
    process = runtime_config(bundle)["process"]
    user = process["user"]
    rootfs = bundle / "rootfs"
    command = entrypoint or process["args"][:3]
    tmp_mount = (
        f"mount --bind {shlex.quote(str(tmp))} {rootfs}/tmp"
        if tmp is not None
        else f"mount -t tmpfs -o size=16m tmpfs {rootfs}/tmp"
    )
    script = " && ".join(
        [
            f"mount --bind {rootfs} {rootfs}",
            f"mount -o remount,bind,ro {rootfs}",
            tmp_mount,
            f"exec chroot --userspec={user['uid']}:{user['gid']} {rootfs} "
            + " ".join(shlex.quote(a) for a in [*command, *args]),
        ]
    )
    env = dict(item.split("=", 1) for item in process["env"])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env


def run_in_image(
    bundle: Path, *args: str, timeout: float = 60, entrypoint: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    command, env = image_command(bundle, list(args), entrypoint=entrypoint)
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
