"""``bench cli-startup``: how long the CLI's listing and writing commands take from a cold process (issue 21:
``--help``, ``models``, ``runs`` and ``policy make`` should answer within 3 s on the 2-core reference CPU).

Each command runs ``repeats`` times in a fresh ``python -m workbench`` process (imports included, as a user sees
it), in a rotating order; the median wall time is reported with every run's.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 3.0


def commands(tmp: Path) -> dict[str, list[str]]:
    return {"--help": ["--help"], "models": ["models"], "runs": ["runs", str(tmp)],
            "policy make": ["policy", "make", "--model", "tiny-unet", "--steps", "20", "--out", str(tmp / "p.json")]}


def bench_cli_startup(repeats: int = 3) -> dict:
    """The ``cli-startup`` suite (module docstring)."""
    from workbench.bench.common import machine_info

    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(Path(tmp))
        names = list(cmds)
        for r in range(max(1, repeats)):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no command always runs first
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "workbench", *cmds[name]], capture_output=True,
                                      text=True, timeout=300)
                elapsed = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"`{name}` failed: {proc.stderr.strip()[-500:]}")
                runs.setdefault(name, []).append(elapsed)
    rows = [{"command": f"python -m workbench {name}", "median_s": statistics.median(t), "runs_s": t,
             "within_budget": statistics.median(t) <= BUDGET_S} for name, t in runs.items()]
    return {"suite": "cli-startup", "machine": machine_info(), "budget_s": BUDGET_S, "repeats": repeats,
            "commands": rows}
