"""The project installs as a library: a wheel built from pyproject.toml, installed into a fresh virtual environment,
runs the README's own-pipeline snippet and the console script from a folder outside the checkout.

Offline: the wheel is built without build isolation (the test environment's setuptools) and installed with
``--no-deps`` into a venv that sees the test environment's packages (torch, diffusers, …)."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("tiny-unet", "tiny-dit", "tiny-sd", "shape-classifier", "scene-judge")


def readme_snippet() -> str:
    """The README's Python block that starts with the own-pipeline example (it imports frdiff)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    mine = [b for b in blocks if "import frdiff" in b and "frdiff.apply" in b]
    assert len(mine) == 1, "the README should have exactly one own-pipeline snippet"
    return mine[0]


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(venv python, venv bin, a working folder outside the checkout, env)`` with the built wheel installed."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"  # a clean copy: building never writes into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("frdiff", "workbench"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp / "dist"), str(src)], tmp, env)
    wheel = next((tmp / "dist").glob("frdiff_workbench-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--ignore-installed", "-q", str(wheel)], tmp, env)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"python": python, "bin": venv / "bin", "cwd": elsewhere, "env": env, "wheel": wheel, "venv": venv}


def test_wheel_holds_both_packages_and_the_shipped_weights(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "frdiff/__init__.py" in names and "workbench/cli/__init__.py" in names
    for model in SHIPPED:
        assert any(n.startswith(f"workbench/models/{model}/") and n.endswith(".safetensors") for n in names), model
    assert "workbench/models/tiny-sd/tokenizer/tokenizer.json" in names  # tiny-sd's tokenizer travels too
    assert not [n for n in names if n.startswith(("tests/", "pages/", "docs/"))]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(installed["wheel"]).read(meta).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(r.split()[1].split(">")[0].split("<")[0].split("=")[0] for r in requires) == ["diffusers", "torch"]
    assert "Requires-Python: >=3.10" in text and "License-Expression: MIT" in text


def test_readme_snippet_runs_against_the_installed_wheel(installed):
    code = "import frdiff, workbench; print(frdiff.__file__); print(workbench.__file__)\n" + readme_snippet()
    out = run([str(installed["python"]), "-c", code], installed["cwd"], installed["env"]).stdout.splitlines()
    venv = str(installed["venv"].resolve())
    assert out[0].startswith(venv) and out[1].startswith(venv), out[:2]  # the installed copy, not the checkout
    assert "16 denoiser calls for 20 steps" in out
    saved = json.loads((installed["cwd"] / "my-policy.json").read_text())
    assert saved["format"] == "frdiff-policy" and saved["steps"] == 20


def test_console_script_lists_the_shipped_models_with_their_weights(installed):
    proc = run([str(installed["bin"] / "frdiff-workbench"), "models", "--json"], installed["cwd"], installed["env"])
    rows = {r["name"]: r for r in json.loads(proc.stdout)["models"]}
    assert set(rows) == {"tiny-unet", "tiny-dit", "tiny-sd"}
    for row in rows.values():
        assert row["weights"] and Path(row["weights"]).resolve().is_relative_to(installed["venv"].resolve())
        assert row["parameters"] > 1_000_000


def test_installed_policy_make_is_served_from_the_shipped_metadata(installed):
    """policy-meta.json travels with the weights, so an installed copy writes policies without torch (issue 21)."""
    code = ("import json, sys\nfrom workbench.cli import main\n"
            "rc = main(['policy', 'make', '--model', 'tiny-unet', '--steps', '20', '--out', 'p.json', '--json'])\n"
            "print(json.dumps({'rc': rc, 'heavy': sorted(k for k in ('torch', 'diffusers') if k in sys.modules)}))")
    out = run([str(installed["python"]), "-c", code], installed["cwd"], installed["env"]).stdout.splitlines()
    assert json.loads(out[-1]) == {"rc": 0, "heavy": []}
    assert json.loads(out[0])["blocks"] == 18
    shipped = json.loads((ROOT / "workbench" / "models" / "tiny-unet" / "policy-meta.json").read_text())
    assert json.loads((installed["cwd"] / "p.json").read_text())["model"] == shipped["model"]
