"""The house rules of docs/architecture.md, checked on the import graph (``ast``, every import including those inside
functions): no import cycles among the project's modules, and arrows that only point down —
pages → ``workbench.app`` → workbench services → ``frdiff``; the CLI and the benchmarks are leaves."""

import ast
import re
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


# Imported but not declared, each for a stated reason: they come with a declared package.
TRANSITIVE = {
    "huggingface_hub": "diffusers' hub client; used only to check a hub id before diffusers loads it",
    "google_crc32c": "zarr 3's crc32c codec; workbench.analysis.reading falls back to zarr's own read without it",
}


def declared_packages() -> set[str]:
    """The distributions pyproject.toml declares, in its dependencies and every extra (names normalised)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [s for extra in project["optional-dependencies"].values() for s in extra]
    names = {re.match(r"[A-Za-z0-9_.-]+", spec).group(0) for spec in specs}
    return {normalised(n) for n in names if normalised(n) != "frdiff-workbench"}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared_and_explained():
    """A package the shipped code imports is in pyproject.toml (or comes with one, for a reason in TRANSITIVE), and
    docs/dependencies.md says why each declared package is there."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    project = {name.split(".")[0] for name in module_files()}
    imported: dict[str, str] = {}
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            for top in (n.split(".")[0] for n in names):
                if top not in project and top not in sys.stdlib_module_names:
                    imported.setdefault(top, name)
    declared = declared_packages()
    undeclared = sorted(f"{top} (in {where})" for top, where in imported.items() if top not in TRANSITIVE
                        and not {normalised(d) for d in distributions.get(top, [top])} & declared)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    why = (ROOT / "docs" / "dependencies.md").read_text().split("| package | why |")[1]  # the table of reasons
    explained = {normalised(n) for cell in re.findall(r"^\| ([^|]+) \|", why, re.M)
                 for n in re.findall(r"`([^`]+)`", cell)}
    unexplained = sorted(declared - explained)
    assert not unexplained, f"declared but not in docs/dependencies.md: {unexplained}"


def test_every_module_has_a_room_in_the_docs():
    """docs/architecture.md names every module of frdiff/ and workbench/ (as `path/name.py` or, in its package's
    row, as `name`), so a new module gets its line where a reader looks for it."""
    text = re.sub(r"```.*?```", "", (ROOT / "docs" / "architecture.md").read_text(), flags=re.S)  # fences
    named = set(re.findall(r"`([^`]+)`", text))
    words = {w for n in named for w in re.split(r"[/, ]+", n)}
    missing = sorted(str(path.relative_to(ROOT)) for name, path in module_files().items()
                     if name.split(".")[0] in ("frdiff", "workbench") and not path.stem.startswith("__")
                     and path.stem not in words and path.name not in words)
    assert not missing, f"docs/architecture.md does not name {missing}"


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
