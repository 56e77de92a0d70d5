"""The package's layers, read from its sources (no import is executed): who may import
whom, no import cycle, and size limits that keep one concern per file.

Every import counts, wherever it is written (module level, inside a function, under
`if TYPE_CHECKING:`): a lazy import still ties the two modules together.
The rules are data (LAYERS, MAX_FILE_LINES, ...): changing a rule is one line.
`make lint` runs this file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "canary_operator"
SOURCES = Path(__file__).resolve().parents[2] / "operator"


@dataclass(frozen=True)
class Layer:
    """What the modules in `layer` may import. An entry names a module and the modules
    under it; the package itself (`canary_operator`) names only its `__init__`.
    `allowed` (when set) lists the only modules of the package they may import."""

    layer: str
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None


def _p(*names: str) -> tuple[str, ...]:
    return tuple(f"{PACKAGE}.{name}" for name in names)


# One entry a layer, from the bottom up.
LAYERS: tuple[Layer, ...] = (
    Layer(f"{PACKAGE}.api", allowed=_p("api")),
    Layer(f"{PACKAGE}.kube", allowed=(PACKAGE, *_p("api", "kube"))),
    Layer(
        f"{PACKAGE}.engine",
        forbidden=_p(
            "traffic", "lock", "kube", "reconcile", "reconciler", "controller", "handlers",
            "cli", "web", "notifications", "metrics",
            # The engine is pure: none of the modules that make calls either.
            "analysis.providers", "checks.webhook", "checks.inflight", "checks.evidence",
        ),
    ),
    Layer(
        f"{PACKAGE}.traffic",
        forbidden=_p("reconcile", "reconciler", "lock", "controller", "handlers", "cli", "web"),
    ),
    Layer(
        f"{PACKAGE}.lock",
        forbidden=_p("reconcile", "reconciler", "traffic", "controller", "handlers", "cli", "web"),
    ),
    Layer(f"{PACKAGE}.reconcile", forbidden=("kopf", *_p("controller", "handlers"))),
)  # fmt: skip

MAX_FILE_LINES = 700
LONG_FILES_ALLOWED = frozenset({"api/models.py"})  # the pydantic models: the API's one source
MAX_FUNCTION_LINES = 60  # from the `def` line to the function's last line
SHORT_FUNCTIONS_IN = ("reconcile", "lock", "engine", "traffic")


# ------------------------------------------------------------------ reading the sources


def _modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every source file of the package under `root`."""
    found: dict[str, Path] = {}
    for file in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


def _package_of(module: str, file: Path) -> str:
    return module if file.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, file: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file. `from X import y` is module
    X.y when that is one of ours, else X (y is a name defined in X)."""
    tree = ast.parse(file.read_text(), str(file))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module, file).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} ({self.file.name}:{self.line})"


def _all_imports(root: Path) -> list[Import]:
    modules = _modules(root)
    known = set(modules)
    return [
        Import(module, imported, file, line)
        for module, file in modules.items()
        for imported, line in _imports(module, file, known)
    ]


def _covers(entry: str, module: str) -> bool:
    if entry == PACKAGE:  # the package itself: its __init__ only
        return module == PACKAGE
    return module == entry or module.startswith(entry + ".")


def _ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


# ------------------------------------------------------------------ the checks


def layer_violations(root: Path, layer: Layer) -> list[str]:
    found = []
    for imp in _all_imports(root):
        if not _covers(layer.layer, imp.importer):
            continue
        if any(_covers(entry, imp.imported) for entry in layer.forbidden):
            found.append(f"{imp}: {layer.layer} must not import it")
        elif (
            layer.allowed is not None
            and _ours(imp.imported)
            and not any(_covers(entry, imp.imported) for entry in layer.allowed)
        ):
            found.append(f"{imp}: {layer.layer} may import only {', '.join(layer.allowed)}")
    return found


def import_cycles(root: Path) -> list[str]:
    """Each strongly connected set of modules (Tarjan), with one cycle through it."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in _modules(root)}
    for imp in _all_imports(root):
        if imp.imported in graph and imp.imported != imp.importer:
            graph[imp.importer].setdefault(imp.imported, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_describe_cycle(graph, component) for component in components]


def _describe_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> str:
    """The shortest way back to the component's first module, edge by edge."""
    start, members = component[0], set(component)
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt, imp in graph[node].items():
            if nxt == start:
                edges = [*paths[node], imp]
                return f"cycle among {', '.join(component)}: " + "; ".join(map(str, edges))
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], imp]
                queue.append(nxt)
    raise AssertionError(f"no cycle found in {component}")  # Tarjan guarantees one


def long_files(root: Path) -> list[str]:
    found = []
    for file in sorted((root / PACKAGE).rglob("*.py")):
        name = file.relative_to(root / PACKAGE).as_posix()
        lines = len(file.read_text().splitlines())
        if lines > MAX_FILE_LINES and name not in LONG_FILES_ALLOWED:
            found.append(f"{PACKAGE}/{name}: {lines} lines (at most {MAX_FILE_LINES})")
    return found


def long_functions(root: Path) -> list[str]:
    found = []
    for part in SHORT_FUNCTIONS_IN:
        for file in sorted((root / PACKAGE / part).rglob("*.py")):
            tree = ast.parse(file.read_text(), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        name = file.relative_to(root / PACKAGE).as_posix()
                        found.append(
                            f"{PACKAGE}/{name}:{node.lineno} {node.name}: {lines} lines"
                            f" (at most {MAX_FUNCTION_LINES})"
                        )
    return found


def _report(what: str, found: list[str]) -> str:
    return f"{len(found)} {what}:\n  " + "\n  ".join(found)


# ------------------------------------------------------------------ the package as it is


@pytest.mark.parametrize("layer", LAYERS, ids=[layer.layer for layer in LAYERS])
def test_layer_imports(layer: Layer) -> None:
    found = layer_violations(SOURCES, layer)
    assert not found, _report("imports across layers", found)


def test_no_import_cycle() -> None:
    found = import_cycles(SOURCES)
    assert not found, _report("import cycles", found)


def test_file_sizes() -> None:
    found = long_files(SOURCES)
    assert not found, _report("files too long", found)


def test_function_sizes() -> None:
    found = long_functions(SOURCES)
    assert not found, _report("functions too long", found)


# ------------------------------------------------------------------ each rule can fail


def _write(root: Path, name: str, text: str) -> None:
    file = root / PACKAGE / name
    file.parent.mkdir(parents=True, exist_ok=True)
    for parent in file.relative_to(root).parents:  # every directory a package
        if parent != Path("."):
            (root / parent / "__init__.py").touch()
    file.write_text(text)


def _long_function(name: str, lines: int) -> str:
    return f"def {name}() -> None:\n" + "    pass\n" * (lines - 1)


def test_each_rule_fails_on_a_synthetic_package(tmp_path: Path) -> None:
    _write(tmp_path, "api/models.py", "from canary_operator.kube import objects\n")
    _write(tmp_path, "kube/objects.py", "from canary_operator import leader\n")
    _write(tmp_path, "leader.py", "")
    _write(
        tmp_path,
        "engine/machine.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from canary_operator.traffic.base import TrafficRouter\n"
        + _long_function("plan", MAX_FUNCTION_LINES + 1),
    )
    _write(tmp_path, "traffic/base.py", "def f() -> None:\n    from ..lock import lease\n")
    _write(tmp_path, "lock/lease.py", "import canary_operator.reconciler\n")
    _write(tmp_path, "reconciler.py", "")
    _write(tmp_path, "reconcile/run.py", "import kopf\nfrom . import plan\n")
    _write(tmp_path, "reconcile/plan.py", "from .run import x\n")
    _write(tmp_path, "cli/big.py", "\n" * (MAX_FILE_LINES + 1))
    _write(tmp_path, "traffic/short.py", _long_function("ok", MAX_FUNCTION_LINES))

    by_layer = {layer.layer: layer_violations(tmp_path, layer) for layer in LAYERS}
    assert by_layer == {
        "canary_operator.api": [
            "canary_operator.api.models imports canary_operator.kube.objects (models.py:1):"
            " canary_operator.api may import only canary_operator.api"
        ],
        "canary_operator.kube": [
            "canary_operator.kube.objects imports canary_operator.leader (objects.py:1):"
            " canary_operator.kube may import only canary_operator,"
            " canary_operator.api, canary_operator.kube"
        ],
        "canary_operator.engine": [
            "canary_operator.engine.machine imports canary_operator.traffic.base"
            " (machine.py:3): canary_operator.engine must not import it"
        ],
        "canary_operator.traffic": [
            "canary_operator.traffic.base imports canary_operator.lock.lease (base.py:2):"
            " canary_operator.traffic must not import it"
        ],
        "canary_operator.lock": [
            "canary_operator.lock.lease imports canary_operator.reconciler (lease.py:1):"
            " canary_operator.lock must not import it"
        ],
        "canary_operator.reconcile": [
            "canary_operator.reconcile.run imports kopf (run.py:1):"
            " canary_operator.reconcile must not import it"
        ],
    }
    assert import_cycles(tmp_path) == [
        "cycle among canary_operator.reconcile.plan, canary_operator.reconcile.run:"
        " canary_operator.reconcile.plan imports canary_operator.reconcile.run (plan.py:1);"
        " canary_operator.reconcile.run imports canary_operator.reconcile.plan (run.py:2)"
    ]
    assert long_files(tmp_path) == [
        f"canary_operator/cli/big.py: {MAX_FILE_LINES + 1} lines (at most {MAX_FILE_LINES})"
    ]
    assert long_functions(tmp_path) == [
        f"canary_operator/engine/machine.py:4 plan: {MAX_FUNCTION_LINES + 1} lines"
        f" (at most {MAX_FUNCTION_LINES})"
    ]


def test_allowed_imports_pass(tmp_path: Path) -> None:
    """The package's `__init__`, its own layer and anything outside the package are
    fine for a layer that lists what it may import; a long api/models.py is allowed."""
    _write(tmp_path, "kube/api.py", "import json\nimport canary_operator\nfrom . import cache\n")
    _write(tmp_path, "kube/cache.py", "from canary_operator.api.models import X\n")
    _write(tmp_path, "api/models.py", "import pydantic\n" + "\n" * MAX_FILE_LINES)
    assert [v for layer in LAYERS for v in layer_violations(tmp_path, layer)] == []
    assert import_cycles(tmp_path) == []
    assert long_files(tmp_path) == []
