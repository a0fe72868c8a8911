"""Smoke runs of the engine's benchmark suites at tiny size (the numbers in docs come from full runs)."""

import pytest
import torch

from workbench.bench.engine import bench_engine_quality, bench_gpu_speed


def test_gpu_speed_suite_small():
    seen = []
    r = bench_gpu_speed(repeats=1, small=True, models=("sd15-unet",), steps=4, images=(1, 2), checkpoint=seen.append)
    # a checkpoint after each image count, with what was measured so far (a stopped run keeps it)
    assert [c["partial"] for c in seen] == [True, True] and "partial" not in r
    assert [sorted({row["images"] for row in c["rows"]}) for c in seen] == [[1], [1, 2]]
    m = r["models"]["sd15-unet"]
    assert r["small"] and 0.5 < m["reuse_flop_share"] < 0.9  # conv1 + attention: most of a UNet's FLOPs
    assert m["predicted_reuse_over_full"] == pytest.approx(1 - m["reuse_flop_share"])
    rows = {row["variant"]: row for row in m["end_to_end"] if not row.get("peer")}
    assert set(rows) == {"none", "uniform M=2", "uniform M=2 + mixing", "uniform M=3", "uniform M=3 + mixing",
                         "uniform M=3 taylor2", "uniform M=3 taylor2 + mixing"}
    assert rows["uniform M=2"]["denoiser_calls"] == 4 and rows["none"]["speedup"] == 1.0
    assert all(row["latency_s"] > 0 and row["mode"] == "eager" for row in rows.values())
    # the flat rows: every (images, variant) once, peers timed in the same rounds, speedups against eager stock
    flat = r["rows"]
    assert {row["images"] for row in flat} == {1, 2} and all(row["model"] == "sd15-unet" for row in flat)
    for n in (1, 2):
        mine = {row["variant"]: row for row in flat if row["images"] == n}
        assert set(rows) <= set(mine) and mine["none"]["speedup_vs_eager_stock"] == 1.0
        peers = {v: row for v, row in mine.items() if row.get("peer")}
        assert "TaylorSeer interval 2" in peers and "FirstBlockCache τ=0.1" in peers
        for row in peers.values():  # timed (with a speedup) or reported with the reason it does not run
            assert ("error" in row) != ("latency_s" in row)
            if "latency_s" in row:
                assert row["speedup_vs_eager_stock"] == pytest.approx(mine["none"]["latency_s"] / row["latency_s"])
                assert row["predicted_speedup"] is None
    assert r["models"]["sd15-unet"]["by_images"]["2"]["eager"][0]["images"] == 2
    with pytest.raises(ValueError, match="gpu-speed models are"):
        bench_gpu_speed(small=True, models=("tiny-unet",))


def test_gpu_speed_compile_modes_time_stock_in_the_same_mode_after_a_warm_up():
    """The compile-mode rows, regional and full in one run (dynamo's eager backend here: the CPU suite checks the
    bookkeeping, not speed)."""
    seen = []
    r = bench_gpu_speed(repeats=2, small=True, models=("dit-xl-2",), steps=4, compile="regional,full",
                        backend="eager", peers=False, checkpoint=seen.append)
    # a checkpoint before each compile mode and after the image count: a time limit keeps every finished mode
    assert [sorted({row["mode"] for row in c["rows"]}) for c in seen] == \
        [["eager"], ["eager", "regional"], ["eager", "full", "regional"]]
    modes = r["models"]["dit-xl-2"]["modes"]
    assert list(modes) == ["regional", "full"] and r["compile"] == "regional,full"
    for mode, found in modes.items():
        rows = {row["variant"]: row for row in found}
        assert set(rows) == {"none", "uniform M=2", "uniform M=2 + mixing", "uniform M=3", "uniform M=3 + mixing",
                             "uniform M=3 taylor2", "uniform M=3 taylor2 + mixing"}
        for row in rows.values():
            assert row["mode"] == mode and row["recompiles"] == 0 and row["warmup_s"] > 0
            assert row["speedup_vs_stock_same_mode"] == pytest.approx(rows["none"]["median_s"] / row["median_s"])
    assert "compiled" not in r["models"]["dit-xl-2"]
    with pytest.raises(ValueError, match="compile must be off, regional, full or wrapped"):
        bench_gpu_speed(small=True, compile="yes")


def test_gpu_speed_modes_follow_compile_and_cuda_graphs():
    from workbench.bench.engine import gpu_speed_modes

    assert gpu_speed_modes("off", False) == [] and gpu_speed_modes("wrapped", False) == []
    assert gpu_speed_modes("regional", "both") == ["regional", "cuda-graphs", "step-graphs"]
    assert gpu_speed_modes("full,regional", "step") == ["regional", "step-graphs", "full", "full-step-graphs"]
    with pytest.raises(ValueError, match="use it with --compile regional or full"):
        gpu_speed_modes("off", "step")
    with pytest.raises(ValueError, match="blocks captures the regional graphs"):
        gpu_speed_modes("full", "blocks")


def test_engine_quality_suite_small():
    r = bench_engine_quality(seeds=2, steps=4, models=("tiny-unet",), schedulers=("euler",))
    main = r["models"]["tiny-unet"]["ddim"]
    names = [v["name"] for v in main["variants"]]
    assert names[:2] == ["reduced-nfe M=2", "reduced-nfe M=3"] and len(names) == 7
    calls = {v["name"]: v["denoiser_calls"] for v in main["variants"]}
    assert calls["reduced-nfe M=2"] == 2 and calls["FR M=2"] == 4
    assert all(0 < v["ssim"] <= 1 for v in main["variants"])
    assert set(r["models"]["tiny-unet"]["schedulers"]) == {"euler"}


def test_engine_quality_suite_on_tiny_sd_scene_prompts():
    r = bench_engine_quality(seeds=2, steps=4, models=("tiny-sd",), schedulers=())
    entry = r["models"]["tiny-sd"]
    main = entry["ddim"]
    assert "class-conditional" not in entry["prompts"] and main["reference"]["prompt_adherence"] is not None
    names = [v["name"] for v in main["variants"]]
    assert names[:7] == ["reduced-nfe M=2", "reduced-nfe M=3", "FR M=2", "FR M=2 + mixing", "FR M=3",
                         "FR M=3 + mixing", "deepcache M=3"]
    equal = [v for v in main["variants"] if v["name"].startswith("DDIM ")]
    assert equal and all(v["denoiser_calls"] == v["steps"] and v["steps"] not in (2, 4) for v in equal)
    assert all(len(v["error_spectrum"]) == 33 and "images" not in v for v in main["variants"])
    for v in main["variants"]:  # the bands are the first and last 11 of the 33 radial bins
        spec = v["error_spectrum"]
        assert v["band_errors"] == {"low": pytest.approx(sum(spec[:11]) / 11),
                                    "high": pytest.approx(sum(spec[-11:]) / 11)}
    assert "images" not in main["reference"] and entry["prompts"].startswith("workbench.models.scenes.eval_prompts")


def test_engine_quality_command_names_models_only_when_given():
    import argparse

    from workbench.cli.bench import bench_command

    args = argparse.Namespace(models=None, repeats=1, seeds=64, scheduler_seeds=16)
    assert bench_command(args, "engine-quality") == \
        "python -m workbench bench engine-quality --repeats 1 --seeds 64 --scheduler-seeds 16"
    args.models = "tiny-sd"
    assert "--models tiny-sd --repeats 1" in bench_command(args, "engine-quality")


def test_gpu_speed_channels_last_puts_the_unet_s_weights_in_nhwc_and_runs():
    from workbench.bench.engine import build

    pipe = build("sd15-unet", torch.device("cpu"), torch.float32, small=True, channels_last=True)
    convs = [m.weight for m in pipe.denoiser.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not build("sd15-unet", torch.device("cpu"), torch.float32, small=True).denoiser.conv_in.weight \
        .is_contiguous(memory_format=torch.channels_last)
    r = bench_gpu_speed(repeats=1, small=True, models=("sd15-unet",), steps=4, peers=False, channels_last=True,
                        forecasts=False)
    rows = {row["variant"]: row for row in r["rows"]}
    assert r["channels_last"] is True and rows["uniform M=2"]["denoiser_calls"] == 4
    # --no-forecasts: the hold variants only (a compile mode then compiles two structures, not three)
    assert r["forecasts"] is False and set(rows) == {"none", "uniform M=2", "uniform M=2 + mixing", "uniform M=3",
                                                     "uniform M=3 + mixing"}


def test_prediction_with_the_sampler_time_by_hand():
    """4 steps full, fr, skip, fr with a reuse step at half a full step's FLOPs: FLOP prediction 4 / 2 = 2. With a
    stock step of t = 4 ms of which o = 1 ms is the sampler's (paid at every step, skipped or not) the steps cost
    4 + (1 + 1.5) + 1 + (1 + 1.5) = 10 ms against stock's 16: 1.6, which the closed form gives."""
    from workbench.bench.report import _gpu_rows, with_sampler_time

    assert with_sampler_time(2.0, 4.0, 1.0) == pytest.approx(16 / 10)
    assert with_sampler_time(2.0, 4.0, 0.0) == pytest.approx(2.0)  # no sampler time: the FLOP prediction
    rows = [{"images": 1, "mode": "step-graphs", "variant": "none", "latency_s": 0.016, "predicted_speedup": 1.0,
             "speedup_vs_stock_same_mode": 1.0, "step_s_in_run": {"full": 0.004}},
            {"images": 1, "mode": "step-graphs", "variant": "M", "latency_s": 0.0125, "predicted_speedup": 2.0,
             "speedup_vs_stock_same_mode": 1.28, "step_s_in_run": {"full": 0.004, "fr": 0.0025, "skip": 0.001}},
            {"images": 1, "mode": "eager", "variant": "none", "latency_s": 0.02, "predicted_speedup": 1.0,
             "speedup_vs_stock_same_mode": 1.0, "step_s_in_run": None}]
    text = "\n".join(_gpu_rows(rows))
    assert "| 1 | step-graphs | M | 4 | 1 | 2 | 1.6 | 0.64 | 0.8 |" in text  # 1.28 / 2 and 1.28 / 1.6
    assert "in 0 of 1 cells" in text  # 0.8 < 0.9; the eager group has no step times: no row


def test_gpu_speed_times_the_peers_compiled_as_diffusers_compiles_and_undoes_it():
    """--peers-compiled: stock and each peer with the transformer blocks compiled (diffusers' regional compilation;
    DiT declares no repeated blocks, its BasicTransformerBlocks are compiled alike), speedups against stock compiled
    so, no FRDiff variant in that mode; the blocks are plain again afterwards."""
    from workbench.bench.engine import build
    from workbench.bench.peers import compiled_repeated_blocks

    r = bench_gpu_speed(repeats=1, small=True, models=("dit-xl-2",), steps=4, peers=True, peers_compiled=True,
                        backend="eager", forecasts=False, images=(1, 2))
    assert r["peers_compiled"] is True
    for n in (1, 2):
        rows = [row for row in r["rows"] if row["mode"] == "peers-compiled" and row["images"] == n]
        timed = {row["variant"]: row for row in rows if "latency_s" in row}
        assert set(timed) == {"none", "FirstBlockCache τ=0.1", "TaylorSeer interval 2", "TaylorSeer interval 3"}
        for row in timed.values():
            assert row["warmup_s"] > 0 and isinstance(row["recompiles"], int)
            # dynamo's caches start afresh for each image count: no hook gives up compiling and runs eagerly
            assert row["eager_fallbacks"] == 0
            assert row["speedup_vs_stock_same_mode"] == pytest.approx(timed["none"]["latency_s"] / row["latency_s"])
    pipe = build("dit-xl-2", torch.device("cpu"), torch.float32, small=True)
    with compiled_repeated_blocks(pipe.denoiser, "eager") as blocks:
        assert blocks and all(type(b).__name__ == "BasicTransformerBlock" and b._compiled_call_impl is not None
                              for b in blocks)
    assert all(b._compiled_call_impl is None for b in blocks)
    unet = build("sd15-unet", torch.device("cpu"), torch.float32, small=True).denoiser  # declares its blocks
    with compiled_repeated_blocks(unet, "eager") as blocks:
        assert blocks and {type(b).__name__ for b in blocks} == set(unet._repeated_blocks)
        assert all(b._compiled_call_impl is not None for b in blocks)
    assert all(b._compiled_call_impl is None for b in blocks)
    with pytest.raises(ValueError, match="cannot go with --no-peers"):
        bench_gpu_speed(repeats=1, small=True, models=("dit-xl-2",), steps=2, peers=False, peers_compiled=True)
    with pytest.raises(ValueError, match="need compile='regional' or 'full'"):  # before any model is built
        bench_gpu_speed(repeats=1, small=True, models=("dit-xl-2",), steps=2, compile_options={"cpp_wrapper": True})


def test_report_shows_a_partial_gpu_run_stopped_inside_its_first_image_count():
    """A run stopped by a time limit in its second mode has rows (the checkpoint before that mode) but no finished
    model entry: the report still tables the finished modes."""
    from workbench.bench.report import _gpu_section

    rows = [{"model": "dit-xl-2", "images": 1, "mode": mode, "variant": variant, "latency_s": latency,
             "speedup_vs_stock_same_mode": speedup, "speedup_vs_eager_stock": 1.0, "predicted_speedup": pred,
             "measured_over_predicted": speedup / pred, "recompiles": 0, "warmup_s": 1.0, "peak_memory_bytes": None,
             "step_s_in_run": None}
            for mode, variant, latency, speedup, pred in [("eager", "none", 2.0, 1.0, 1.0),
                                                           ("full", "none", 0.5, 1.0, 1.0),
                                                           ("full", "uniform M=3", 0.4, 1.25, 1.31)]]
    rep = {"suite": "gpu-speed", "device": "NVIDIA H200", "partial": True, "models": {}, "rows": rows}
    text = "\n".join(_gpu_section("x.json", rep, "bench"))
    assert "Partial: the run stopped" in text and "### dit-xl-2" in text
    assert "| 1 | full | uniform M=3 | 0.4 | 1.25 |" in text


def test_gpu_speed_profile_splits_a_full_and_a_reuse_call_by_kind_of_op():
    """On the CPU (own CPU time of each op): a reuse call of the UNet skips the attention blocks and the resnets'
    first convolutions, so it has no attention time and less convolution time than a full call; the report shows
    the table."""
    from workbench.bench.engine import op_kind
    from workbench.bench.report import _gpu_section

    assert [op_kind(n) for n in ("aten::cudnn_convolution", "aten::_scaled_dot_product_flash_attention",
                                 "aten::native_group_norm", "aten::addmm", "aten::silu")] == \
        ["convolution", "attention", "norm", "linear", "other"]
    r = bench_gpu_speed(repeats=1, small=True, models=("sd15-unet",), steps=2, peers=False, profile=True)
    prof = r["models"]["sd15-unet"]["profile"]
    full, reuse = prof["full"], prof["reuse"]
    assert prof["clock"] == "cpu" and full["attention"] > 0 and reuse.get("attention", 0.0) == 0.0
    assert 0 < reuse["convolution"] < full["convolution"] and 0 < reuse["total"] < full["total"]
    assert full["total"] == pytest.approx(sum(v for k, v in full.items() if k != "total"))
    text = "\n".join(_gpu_section("x.json", r, "bench"))
    assert "| attention | " in text and "Time by kind of op" in text


def test_timed_calls_hold_the_garbage_collector_off_and_restore_it():
    """As timeit does: no cyclic collection inside a timed call (a full one of a heap grown by compiled graphs takes
    hundreds of milliseconds); the collector's state is put back afterwards, also when the call raises."""
    import gc

    from workbench.bench.engine import _timed

    seen = []
    assert gc.isenabled()
    assert _timed(lambda: seen.append(gc.isenabled()), torch.device("cpu")) >= 0
    assert seen == [False] and gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        _timed(lambda: 1 / 0, torch.device("cpu"))
    assert gc.isenabled()
    gc.disable()
    try:
        _timed(lambda: None, torch.device("cpu"))
        assert not gc.isenabled()  # a caller's choice is left as it was
    finally:
        gc.enable()


def test_report_marks_gpu_runs_timed_before_the_sync_free_loop():
    """A gpu-speed JSON without ``timing`` was measured while DDIM synced every step (GPU) and the garbage collector
    ran inside timed calls: its section says so; a current run's JSON records how it was timed and gets no note."""
    from workbench.bench.engine import TIMING
    from workbench.bench.report import _gpu_section

    def section(**extra):
        rep = {"suite": "gpu-speed", "models": {}, "rows": [], **extra}
        return "\n".join(_gpu_section("x.json", rep, "bench"))

    assert "each DDIM step waited for the GPU" in section(device="NVIDIA H200")
    cpu = section(device="cpu")
    assert "Measured with the earlier timing: the garbage collector" in cpu and "DDIM" not in cpu
    assert "earlier timing" not in section(device="NVIDIA H200", timing=TIMING)
    r = bench_gpu_speed(repeats=1, small=True, models=("dit-xl-2",), steps=2, peers=False, forecasts=False)
    assert r["timing"] == TIMING


def test_report_tables_fr_in_each_execution_mode_over_every_gpu_file():
    """The summary's cross-file table: one row per card, model, image count and mode, stock's median with its speedup
    over eager stock, each core FR variant's speedup over stock in the same mode and its share of the FLOP prediction
    (rounded to whole percent), how many are ≥ 90 %, and the file (marked where timed the earlier way); peers, small
    CPU runs and rows without a timing are left out."""
    from workbench.bench.report import execution_modes_table

    def row(mode, variant, latency, speedup, pred, vs_eager=1.0, **extra):
        return {"model": "dit-xl-2", "images": 8, "mode": mode, "variant": variant, "latency_s": latency,
                "speedup_vs_stock_same_mode": speedup, "speedup_vs_eager_stock": vs_eager,
                "predicted_speedup": pred, **extra}

    rows = [row("full-step-graphs", "none", 0.48, 1.0, 1.0, vs_eager=3.27),
            row("full-step-graphs", "uniform M=2", 0.39, 1.2, 1.2),  # 100 %
            row("full-step-graphs", "uniform M=3 + mixing", 0.3, 1.53, 1.7),  # 90 %: counted
            row("full-step-graphs", "uniform M=2 + mixing", 0.4, 1.3, 1.47),  # 88 %
            row("full-step-graphs", "uniform M=3", 0.4, 0.8995, 1.0),  # 89.95 %: not counted, not shown as 90 %
            row("full-step-graphs", "DeepCache N=2", 0.2, 2.4, None, peer=True),
            {"model": "dit-xl-2", "images": 8, "mode": "full-step-graphs", "variant": "taylor2", "error": "OOM"},
            row("eager", "none", 1.57, 1.0, 1.0)]
    reports = [("g.json", {"suite": "gpu-speed", "device": "NVIDIA H100 80GB HBM3", "timing": {}, "rows": rows}),
               ("old.json", {"suite": "gpu-speed", "device": "NVIDIA H200", "rows": [row("eager", "none", 2, 1, 1)]}),
               ("small.json", {"suite": "gpu-speed", "device": "cpu", "small": True, "rows": rows}),
               ("q.json", {"suite": "quality-vs-latency", "models": {}})]
    text = "\n".join(execution_modes_table(reports))
    lines = [ln for ln in text.splitlines() if ln.startswith("| NVIDIA")]
    assert lines == [
        "| NVIDIA H100 80GB HBM3 | dit-xl-2 | 8 | eager | 1.570 s | – | – | – | – | – | `g.json` |",
        "| NVIDIA H100 80GB HBM3 | dit-xl-2 | 8 | full-step-graphs | 0.480 s (3.3× eager) | 1.20× (100 %) "
        "| 1.30× (88 %) | 0.90× (89.9 %) | 1.53× (90 %) | 2 of 4 | `g.json` |",
        "| NVIDIA H200 | dit-xl-2 | 8 | eager | 2.000 s | – | – | – | – | – | `old.json` (earlier timing) |"]
    assert "DeepCache" not in text and "cpu" not in text
    assert execution_modes_table([("q.json", {"suite": "quality-vs-latency", "models": {}})]) == []
