import json

import numpy as np
import pytest
import torch

from frdiff.blocks import capture_denoiser_call
from workbench.record.plan import REDUCTIONS, BudgetError, reduce_map
from workbench.record.recorder import adjacent_stats, record_run
from workbench.record.store import FeatureStore, StoreError, delete_run, list_runs


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, random_unet_pipe):
    out = tmp_path_factory.mktemp("runs") / "full"
    record_run(random_unet_pipe, "tiny-unet(random)", out, labels=[1, 4], seeds=[3, 8], steps=4, reduction="full",
               guidance_scale=3.0)
    return FeatureStore.open(out)


def _hook_count(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_manifest_describes_the_run(full_run):
    m = full_run.manifest
    assert full_run.complete and full_run.steps_done == 4
    assert m["scheduler"]["name"] == "ddim" and m["steps"] == 4 and m["seeds"] == [3, 8]
    assert m["conditions"] == [1, 4] and m["guidance_scale"] == 3.0
    assert m["cfg"] == {"layout": "uncond_first", "images": 2, "batch": 4}
    assert m["timesteps"] == m["recorded_timesteps"] == full_run.timesteps
    assert {"torch", "diffusers", "zarr"} <= set(m["versions"]) and m["dtype"] == "float32"
    assert len(full_run.blocks) == 18


def test_size_estimate_is_the_arrays_uncompressed_size(full_run):
    import zarr

    root = zarr.open_group(str(full_run.directory / "arrays.zarr"), mode="r")
    nbytes = 0
    for _, array in root.arrays():
        nbytes += array.nbytes
    for _, group in root.groups():
        nbytes += sum(a.nbytes for _, a in group.arrays())
    assert nbytes == full_run.manifest["estimate_bytes"]


def test_recorded_features_equal_a_manual_forward(full_run, random_unet_pipe):
    """Replay step 2: feed the recorded denoiser input through the UNet and grab one block by hand."""
    pipe = random_unet_pipe
    step = 2
    latents = torch.from_numpy(full_run.latents()[step])
    t = full_run.timesteps[step]
    labels = torch.tensor([pipe.null_class] * 2 + [1, 4])
    block = "up_blocks.1.attentions.0"
    grabbed = {}
    module = dict(pipe.unet.named_modules())[block]
    def grab(_m, _a, out):
        grabbed["out"] = out[0]  # Transformer2DModel inside a UNet block returns (sample,)

    handle = module.register_forward_hook(grab)
    try:
        with torch.no_grad():
            eps = pipe.denoise(torch.cat([latents, latents]), torch.tensor(t), labels)
    finally:
        handle.remove()
    recorded = full_run.features(block, cond=None)[step]
    np.testing.assert_allclose(recorded, grabbed["out"].numpy(), atol=1e-5)
    np.testing.assert_allclose(full_run.denoiser_output(cond=None)[step], eps.numpy(), atol=1e-5)


def test_cfg_halves_are_the_right_halves(full_run):
    both = full_run.features("mid_block.resnets.0", cond=None)
    cond = full_run.features("mid_block.resnets.0", cond=True)
    uncond = full_run.features("mid_block.resnets.0", cond=False)
    np.testing.assert_array_equal(uncond, both[:, :2])  # the pipeline batches [uncond, cond]
    np.testing.assert_array_equal(cond, both[:, 2:])
    assert not np.allclose(cond, uncond)


def test_streaming_stats_match_stored_maps(full_run):
    block = "down_blocks.1.resnets.0"
    maps = full_run.features(block, cond=None)
    stats = full_run.stats(block, cond=None)
    assert np.isnan(stats["cosine"][0]).all()
    for s in range(1, 4):
        a, b = maps[s].reshape(4, -1), maps[s - 1].reshape(4, -1)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        rel = np.abs(a - b).sum(1) / np.abs(b).sum(1)
        np.testing.assert_allclose(stats["cosine"][s], cos, rtol=1e-4)
        np.testing.assert_allclose(stats["rel_l1"][s], rel, rtol=1e-4)


def test_adjacent_stats_hand_values():
    x = torch.randn(3, 5, 4, 4)
    cos, rel = adjacent_stats(x, x.clone())
    assert torch.allclose(cos, torch.ones(3)) and torch.equal(rel, torch.zeros(3))
    cos, rel = adjacent_stats(2 * x, x)
    assert torch.allclose(cos, torch.ones(3)) and torch.allclose(rel, torch.ones(3))
    cos, _ = adjacent_stats(-x, x)
    assert torch.allclose(cos, -torch.ones(3))


def test_reductions():
    x = torch.arange(2 * 8 * 32 * 32, dtype=torch.float32).reshape(2, 8, 32, 32)
    pooled = reduce_map(x, REDUCTIONS["pool16"])
    assert pooled.shape == (2, 8, 16, 16) and pooled.dtype == torch.float16
    assert torch.allclose(pooled[0, 0, 0, 0].float(), x[0, 0, :2, :2].mean(), rtol=1e-3)
    tokens = torch.randn(2, 64, 12)  # DiT-style [batch, tokens, width] on an 8×8 grid
    assert reduce_map(tokens, REDUCTIONS["full"]).shape == (2, 12, 8, 8)


def test_stats_only_run_has_no_maps(tmp_path, random_dit_pipe):
    before = random_dit_pipe.scheduler
    out = record_run(random_dit_pipe, "tiny-dit(random)", tmp_path / "s", labels=[0], steps=3, reduction="stats",
                     scheduler="dpmpp")
    store = FeatureStore.open(out)
    assert store.manifest["scheduler"]["name"] == "dpmpp" and store.complete
    assert random_dit_pipe.scheduler is before  # the pipeline's own scheduler is back
    with pytest.raises(StoreError, match="statistics only"):
        store.features(store.blocks[0])
    assert store.stats(store.blocks[0])["cosine"].shape == (3, 1)


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_other_schedulers_record_every_step(tmp_path, random_dit_pipe, scheduler):
    out = record_run(random_dit_pipe, "dit", tmp_path / scheduler, labels=[2], steps=3, reduction="stats",
                     scheduler=scheduler)
    store = FeatureStore.open(out)
    assert store.complete and store.steps_done == 3 and store.timesteps == store.manifest["recorded_timesteps"]


def test_over_budget_refused_before_sampling(tmp_path, random_unet_pipe):
    calls = []
    handle = random_unet_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(BudgetError, match=r"would fit: --reduce stats"):
            record_run(random_unet_pipe, "u", tmp_path / "b", labels=[0], steps=10, reduction="full",
                       disk_budget=2 * 2**20)
    finally:
        handle.remove()
    assert len(calls) == 2  # planning only: the aborted call that captures inputs and the discovery forward
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_memory_budget_names_the_fix(tmp_path, random_dit_pipe):
    with pytest.raises(BudgetError, match=r"device memory .* record fewer blocks"):
        record_run(random_dit_pipe, "d", tmp_path / "m", labels=[0], steps=2, reduction="stats",
                   memory_budget=1024)
    out = record_run(random_dit_pipe, "d", tmp_path / "m", labels=[0], steps=2, reduction="stats",
                     blocks=["transformer_blocks.0"], memory_budget=2 * 2 * 256 * 128 * 4)
    assert FeatureStore.open(out).blocks == ["transformer_blocks.0"]


def test_interrupted_run_is_readable_and_incomplete(tmp_path, random_unet_pipe):
    out = tmp_path / "cut"
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3  # stop at the 4th step

    with pytest.raises(KeyboardInterrupt):
        record_run(random_unet_pipe, "u", out, labels=[0, 5], steps=6, reduction="pool16", cancel=cancel)
    store = FeatureStore.open(out)
    assert not store.complete and store.steps_done == 3
    assert store.features(store.blocks[0]).shape[0] == 3 and len(store.timesteps) == 3
    assert "KeyboardInterrupt" in store.manifest["error"]
    assert _hook_count(random_unet_pipe.unet) == 0
    assert [r["status"] for r in list_runs(tmp_path)] == ["incomplete"]


def test_hooks_removed_after_a_failed_run(tmp_path, random_unet_pipe):
    unet = random_unet_pipe.unet
    assert _hook_count(unet) == 0
    calls = {"n": 0}

    def fail_on_third_call(_m, _a, _o):  # call 1 is planning, calls 2.. are sampling steps
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")

    handle = unet.mid_block.register_forward_hook(fail_on_third_call)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            record_run(random_unet_pipe, "u", tmp_path / "f", labels=[0], steps=4, reduction="stats")
    finally:
        handle.remove()
    assert _hook_count(unet) == 0
    store = FeatureStore.open(tmp_path / "f")
    assert not store.complete and store.steps_done == 1 and "boom" in store.manifest["error"]


def test_capture_and_store_errors(tmp_path, random_dit_pipe):
    args, kwargs = capture_denoiser_call(random_dit_pipe, lambda: random_dit_pipe([1], num_inference_steps=3))
    assert args[0].shape == (2, 3, 32, 32) and kwargs["class_labels"].tolist() == [6, 1]
    with pytest.raises(StoreError, match="manifest.json is missing"):
        FeatureStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StoreError, match="not a workbench run"):
        FeatureStore.open(tmp_path)
    with pytest.raises(StoreError, match="not a recorded run; not deleting"):
        delete_run(tmp_path / "nothing")
