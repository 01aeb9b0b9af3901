"""The package layers: imports point only downwards, and no two modules import each other.

Every module under cl_bench/ and baselines/ (installed as `cl_bench_baselines`) is parsed with
`ast`; every import counts, at module level, inside functions and under TYPE_CHECKING alike
(a lazy import is still a dependency). Layers, highest first:

    cli, workflow > sweep > learners, baselines > engine > data > api > models, analysis > errors

A module may import its own layer or lower ones. `cl_bench` itself (the package's
__init__, which re-exports the plug-in API) is on the api layer; its module `__getattr__`
reaches the notebook API (`cl_bench.workflow`, beside the cli) by name on first access, as
registry targets are strings: no edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"cl_bench": ROOT / "cl_bench", "cl_bench_baselines": ROOT / "baselines"}

LAYERS = [  # lowest first
    ["cl_bench.errors"],
    ["cl_bench.models", "cl_bench.analysis"],
    ["cl_bench.api", "cl_bench"],
    ["cl_bench.data"],
    ["cl_bench.engine"],
    ["cl_bench.learners", "cl_bench_baselines"],
    ["cl_bench.sweep"],
    ["cl_bench.cli", "cl_bench.workflow"],
]

# Known edges that break the rule, each a TODO: the module should get what it needs from its
# own layer or a lower one. None: the task-file readers live in data.taskfiles and the zero-shot
# scoring that the toy world's pretraining records in data.scoring.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of both packages."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package-internal modules one import statement of `module` names."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's package, `level` steps up
            base = module.split(".")
            base = base if is_package(module) else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from a.b import c`: c is the module a.b.c if there is one, else a name in a.b
        candidates = [
            f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix
            for alias in node.names
        ]
    for name in candidates:
        while name and name not in MODULES:  # `import a.b.c` of an attribute path
            name = name.rpartition(".")[0]
        if name:
            names.add(name)
    return names


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):  # every import: top level, in functions, TYPE_CHECKING
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= resolve(module, node)
        graph[module] = targets - {module}
    return graph


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix (cl_bench.data.real.x -> cl_bench.data)."""
    best, level = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    if level < 0:
        raise AssertionError(f"{module} is in no layer; add its package to LAYERS")
    return level


def layer_name(index: int) -> str:
    return " / ".join(p.removeprefix("cl_bench.") for p in LAYERS[index])


GRAPH = import_graph()


def test_every_module_is_in_a_layer() -> None:
    assert len(MODULES) > 40  # the walk found the packages
    for module in MODULES:
        layer_of(module)


def test_imports_point_only_downwards() -> None:
    upward = {(a, b) for a, targets in GRAPH.items() for b in targets if layer_of(b) > layer_of(a)}
    new = sorted(upward - KNOWN_UPWARD)
    assert not new, "imports of a higher layer:\n" + "\n".join(
        f"  {a} ({layer_name(layer_of(a))}) imports {b} ({layer_name(layer_of(b))})" for a, b in new
    )
    fixed = sorted(KNOWN_UPWARD - upward)
    assert not fixed, f"known exceptions that no longer occur; remove them: {fixed}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_there_is_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}, ["b", "b2", "b"]),
    ],
)
def test_find_cycle_reports_the_cycle(graph, expected) -> None:
    assert find_cycle(graph) == expected


def test_the_walk_sees_lazy_and_type_checking_imports() -> None:
    # engine.loop imports the world registry at module level; the cli imports the engine
    # inside command bodies; registry targets are strings and no edge.
    assert "cl_bench.data.worlds" in GRAPH["cl_bench.engine.loop"]
    assert "cl_bench.engine.loop" in GRAPH["cl_bench.cli.app"]
    assert "cl_bench.sweep.commands" in GRAPH["cl_bench.sweep.plan"]
    assert "cl_bench.learners.lora" not in GRAPH["cl_bench.api.registry"]
