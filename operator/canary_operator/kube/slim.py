"""kubernetes_asyncio without its eager imports.

The library's packages import every generated API and model class as soon as any part
of them is touched: about 1,300 modules and 60 MiB of a process that reads no model
(measured: `import kubernetes_asyncio.client` alone takes a fresh interpreter from
8 to 71 MiB). The operator sends raw requests through `ApiClient` and loads kubeconfigs
with `config`; kopf imports two model classes for isinstance checks.

`install()` puts a finder on the import path that makes the packages named in PACKAGES
lazy when they are imported (a process that never imports them sees nothing): a name
is resolved on first use from the package's own `__init__.py` (its `from MODULE import
NAME` lines), so every object is the library's own and behaves as it always does;
modules nobody asks for are never imported. Submodules and subpackages (`client.rest`,
`config`, `watch`, ...) load as usual, from the real directories. Installed by the
package's `__init__` (before kopf or anything of ours imports the library); a process
that imported it already keeps it as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGES = (
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.api",
    "kubernetes_asyncio.client.models",
)

# `from kubernetes_asyncio.client.models.v1_pod import V1Pod` (one name a line, as the
# generator writes them) and `import kubernetes_asyncio.client as client`.
_FROM = re.compile(r"^from\s+([\w.]+)\s+import\s+(\w+)(?:\s+as\s+(\w+))?\s*$", re.M)
_IMPORT_AS = re.compile(r"^import\s+([\w.]+)\s+as\s+(\w+)\s*$", re.M)
_VERSION = re.compile(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", re.M)


class LazyPackage(types.ModuleType):
    """A package whose names are imported when first asked for."""

    def __init__(self, name: str, exports: dict[str, tuple[str, str | None]]):
        super().__init__(name)  # __spec__, __path__, __file__: set by the import system
        self._exports = exports

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        source = self._exports.get(attr)
        if source is None:  # a submodule or subpackage of its own
            try:
                return importlib.import_module(f"{self.__name__}.{attr}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self.__name__}.{attr}":
                    raise
                raise AttributeError(
                    f"module {self.__name__!r} has no attribute {attr!r}"
                ) from None
        module_name, name = source
        module = importlib.import_module(module_name)
        value = module if name is None else getattr(module, name)
        setattr(self, attr, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._exports})


def _exports(init: str) -> dict[str, tuple[str, str | None]]:
    found: dict[str, tuple[str, str | None]] = {}
    for module, name, alias in _FROM.findall(init):
        if module != "__future__":
            found[alias or name] = (module, name)
    for module, alias in _IMPORT_AS.findall(init):
        found[alias] = (module, None)
    return found


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes the packages of PACKAGES lazy when (and only when) they are imported."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PACKAGES:
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None or real.origin is None or not real.submodule_search_locations:
            return None  # not there, or not a package as expected: the usual import
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=real.origin, is_package=True)
        spec.submodule_search_locations = list(real.submodule_search_locations)
        spec.has_location = True  # __file__ is the real __init__.py
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        assert spec.origin is not None
        init = Path(spec.origin).read_text()
        package = LazyPackage(spec.name, _exports(init))
        version = _VERSION.search(init)
        if version:
            package.__version__ = version.group(1)  # type: ignore[attr-defined]
        return package

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing runs: names are imported as they are asked for."""


_FINDER = _Finder()


def install() -> bool:
    """Put the finder first on the import path (nothing is imported now). False, and
    nothing changed, if the library is imported already or the finder is in place."""
    if _FINDER in sys.meta_path or any(name in sys.modules for name in PACKAGES):
        return False
    sys.meta_path.insert(0, _FINDER)
    return True
