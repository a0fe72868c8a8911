"""Recordings and stores under bad input and faults (issue 16): nothing lost, nothing silently wrong.

Every case asserts the message the user gets and, where data was there before, that it is byte for byte the same
afterwards. Small shapes: the random tiny-dit, 2 of its blocks, 3 steps, on one thread (the machine is shared).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from workbench.analysis.reading import read_maps, read_stats
from workbench.analysis.report import analyze_store
from workbench.app import runs as app_runs
from workbench.record.plan import BudgetError
from workbench.record.recorder import record_run
from workbench.record.store import FeatureStore, OutDirError, StoreError, check_out_dir, delete_run, list_runs

BLOCKS = ["transformer_blocks.0", "transformer_blocks.1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _record(pipe, out, steps=3, **kw):
    kw.setdefault("reduction", "pool16")
    return record_run(pipe, "tiny-dit(random)", out, labels=[0, 3], seeds=[1, 2], steps=steps, blocks=BLOCKS, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory, random_dit_pipe):
    """One sound 3-step run; tests tamper with copies of it."""
    return _record(random_dit_pipe, tmp_path_factory.mktemp("base") / "run")


@pytest.fixture
def run(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes (to compare before/after)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- recording never replaces or deletes what it did not make ------------------------------------------------------
def test_an_earlier_run_is_refused_naming_overwrite_and_kept(run, random_dit_pipe):
    before = snapshot(run)
    with pytest.raises(OutDirError, match=r"already holds a recorded run \(tiny-dit\(random\)\);.*--overwrite"):
        _record(random_dit_pipe, run, steps=2)
    assert snapshot(run) == before


def test_overwrite_replaces_only_the_runs_own_files(run, random_dit_pipe):
    (run / "notes.txt").write_text("my notes")
    (run / "mine").mkdir()
    (run / "mine" / "data.bin").write_bytes(b"\x00\x01")
    (run / ".manifest-leftover.json").write_text("{")  # a temporary a hard kill left: the run's own
    _record(random_dit_pipe, run, steps=2, overwrite=True)
    assert (run / "notes.txt").read_text() == "my notes" and (run / "mine" / "data.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in run.iterdir()) == ["arrays.zarr", "manifest.json", "mine", "notes.txt"]
    assert not (run / ".manifest-leftover.json").exists()
    store = FeatureStore.open(run)
    assert store.complete and store.steps_done == 2 and store.manifest["steps"] == 2
    assert store.features(BLOCKS[0]).shape[0] == 2 and zarr.open_array(str(run / "arrays.zarr/latents")).shape[0] == 2


def test_an_overwrite_that_stops_leaves_the_earlier_run_as_it_was(run, random_dit_pipe):
    """``--overwrite`` records beside the earlier run and replaces it only once complete: stopped at step 1 (Ctrl-C,
    a crash), the earlier run is byte for byte what it was, and nothing of the new one is left in its folder."""
    before = snapshot(run)
    calls = []

    def stop() -> bool:  # the recorder asks between steps; at its second question, stop as Ctrl-C does
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        _record(random_dit_pipe, run, steps=3, overwrite=True, cancel=stop)
    assert len(calls) == 2 and snapshot(run) == before  # nothing of the new run left in it either


def test_a_killed_overwrite_is_not_listed_and_the_next_one_clears_it(run, random_dit_pipe):
    """``kill -9`` during ``record --overwrite`` leaves its ``.new-PID`` folder inside the run: ``runs`` does not list
    it as a run of its own, and the next overwrite removes it with the earlier run."""
    stale = run / ".new-999999999"  # no process has this id
    shutil.copytree(run / "arrays.zarr", stale / "arrays.zarr")
    shutil.copy(run / "manifest.json", stale / "manifest.json")
    assert [r["path"] for r in list_runs(run.parent)] == [str(run)]
    _record(random_dit_pipe, run, steps=2, overwrite=True)
    assert not stale.exists() and FeatureStore.open(run).steps_done == 2
    assert sorted(p.name for p in run.iterdir()) == ["arrays.zarr", "manifest.json"]


def test_a_folder_of_other_files_is_refused_even_with_overwrite(tmp_path, random_dit_pipe):
    out = tmp_path / "mine"
    (out / "arrays.zarr").mkdir(parents=True)
    (out / "arrays.zarr" / "keep.txt").write_text("user data")
    (out / "manifest.json").write_text(json.dumps({"format": "someone-else"}))
    before = snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(OutDirError, match=r"is not empty and not a recorded run \(it holds arrays.zarr, "
                                              r"manifest.json\)"):
            _record(random_dit_pipe, out, overwrite=overwrite)
    assert snapshot(out) == before


def test_an_out_that_is_a_file_is_refused(tmp_path, random_dit_pipe):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutDirError, match=r"f is a file, not a folder"):
        _record(random_dit_pipe, tmp_path / "f")
    with pytest.raises(OutDirError, match=r"cannot make .*f/run: .*f is a file, not a folder"):
        _record(random_dit_pipe, tmp_path / "f" / "run")
    assert (tmp_path / "f").read_text() == "x"


def test_two_recorders_never_share_a_store(tmp_path, random_dit_pipe, monkeypatch):
    """The race the folder check cannot see (another recording claimed the folder a moment after it was checked):
    the store folder is claimed with mkdir, which fails when it exists, and nothing in it is touched."""
    import workbench.record.recorder as recorder

    out = tmp_path / "raced"
    (out / "arrays.zarr").mkdir(parents=True)
    (out / "arrays.zarr" / "zarr.json").write_text("the other recording's")
    monkeypatch.setattr(recorder, "check_out_dir", lambda *a, **k: False)  # as if checked before the other began
    with pytest.raises(OutDirError, match=r"arrays.zarr already exists: another recording is writing into"):
        _record(random_dit_pipe, out)
    assert snapshot(out) == {"arrays.zarr/zarr.json": b"the other recording's"}


def test_refusals_leave_nothing_behind(tmp_path, random_dit_pipe):
    with pytest.raises(BudgetError, match=r"the disk budget is 0.0 MiB"):
        _record(random_dit_pipe, tmp_path / "new" / "deeper", disk_budget=1000)
    with pytest.raises(ValueError, match=r"steps 5000 is more than the scheduler's 1000 training timesteps"):
        _record(random_dit_pipe, tmp_path / "new" / "deeper", steps=5000)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BudgetError):
        _record(random_dit_pipe, tmp_path / "empty", disk_budget=1000)
    assert list((tmp_path / "empty").iterdir()) == []  # the user's empty folder stays, empty


def test_app_run_folders_are_unique_and_recording_into_one_works(tmp_path, random_dit_pipe):
    a, b, c = (app_runs.run_folder(tmp_path / "runs", "tiny-dit", "ring", "20260101-120000") for _ in range(3))
    assert [p.name for p in (a, b, c)] == ["tiny-dit-ring-20260101-120000", "tiny-dit-ring-20260101-120000-2",
                                           "tiny-dit-ring-20260101-120000-3"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in (a, b, c))
    app_runs.record(random_dit_pipe, "tiny-dit", a, [0], 2, "ddim", "stats", blocks=BLOCKS, labels=[1])
    assert FeatureStore.open(a).complete and FeatureStore.open(a).steps_done == 2
    with pytest.raises(BudgetError):  # a refusal removes the (empty) folder it was given
        app_runs.record(random_dit_pipe, "tiny-dit", b, [0], 2, "ddim", "full", labels=[1], disk_budget=10)
    assert not b.exists()
    assert [r["status"] for r in list_runs(tmp_path / "runs")] == ["complete"]  # the empty c is no run


def test_delete_run_keeps_other_files(run, base, tmp_path):
    (run / "notes.txt").write_text("keep me")
    delete_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and (run / "notes.txt").read_text() == "keep me"
    alone = tmp_path / "alone"
    shutil.copytree(base, alone)
    delete_run(alone)
    assert not alone.exists()  # nothing else was in it: the folder goes too


# ---- stores verify themselves ----------------------------------------------------------------------------------------
def test_the_manifest_records_what_each_flush_wrote(base):
    m = FeatureStore.open(base).manifest
    assert m["version"] == 2 and m["written"]["steps"] == m["steps_done"] == 3
    # one chunk per step and CFG half for the maps, ten steps per chunk for the rest
    assert m["written"]["chunks"] == {"stats/cosine": 1, "stats/rel_l1": 1, "features/0": 6, "features/1": 6,
                                      "denoiser_output": 1, "latents": 1}
    codecs = zarr.open_array(str(base / "arrays.zarr/features/0")).metadata.codecs
    assert [type(c).__name__ for c in codecs] == ["BytesCodec", "Crc32cCodec"]


def test_a_missing_chunk_names_the_block_and_step_never_zeros(run):
    shutil.rmtree(run / "arrays.zarr/features/0/c/2")  # step 2 of block 0, both CFG halves
    msg = r"is damaged: block transformer_blocks.0 \(features/0\) has no data for step\(s\) 2 \(chunk files missing\)"
    with pytest.raises(StoreError, match=msg):
        FeatureStore.open(run)
    store = FeatureStore.open(run, allow_damaged=True)
    assert store.damage == ["block transformer_blocks.0 (features/0) has no data for step(s) 2 (chunk files missing)"]
    for read in (lambda: store.features(BLOCKS[0]), lambda: read_maps(store, BLOCKS[0], True)):
        with pytest.raises(StoreError, match=r"features/0\) has no data for step\(s\) 2"):
            read()
    assert np.isfinite(store.features(BLOCKS[1])).all()  # the rest still reads
    row = list_runs(run.parent)[0]
    assert row["status"] == "damaged" and "step(s) 2" in row["reason"]


def test_one_missing_half_chunk_and_a_missing_stats_chunk(run):
    (run / "arrays.zarr/features/1/c/1/1/0/0/0").unlink()  # step 1, conditional half only
    (run / "arrays.zarr/stats/rel_l1/c/0/0/0").unlink()
    with pytest.raises(StoreError) as exc:
        FeatureStore.open(run)
    assert "stats/rel_l1 has no data for step(s) 0-2" in str(exc.value)
    assert "block transformer_blocks.1 (features/1) has no data for step(s) 1" in str(exc.value)


def test_a_chunk_that_vanishes_after_opening_is_an_error_not_zeros(run):
    store = FeatureStore.open(run)
    (run / "arrays.zarr/features/0/c/1/1/0/0/0").unlink()
    with pytest.raises(StoreError, match=r"block transformer_blocks.0 \(features/0\) has no data for step 1 \(its "
                                         r"chunk file 0 is missing\): the run is damaged"):
        read_maps(store, BLOCKS[0], cond=True)


def test_a_corrupt_chunk_raises_when_read_naming_block_and_step(run, base):
    chunk = run / "arrays.zarr/features/1/c/1/1/0/0/0"  # step 1, conditional half (the pipeline's second)
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    store = FeatureStore.open(run)  # the cheap check sees every chunk present
    with pytest.raises(StoreError, match=r"block transformer_blocks.1 \(features/1\) is corrupt at step\(s\) 1 "
                                         r"\(ValueError: Stored and computed checksum do not match"):
        store.features(BLOCKS[1], cond=None)
    with pytest.raises(StoreError, match=r"block transformer_blocks.1 \(features/1\) is corrupt at step 1: its chunk "
                                         r"fails its crc32c checksum"):
        read_maps(store, BLOCKS[1], cond=True)  # the fast chunk-file reader
    # the other half's chunks are sound and read (FeatureStore.features reads both halves, so it cannot)
    np.testing.assert_array_equal(read_maps(store, BLOCKS[1], cond=False),
                                  FeatureStore.open(base).features(BLOCKS[1], cond=False))
    with pytest.raises(StoreError, match="corrupt at step 1"):
        analyze_store(store)  # an error, not a note and not numbers


def test_a_corrupt_stats_chunk_raises_in_analysis(run):
    chunk = run / "arrays.zarr/stats/cosine/c/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"abc")
    store = FeatureStore.open(run)
    with pytest.raises(StoreError, match=r"stats/cosine is corrupt at step\(s\) 0-2"):
        read_stats(store)
    with pytest.raises(StoreError, match=r"stats/cosine is corrupt"):
        store.stats(BLOCKS[0])


@pytest.mark.parametrize("path,message", [
    ("arrays.zarr/stats", r"stats/cosine is missing; stats/rel_l1 is missing"),
    ("arrays.zarr/features/1", r"block transformer_blocks.1 \(features/1\) is missing"),
    ("arrays.zarr/latents", r"is damaged: latents is missing"),
    ("arrays.zarr", r"has a manifest but no arrays.zarr"),
])
def test_a_missing_array_is_one_store_error(run, path, message):
    shutil.rmtree(run / path)
    with pytest.raises(StoreError, match=message):
        FeatureStore.open(run)


def _edit(run: Path, change) -> None:
    m = json.loads((run / "manifest.json").read_text())
    change(m)
    (run / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("cfg"), r"not a valid run manifest: no 'cfg'"),
    (lambda m: m.update(steps_done="3"), r"'steps_done' is not an integer \(str\)"),
    (lambda m: m.update(steps_done=2.5), r"'steps_done' is not an integer \(float\)"),
    (lambda m: m.update(steps_done=99), r"steps_done 99 is not between 0 and steps \(3\)"),
    (lambda m: m.update(steps_done=3, recorded_timesteps=[1, 2]),
     r"steps_done is 3 but only 2 timesteps were recorded \(the manifest was altered\)"),
    (lambda m: m.update(steps_done=5, recorded_timesteps=[1] * 5, steps=5, timesteps=[1] * 5, complete=False),
     r"steps_done is 5 but the write record says only 3 steps were written"),
    (lambda m: m.update(steps_done=2), r"complete, but 2 of 3 steps done"),
    (lambda m: m.update(blocks="all"), r"'blocks' is not a list"),
    (lambda m: m.update(cfg={"layout": "sideways", "images": 2, "batch": 4}), r"cfg.layout is 'sideways'"),
    (lambda m: m.update(version=9), r"unsupported run format version 9"),
    (lambda m: m["written"].pop("chunks"), r"no valid 'written' record"),
])
def test_a_manifest_that_cannot_be_trusted_is_one_store_error(run, change, message):
    _edit(run, change)
    with pytest.raises(StoreError, match=message):
        FeatureStore.open(run)
    row = list_runs(run.parent)[0]
    assert row["status"] == "broken" and row["steps"] is None
    assert row["reason"].startswith(f"{run / 'manifest.json'}") and "\n" not in row["reason"]


def test_a_tampered_steps_done_is_not_believed_even_when_the_manifest_agrees_with_itself(tmp_path, random_dit_pipe):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3  # stop at the 4th of 6 steps: 3 done

    with pytest.raises(KeyboardInterrupt):
        _record(random_dit_pipe, tmp_path / "cut", steps=6, cancel=cancel)
    cut = tmp_path / "cut"
    assert FeatureStore.open(cut).steps_done == 3
    _edit(cut, lambda m: m.update(steps_done=2))  # fewer steps than written: a prefix that is there, read as such
    assert FeatureStore.open(cut).features(BLOCKS[0]).shape[0] == 2
    _edit(cut, lambda m: m.update(steps_done=3))

    def claim_five(m):
        m.update(steps_done=5, recorded_timesteps=m["timesteps"][:5])
        m["written"]["steps"] = 5

    _edit(cut, claim_five)
    with pytest.raises(StoreError, match=r"features/0\): the manifest records 6 chunks written, but 5 steps need 10"):
        FeatureStore.open(cut)
    _edit(cut, lambda m: m["written"]["chunks"].update({"features/0": 10, "features/1": 10}))
    with pytest.raises(StoreError, match=r"features/0\) has no data for step\(s\) 3-4 \(chunk files missing\)"):
        FeatureStore.open(cut)


@pytest.mark.parametrize("content,message", [
    (b"[1, 2, 3]", r"not a workbench run manifest \(a JSON list, not an object\)"),
    (b"\xff\xfe\x00garbage", r"is not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, r"nested too deeply|not valid JSON"),
    (b'{"format": "frdiff-workbench-run"', r"is not valid JSON"),
])
def test_unreadable_manifests_are_listed_as_broken_and_the_listing_goes_on(run, base, content, message):
    good = run.parent / "good"
    shutil.copytree(base, good)
    (run / "manifest.json").write_bytes(content)
    with pytest.raises(StoreError, match=message):
        FeatureStore.open(run)
    rows = {Path(r["path"]).name: r for r in list_runs(run.parent)}
    assert rows["good"]["status"] == "complete"
    assert rows["run"]["status"] == "broken" and rows["run"]["reason"]
    assert set(rows["run"]) == set(rows["good"])  # the same keys: tables and pickers take every row


def test_a_sharded_manifest_pointing_outside_is_refused(tmp_path):
    (tmp_path / "top").mkdir()
    top = {"format": "frdiff-workbench-run", "version": 2, "sharded": True, "complete": True, "failed": [],
           "parts": [{"path": "../../etc", "rank": 0, "seeds": [0]}]}
    (tmp_path / "top" / "manifest.json").write_text(json.dumps(top))
    with pytest.raises(StoreError, match=r"parts\[0\] is not a part \(path part-NNNNN, rank, seeds\)"):
        FeatureStore.open(tmp_path / "top")


def test_a_version_1_store_still_opens_and_is_checked(run):
    """A store as written before checksums: no crc32c codec, no write record, chunks of the fill value skipped."""
    root = zarr.open_group(str(run / "arrays.zarr"), mode="r")
    old = run.parent / "v1"
    arrays = {k: root[k][:] for k in ("stats/cosine", "stats/rel_l1", "features/0", "features/1", "denoiser_output",
                                      "latents")}
    chunks = {k: root[k].chunks for k in arrays}
    new = zarr.open_group(str(old / "arrays.zarr"), mode="w-")
    for k, v in arrays.items():
        kw = {"compressors": None} if k.startswith("features/") else {}
        new.create_array(k, shape=v.shape, chunks=chunks[k], dtype=v.dtype, **kw)[:] = v
    m = json.loads((run / "manifest.json").read_text())
    m["version"] = 1
    m.pop("written")
    (old / "manifest.json").write_text(json.dumps(m))
    store = FeatureStore.open(old)
    assert store.damage == [] and store.steps_done == 3
    np.testing.assert_array_equal(read_maps(store, BLOCKS[0], True), arrays["features/0"][:, 2:])
    np.testing.assert_array_equal(read_stats(store, None)["rel_l1"], arrays["stats/rel_l1"])
    shutil.rmtree(old / "arrays.zarr/features/0/c/1")
    with pytest.raises(StoreError, match=r"features/0\) has no data for step\(s\) 1"):
        FeatureStore.open(old)


def test_check_out_dir_verdicts(tmp_path, run):
    assert check_out_dir(tmp_path / "absent") is False
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty") is False
    assert check_out_dir(run, overwrite=True) is True
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "part-00001").mkdir()  # each rank checks its own part folder
    assert check_out_dir(tmp_path / "sharded", sharded=True) is False
    with pytest.raises(OutDirError, match="not empty and not a recorded run"):
        check_out_dir(tmp_path / "sharded")


def test_a_damaged_part_makes_a_sharded_run_damaged_not_smaller(tmp_path, base):
    top = tmp_path / "sharded"
    for rank in (0, 1):
        shutil.copytree(base, top / f"part-{rank:05d}")
    m = json.loads((base / "manifest.json").read_text())
    manifest = {"format": "frdiff-workbench-run", "version": 2, "sharded": True, "world_size": 2, "complete": True,
                "failed": [], "model": m["model"], "created": m["created"],
                "parts": [{"path": f"part-{r:05d}", "rank": r, "seeds": m["seeds"]} for r in (0, 1)]}
    (top / "manifest.json").write_text(json.dumps(manifest))
    store = FeatureStore.open(top)
    assert store.complete and store.latents().shape[1] == 4
    shutil.rmtree(top / "part-00001/arrays.zarr/features/1/c/0")
    with pytest.raises(StoreError, match=r"sharded is damaged: part-00001: block transformer_blocks.1 \(features/1\) "
                                         r"has no data for step\(s\) 0"):
        FeatureStore.open(top)
    assert [r["status"] for r in list_runs(tmp_path)] == ["damaged"]  # the run once, not its parts
    shutil.rmtree(top / "part-00001")  # a part its rank never wrote: left out, the run incomplete
    store = FeatureStore.open(top)
    assert not store.complete and store.manifest["missing_seeds"] == m["seeds"] and store.latents().shape[1] == 2
