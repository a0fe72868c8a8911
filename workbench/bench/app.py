"""The Streamlit app in a real headless Chromium: start-up benchmark, page walk and screenshots.

``bench_app_startup`` (suite ``app-startup`` of ``python -m workbench bench``) launches ``streamlit run`` as a
subprocess and measures, with Playwright driving Debian's ``chromium``, the time from process start to the Tour's
title on screen and the time from clicking the Tour's first step to its live result. ``walk_pages`` visits every
page (used by ``tests/test_browser.py``); ``python -m workbench.bench.app --screenshots docs/img`` writes the
documentation's screenshots.

Playwright is a test dependency (``requirements-dev.txt``); its own browser download is not used: Chromium comes
from the system (``apt-get install chromium``) and is launched through ``executable_path``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the app runs from streamlit_app.py there
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOUR_TITLE = "Temporal redundancy in diffusion models"
TOUR_BUTTON = "Sample and watch"
TOUR_DONE = "Step 0 is the noisiest"  # the caption under the finished x̂0 strip
TOUR_LIVE = "x̂0 at step"  # the caption of the live frame while sampling
# (sidebar label, the page's st.title, screenshot name or None); Auto-FR is listed only when present.
PAGES = [
    ("Tour", TOUR_TITLE, "app-tour"),
    ("Models", "Shipped models", None),
    ("Record", "Record a run", None),
    ("Similarity", "Similarity across steps", "app-similarity"),
    ("Frequency", "Frequency content over time", None),
    ("Policy builder", "Policy builder", "app-policy-builder"),
    ("Run & compare", "Run & compare", "app-compare"),
    ("Auto-FR", "Auto-FR", None),
    ("Policy library", "Policy library", None),
]
PROBLEM_SELECTORS = {"exception": '[data-testid="stException"]', "error": '[data-testid="stAlertContentError"]'}
PROBLEM_TEXTS = ("Traceback (most recent call last)",)


def browser_missing() -> str | None:
    """Why the browser tools cannot run here (``None`` when Playwright and ``/usr/bin/chromium`` are present)."""
    if find_spec("playwright") is None:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(folder: Path, threads: int | None = None, port: int | None = None) -> Iterator[dict]:
    """``streamlit run streamlit_app.py`` headless on a free port, recordings and policies under ``folder``.

    Yields ``{"url", "process", "started"}`` (``started``: ``time.perf_counter()`` just before the process was
    launched) once the server answers its health check. ``threads`` sets ``OMP_NUM_THREADS`` for the server.
    The process is terminated on exit; its output is in ``folder/streamlit.log``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = dict(os.environ, FRDIFF_RUNS=str(folder / "runs"), FRDIFF_POLICIES=str(folder / "policies"))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--client.toolbarMode", "minimal"]
    # the file watcher and usage statistics: as the checkout's .streamlit/config.toml ships them (off)
    url = f"http://127.0.0.1:{port}"
    with open(folder / "streamlit.log", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, proc, timeout=120)
            yield {"url": url, "process": proc, "started": started}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_share(pid: int, seconds: float = 10.0) -> float:
    """The share of one core the process used over ``seconds`` of wall time (call it while nothing runs)."""
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s")


@contextmanager
def chromium(viewport: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A Playwright page in the system's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        finally:
            browser.close()


_BUSY_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.dataset.testScriptState !== 'notRunning') return true;
  if (document.querySelector('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"], [data-testid="stSpinner"]'))
    return true;
  const charts = Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'));
  return charts.some(c => !c.querySelector('.main-svg'));
}"""


def wait_idle(page, timeout_s: float = 60, settle_s: float = 0.5) -> None:
    """Wait until the app's script has finished and its elements have drawn (charts, no skeletons or spinners),
    steadily for ``settle_s`` (Streamlit's ``data-test-script-state`` on ``stApp`` is ``notRunning``)."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(_BUSY_JS):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle_s:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the app was still running after {timeout_s:.0f} s")


def page_problems(page) -> list[str]:
    """Exceptions, error boxes and traceback text on the current page (empty when clean)."""
    found = [f"{kind}: {page.locator(sel).first.inner_text()[:300]}"
             for kind, sel in PROBLEM_SELECTORS.items() if page.locator(sel).count()]
    main = page.locator('[data-testid="stMain"]').inner_text()
    found += [f"text {t!r} on the page" for t in PROBLEM_TEXTS if t in main]
    return found


def screenshot(page, path: Path, max_height: int = 2600) -> Path:
    """The whole main area (the viewport grows to fit it, up to ``max_height``), as PNG."""
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " const c = m && m.querySelector('[data-testid=\"stMainBlockContainer\"]');"
        " return Math.max(m ? m.scrollHeight : 0, c ? c.scrollHeight + 120 : 0, window.innerHeight); }")
    old = page.viewport_size
    page.set_viewport_size({"width": old["width"], "height": int(min(max(height, old["height"]), max_height))})
    time.sleep(0.5)  # let plotly relayout
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size(old)
    return path


def open_page(page, label: str, title: str, timeout_s: float = 90) -> None:
    """Click ``label`` in the sidebar, wait for the page's title and for its script to finish."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=label).first.click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)


def run_tour_first_step(page, timeout_s: float = 120) -> dict:
    """Click the Tour's first step; seconds to the first live x̂0 frame and to the finished strip."""
    button = page.get_by_role("button", name=TOUR_BUTTON)
    button.wait_for(timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)
    t0 = time.perf_counter()
    button.click()
    page.get_by_text(TOUR_LIVE).first.wait_for(timeout=timeout_s * 1000)
    live = time.perf_counter() - t0
    page.get_by_text(TOUR_DONE).first.wait_for(timeout=timeout_s * 1000)
    done = time.perf_counter() - t0
    wait_idle(page, timeout_s)
    return {"first_frame_s": live, "result_s": done, "clicked_at": t0}


def record_demo_run(runs: Path, steps: int = 10, seeds: str = "0-1", threads: int | None = 1) -> Path:
    """A small pool16 recording of the shipped tiny-unet (for the Similarity page), through the CLI."""
    out = runs / f"demo-star-{steps}"
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run([sys.executable, "-m", "workbench", "record", "--model", "tiny-unet", "--class", "star",
                    "--steps", str(steps), "--seed", seeds, "--reduce", "pool16", "--out", str(out), "--json"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    return out


def walk_pages(page, url: str, shots: Path | None = None, compare: bool = False, timeout_s: float = 90,
               docs_only: bool = False) -> dict:
    """Open the Tour, run its first step, then visit every other page through the sidebar.

    Returns ``{"visited": [labels], "problems": {label: [...]}, "elements": {label: {"images": n, "charts": n}},
    "screenshots": [paths], "tour": {...}}``.
    With ``shots``, every page is saved there as ``app-<page>.png`` (``docs_only``: only the documentation's four);
    ``compare`` also clicks Run on Run & compare (for its screenshot).
    """
    report: dict = {"visited": [], "problems": {}, "elements": {}, "screenshots": []}
    page.goto(url)
    page.get_by_role("heading", name=TOUR_TITLE).wait_for(timeout=timeout_s * 1000)
    report["tour"] = run_tour_first_step(page, timeout_s)
    for label, title, shot in PAGES:
        if label != "Tour":
            open_page(page, label, title, timeout_s)
        if label == "Run & compare" and compare:
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("heading", name="Results").wait_for(timeout=timeout_s * 1000)
            wait_idle(page, timeout_s)
        report["visited"].append(label)
        report["elements"][label] = {"images": page.locator('[data-testid="stImage"]').count(),
                                     "charts": page.locator('[data-testid="stPlotlyChart"]').count()}
        problems = page_problems(page)
        if problems:
            report["problems"][label] = problems
        if shots is not None and (shot or not docs_only):
            name = shot or "app-" + label.lower().replace(" & ", "-").replace(" ", "-")
            report["screenshots"].append(str(screenshot(page, shots / f"{name}.png")))
    return report


def _machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for mod in ("torch", "streamlit", "playwright"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    try:
        info["chromium"] = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True,
                                          timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _one_startup(threads: int | None, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="frdiff-app-bench-") as tmp, chromium() as page:
        load_before = os.getloadavg()[0]
        with streamlit_server(Path(tmp), threads=threads) as server:
            healthy = time.perf_counter() - server["started"]
            page.goto(server["url"])
            page.get_by_role("heading", name=TOUR_TITLE).wait_for(timeout=timeout_s * 1000)
            title = time.perf_counter() - server["started"]
            page.get_by_role("button", name=TOUR_BUTTON).wait_for(timeout=timeout_s * 1000)
            ready = time.perf_counter() - server["started"]
            tour = run_tour_first_step(page, timeout_s)
            problems = page_problems(page)
        return {"server_healthy_s": healthy, "first_page_s": title, "tour_ready_s": ready,
                "first_live_frame_s": tour["first_frame_s"], "first_result_s": tour["result_s"],
                "first_result_since_start_s": tour["clicked_at"] + tour["result_s"] - server["started"],
                "load_avg_1min_before": load_before, "problems": problems}


def bench_app_startup(repeats: int = 3, threads: tuple[int | None, ...] = (None, 1), timeout_s: float = 180) -> dict:
    """Start-up of ``streamlit run`` to the first rendered page and the Tour's first live result, in Chromium.

    For each entry of ``threads`` (``None``: as a user starts it; an integer: ``OMP_NUM_THREADS`` for the server),
    ``repeats`` fresh server processes; medians are reported. Times:

    - ``first_page_s``: process start → the Tour's title visible in the browser (the first rendered page);
    - ``tour_ready_s``: process start → the Tour's button visible (the model is loaded);
    - ``first_live_frame_s`` / ``first_result_s``: click on the Tour's first step → first live x̂0 frame / the
      finished strip of frames (30 DDIM steps, x̂0 at every step: the first live result).
    """
    reason = browser_missing()
    if reason:
        raise RuntimeError(f"app-startup needs a browser: {reason}")
    report: dict = {"suite": "app-startup", "repeats": repeats, "machine": _machine(), "configs": []}
    keys = ["server_healthy_s", "first_page_s", "tour_ready_s", "first_live_frame_s", "first_result_s",
            "first_result_since_start_s", "load_avg_1min_before"]
    for t in threads:
        runs = [_one_startup(t, timeout_s) for _ in range(repeats)]
        config = {"omp_num_threads": t if t else os.environ.get("OMP_NUM_THREADS"),
                  "label": "as started by a user" if t is None else f"OMP_NUM_THREADS={t}",
                  "runs": runs,
                  "median": {k: round(statistics.median(r[k] for r in runs), 3) for k in keys},
                  "problems": sorted({p for r in runs for p in r["problems"]})}
        config["meets_targets"] = {"first_page_le_10s": config["median"]["first_page_s"] <= 10,
                                   "first_result_le_15s": config["median"]["first_result_s"] <= 15}
        report["configs"].append(config)
    report["load_avg_after"] = list(os.getloadavg())
    return report


def write_screenshots(out: Path, threads: int | None = 1, timeout_s: float = 180) -> dict:
    """Record a small run, start the app, walk every page (with a comparison) and save the documentation's
    screenshots (Tour after its first step, Similarity, Policy builder, Run & compare) into ``out``."""
    reason = browser_missing()
    if reason:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="frdiff-app-shots-") as tmp:
        record_demo_run(Path(tmp) / "runs", steps=20, seeds="0-1", threads=threads)
        with streamlit_server(Path(tmp), threads=threads) as server, chromium((1400, 1000)) as page:
            return walk_pages(page, server["url"], shots=out, compare=True, timeout_s=timeout_s, docs_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.bench.app", description=__doc__.splitlines()[0])
    parser.add_argument("--screenshots", metavar="DIR", help="walk every page and save screenshots into DIR")
    parser.add_argument("--bench", action="store_true", help="run bench_app_startup and print its JSON")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.screenshots or args.bench):
        parser.error("choose --screenshots DIR and/or --bench")
    if args.screenshots:
        report = write_screenshots(Path(args.screenshots))
        print(json.dumps(report, indent=2))
        if report["problems"]:
            return 1
    if args.bench:
        print(json.dumps(bench_app_startup(repeats=args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

