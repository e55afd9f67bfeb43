"""The package's import structure: no import cycles, and no imports of project modules inside
functions (where they hide cycles). Read from the source with ``ast``: module-level and
function-local ``import`` statements both count, and so does each ``lazy_module("onnxinit.x")``
(:mod:`onnxinit.lazy`: a module imported on first use is still a dependency). (The rules
catalog loads built-in rule modules and plugins lazily by name with importlib; those modules
import the registry, never the catalog, so no cycle can run through it.)"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "onnxinit"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path], module: str) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, inside a function) for each import statement."""
    path = modules[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = next(iter(modules)).partition(".")[0]
    local_lines = {
        n.lineno
        for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            # "from package import submodule" imports the submodule; any other name comes
            # from the module itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        if _is_lazy_module_call(node):
            names = [node.args[0].value]
        for name in names:
            if name != top and not name.startswith(top + "."):
                continue
            while name and name not in modules:  # a name inside a module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.append((name, node.lineno, node.lineno in local_lines))
    return found


def _is_lazy_module_call(node: ast.AST) -> bool:
    """``lazy_module("dotted.name")`` (or ``lazy.lazy_module(...)``) with a literal name."""
    if not isinstance(node, ast.Call) or len(node.args) != 1:
        return False
    func = node.func
    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return (called == "lazy_module" and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str))


def _graph(modules: dict[str, Path]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module in modules:
        for target, line, _ in _imports(modules, module):
            graph.add_edge(module, target, line=line)
    return graph


def _cycles(graph: nx.DiGraph) -> list[str]:
    return [" -> ".join(f"{a} (line {graph.edges[a, b]['line']})"
                        for a, b in zip(cycle, cycle[1:] + cycle[:1]))
            for cycle in nx.simple_cycles(graph)]


def _local_imports(modules: dict[str, Path]) -> list[str]:
    return [f"{modules[m].name}:{line} imports {target}"
            for m in modules for target, line, inside in _imports(modules, m) if inside]


def test_no_import_cycles():
    modules = _modules(ROOT)
    graph = _graph(modules)
    # the walker reads this package: edges known to exist are seen
    assert graph.has_edge("onnxinit.graph", "onnxinit.passes")
    assert graph.has_edge("onnxinit.rules.activations", "onnxinit.rules.registry")
    assert graph.has_edge("onnxinit.analysis", "onnxinit.backward")  # a lazy_module edge
    cycles = _cycles(graph)
    assert not cycles, "\n".join(cycles)


def test_no_function_local_imports_of_project_modules():
    local = _local_imports(_modules(ROOT))
    assert not local, "\n".join(local)


def test_the_walker_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .c import value\n")
    (package / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (package / "b.py").write_text("from .sub import value\nfrom pkg.a import f\n")
    (package / "sub" / "c.py").write_text("import numpy\nvalue = 1\n")
    modules = _modules(package)
    graph = _graph(modules)
    assert set(graph.edges) == {("pkg.a", "pkg.b"), ("pkg.b", "pkg.sub"), ("pkg.b", "pkg.a"),
                                ("pkg.sub", "pkg.sub.c")}
    assert _cycles(graph) and _local_imports(modules) == ["a.py:2 imports pkg.b"]


def test_the_walker_finds_a_cycle_through_a_lazy_module(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .lazy import lazy_module\n_b = lazy_module('pkg.b')\n")
    (package / "b.py").write_text("from . import a\n")
    (package / "lazy.py").write_text("def lazy_module(name):\n    return name\n")
    graph = _graph(_modules(package))
    assert graph.has_edge("pkg.a", "pkg.b") and graph.has_edge("pkg.b", "pkg.a")
    assert _cycles(graph)
