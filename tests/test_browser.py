"""End-to-end: the app under ``streamlit run`` on localhost, in a real headless Chromium (Debian ``chromium``
driven by Playwright). Visits every page, runs the Tour's first step, checks that no exception, error box or
traceback shows (on the pages or in the server's log) and saves a screenshot of every page.

Screenshots go to the test's tmp folder, or to ``$FRDIFF_SCREENSHOTS`` when set. The documentation's screenshots
are written by ``python -m workbench.bench.app --screenshots docs/img``. Skipped only when Playwright or
``/usr/bin/chromium`` is missing (``.ci/run`` installs both)."""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from workbench.bench import app as bench_app

MISSING = bench_app.browser_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"end-to-end browser test: {MISSING}")


def test_every_page_in_chromium(tmp_path):
    shots = Path(os.environ.get("FRDIFF_SCREENSHOTS") or tmp_path / "shots")
    expected = [label for label, _, _ in bench_app.PAGES]
    with ThreadPoolExecutor(1) as pool:
        # A small recording (6 steps, pooled maps) for Similarity and Frequency, made while the server starts.
        recording = pool.submit(bench_app.record_demo_run, tmp_path / "runs", steps=6, seeds="0")
        # One OpenMP thread: the CPU is shared, and spinning torch threads would slow the server down many times.
        with bench_app.streamlit_server(tmp_path, threads=1) as server, bench_app.chromium() as page:
            run_dir = recording.result()
            report = bench_app.walk_pages(page, server["url"], shots=shots)
            bench_app.wait_idle(page)
            idle = bench_app.idle_cpu_share(server["process"].pid, seconds=10)  # a tab open, a recording present
    assert (run_dir / "manifest.json").exists()
    print(f"idle server: {idle:.1%} of a core")
    assert idle < 0.05, f"an idle app used {idle:.1%} of a core"

    assert report["visited"] == expected
    assert report["problems"] == {}
    log = (tmp_path / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]

    # The Tour's first step ran live: frames appeared while sampling, then the strip of six x̂0 frames.
    tour = report["tour"]
    assert 0 < tour["first_frame_s"] <= tour["result_s"] < 120
    assert report["elements"]["Tour"]["images"] == 6
    # Similarity read the recording: heatmap, curves and the steps × steps matrix, and a PCA frame.
    assert report["elements"]["Similarity"]["charts"] >= 3
    assert report["elements"]["Similarity"]["images"] >= 1

    from PIL import Image

    assert len(report["screenshots"]) == len(expected)
    for path in map(Path, report["screenshots"]):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width == 1400 and img.height >= 1000, path
            colours = img.convert("RGB").resize((64, 64)).getcolors(4096)
            assert colours is None or len(colours) > 8, f"{path} looks blank"
