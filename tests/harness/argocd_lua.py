"""Argo CD's Lua sandbox for tests: hack/argocd-lua (gopher-lua with the libraries
Argo CD opens for argocd-cm scripts, see its main.go), built once into a cache
outside the repository and run on a script and an object.

The binary is cached under ~/.cache/canary-operator/argocd-lua/<hash>/, the hash
covering go.sum (the module versions) and the helper's own sources, so a change
to either builds a new one. A lock file keeps parallel test sessions from
building it twice."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "hack" / "argocd-lua"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "canary-operator"
BUILD_TIMEOUT = 600  # a cold module download and build on a busy 2-core machine


class LuaError(Exception):
    """The script failed in the sandbox (what Argo CD would report as an error)."""


def _key() -> str:
    digest = hashlib.sha256()
    for name in ("go.sum", "go.mod", "main.go"):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def binary() -> Path:
    """The helper binary, built if this version is not cached yet."""
    target = CACHE / "argocd-lua" / _key() / "argocd-lua"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is needed to build hack/argocd-lua")
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            partial = target.with_suffix(".partial")
            env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": ""}
            result = subprocess.run(
                [go, "build", "-trimpath", "-o", str(partial), "."],
                cwd=SOURCE,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"building hack/argocd-lua failed:\n{result.stderr}")
            partial.rename(target)  # atomic: a reader never sees half a binary
    return target


def run(script: str, obj: dict[str, Any], open_libs: bool = False, action: bool = False) -> Any:
    """Run `script` with `obj` as Argo CD would; the JSON of what it returned
    (`action`: an action's object, with Argo CD's empty-object repair)."""
    with tempfile.TemporaryDirectory(prefix="argocd-lua-") as tmp:
        script_file, obj_file = Path(tmp) / "script.lua", Path(tmp) / "obj.json"
        script_file.write_text(script)
        obj_file.write_text(json.dumps(obj))
        flags = [*(["-open-libs"] if open_libs else []), *(["-action"] if action else [])]
        args = [str(binary()), *flags, str(script_file)]
        result = subprocess.run(
            [*args, str(obj_file)], capture_output=True, text=True, timeout=30, check=False
        )
    if result.returncode != 0:
        raise LuaError(result.stderr.strip())
    return json.loads(result.stdout)


def merge_patch(live: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `live` into `new`, as jsonpatch.CreateMergePatch
    computes it in argo-cd's server/application (null deletes a key; arrays and
    scalars are replaced whole): what Argo CD sends after an action."""
    if not isinstance(live, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in live.keys() | new.keys():
        if key not in new:
            patch[key] = None
        elif key not in live:
            patch[key] = new[key]
        elif isinstance(live[key], dict) and isinstance(new[key], dict):
            inner = merge_patch(live[key], new[key])
            if inner:
                patch[key] = inner
        elif live[key] != new[key]:
            patch[key] = new[key]
    return patch


def action_patch(script: str, live: dict[str, Any]) -> dict[str, Any]:
    """The merge patch Argo CD would send for this action on this live object."""
    patch = merge_patch(live, run(script, live, action=True))
    assert isinstance(patch, dict)
    return patch
