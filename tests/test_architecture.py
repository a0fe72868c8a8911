"""The house rules of docs/architecture.md, checked on the import graph (``ast``, every import including those inside
functions): no import cycles among the project's modules, and arrows that only point down —
pages → ``workbench.app`` → workbench services → ``frdiff``; the CLI and the benchmarks are leaves."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{module name: file}`` of frdiff/, workbench/, pages/ and streamlit_app.py."""
    mods = {}
    for pkg in ("frdiff", "workbench", "pages"):
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    mods["streamlit_app"] = root / "streamlit_app.py"
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (the longest known prefix of each imported name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = module_files(root)
    graph = {m: imports_of(m, f, mods) for m, f in mods.items()}
    # a package's __init__ may re-export its own children: that is its face, not an arrow
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str:
    """The room a module belongs to (docs/architecture.md)."""
    if module.startswith("frdiff"):
        return "frdiff"
    if module in ("workbench", "workbench.errors"):
        return "base"
    for room in ("app", "cli", "bench"):
        if module == f"workbench.{room}" or module.startswith(f"workbench.{room}."):
            return room
    if module == "workbench.__main__":
        return "entry"
    if module.startswith("workbench"):
        return "service"
    return "pages"  # pages/* and streamlit_app


# What each room may import (besides itself). "base" is the package face and the one error type.
ALLOWED = {
    "frdiff": {"frdiff"},
    "base": {"base", "service"},  # workbench/__init__ resolves the pipeline classes diffusers asks for
    "service": {"frdiff", "base", "service"},
    "app": {"frdiff", "base", "service", "app"},
    "bench": {"frdiff", "base", "service", "bench"},
    "cli": {"frdiff", "base", "service", "cli", "bench"},  # `python -m workbench bench …` runs the suites
    "entry": {"cli"},
    "pages": {"frdiff", "base", "service", "app"},
}


def forbidden_arrows(graph: dict[str, set[str]], files: dict[str, Path]) -> list[str]:
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if layer(d) not in ALLOWED[layer(m)]:
                bad.append(f"{files[m].relative_to(ROOT)} ({layer(m)}) imports {d} ({layer(d)})")
    return bad


def test_no_import_cycles():
    found = cycles(import_graph())
    files = module_files()
    assert not found, "import cycles:\n" + "\n".join(
        " → ".join(str(files[m].relative_to(ROOT)) for m in comp) for comp in found)


def test_arrows_point_down():
    assert not forbidden_arrows(import_graph(), module_files()), "\n".join(
        forbidden_arrows(import_graph(), module_files()))


def test_frdiff_needs_only_torch_and_diffusers():
    allowed = {"torch", "diffusers", "frdiff"} | set(sys.stdlib_module_names)
    bad = []
    for f in sorted((ROOT / "frdiff").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            bad += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] not in allowed]
    assert not bad, "frdiff imports beyond torch + diffusers:\n" + "\n".join(bad)


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"streamlit_app.py": "", "pages/p.py": "", **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"frdiff/__init__.py": "", "frdiff/a.py": "from frdiff import b\n",
      "frdiff/b.py": "def f():\n    import frdiff.a\n", "workbench/__init__.py": ""}, [["frdiff.a", "frdiff.b"]]),
    ({"frdiff/__init__.py": "from .a import x\n", "frdiff/a.py": "x = 1\n", "workbench/__init__.py": ""}, []),
])
def test_the_cycle_finder_sees_lazy_imports_and_ignores_package_faces(tmp_path, files, expected):
    assert cycles(import_graph(_fake_tree(tmp_path, files))) == expected


def test_an_upward_arrow_is_named_with_its_file(tmp_path, monkeypatch):
    root = _fake_tree(tmp_path, {"frdiff/__init__.py": "", "workbench/__init__.py": "",
                                 "workbench/compare.py": "from workbench.cli import main\n",
                                 "workbench/cli/__init__.py": "def main(): pass\n"})
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    assert forbidden_arrows(import_graph(root), module_files(root)) == [
        "workbench/compare.py (service) imports workbench.cli (cli)"]
