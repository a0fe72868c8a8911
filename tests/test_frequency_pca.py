import numpy as np
import pytest

from workbench.analysis.frequency import (
    band_energy,
    error_spectrum,
    predicted_x0,
    radial_spectrum,
    spectra_over_time,
)
from workbench.analysis.pca import pca_images


@pytest.mark.parametrize("freq", [2, 5, 11])
def test_sinusoid_peaks_at_its_frequency(freq):
    y, x = np.mgrid[0:32, 0:32]
    img = np.sin(2 * np.pi * freq * x / 32) + 0.5 * np.cos(2 * np.pi * freq * y / 32)
    spec = radial_spectrum(img)
    assert spec.shape == (17,)
    assert int(np.argmax(spec)) == freq
    assert spec[freq] > 100 * np.delete(spec, freq).max()


def test_spectrum_is_parseval_consistent_and_vectorised():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 16, 16))
    spec = radial_spectrum(x)
    assert spec.shape == (3, 2, 9)
    np.testing.assert_allclose(spec[1, 0], radial_spectrum(x[1, 0]))
    # DC bin = mean² · H·W
    assert spec[0, 0, 0] == pytest.approx(x[0, 0].mean() ** 2 * 256)


def test_error_spectrum_of_identical_images_is_zero():
    img = np.random.default_rng(1).normal(size=(4, 3, 32, 32))
    assert np.all(error_spectrum(img, img.copy()) == 0)
    assert error_spectrum(img, img * 0.5).sum() > 0


def test_band_energy_and_spectra_over_time():
    y, x = np.mgrid[0:32, 0:32]
    low, high = np.sin(2 * np.pi * 2 * x / 32), np.sin(2 * np.pi * 14 * x / 32)
    bands = band_energy(radial_spectrum(np.stack([low, high])))
    assert bands["low"][0] == pytest.approx(1.0) and bands["high"][1] == pytest.approx(1.0)
    maps = np.stack([np.broadcast_to(low, (2, 3, 32, 32)), np.broadcast_to(high, (2, 3, 32, 32))])
    over_time = spectra_over_time(maps)
    assert over_time.shape == (2, 17) and over_time[0].argmax() == 2 and over_time[1].argmax() == 14


def test_predicted_x0_inverts_the_forward_process():
    rng = np.random.default_rng(2)
    x0, eps = rng.normal(size=(2, 1, 3, 4, 4)), rng.normal(size=(2, 1, 3, 4, 4))
    alphas = np.linspace(0.99, 0.01, 1000)
    t = [900, 100]
    a = alphas[t].reshape(2, 1, 1, 1, 1)
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    np.testing.assert_allclose(predicted_x0(xt, eps, t, alphas), x0, atol=1e-10)


def test_pca_uses_one_basis_for_all_steps():
    rng = np.random.default_rng(3)
    pattern = rng.normal(size=(8, 4, 4))
    maps = np.stack([pattern, pattern, 3 * pattern])  # step 2 is stronger along the same direction
    views = pca_images(maps)
    assert views.shape == (3, 4, 4, 3) and views.min() >= 0 and views.max() <= 1
    np.testing.assert_allclose(views[0], views[1])
    assert not np.allclose(views[0], views[2])  # a re-fitted basis per step would make them equal
    assert pca_images(maps[:, :2]).shape == (3, 4, 4, 3)  # fewer channels than colours


def test_radial_spectrum_matches_plain_numpy_on_random_data():
    img = np.random.default_rng(5).normal(size=(16, 16))
    h = 16
    power = np.abs(np.fft.fft2(img)) ** 2 / (h * h)
    ref = np.zeros(h // 2 + 1)
    counts = np.zeros(h // 2 + 1)
    for y in range(h):
        for x in range(h):
            r = int(np.rint(np.hypot(min(y, h - y), min(x, h - x))))
            if r <= h // 2:
                ref[r] += power[y, x]
                counts[r] += 1
    np.testing.assert_allclose(radial_spectrum(img), ref / counts, rtol=1e-10)
    maps = np.random.default_rng(6).normal(size=(3, 2, 4, 16, 16)).astype(np.float32)
    per_map = radial_spectrum(maps.astype(np.float64))
    np.testing.assert_allclose(spectra_over_time(maps), per_map.mean((1, 2)), rtol=1e-5)


def test_band_energy_hand_values():
    # 7 bins → non-DC bins 1..6 at r = 1/6 … 1: low = bins 1-2, mid = 3-4, high = 5-6.
    spec = np.array([100.0, 1, 1, 2, 2, 3, 1])
    bands = band_energy(spec)
    assert bands["low"] == pytest.approx(0.2) and bands["mid"] == pytest.approx(0.4)
    assert bands["high"] == pytest.approx(0.4)


def test_predicted_x0_other_parameterisations():
    rng = np.random.default_rng(7)
    x0, eps = rng.normal(size=(2, 1, 3, 4, 4)), rng.normal(size=(2, 1, 3, 4, 4))
    alphas = np.linspace(0.99, 0.01, 1000)
    t = [800, 50]
    a = alphas[t].reshape(2, 1, 1, 1, 1)
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    np.testing.assert_allclose(predicted_x0(xt, v, t, alphas, "v_prediction"), x0, atol=1e-10)
    np.testing.assert_allclose(predicted_x0(xt, x0, t, alphas, "sample"), x0)
    with pytest.raises(ValueError, match="prediction_type"):
        predicted_x0(xt, eps, t, alphas, "flow")


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp", "euler"])
def test_final_sample_replays_the_pipeline(tmp_path, random_unet_pipe, scheduler):
    import torch

    from workbench.analysis.report import final_sample, frequency_report, guided_noise
    from workbench.models.schedulers import scheduler_swapped
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    pipe = random_unet_pipe
    store = FeatureStore.open(record_run(pipe, "unet", tmp_path / "r", labels=[1, 4], seeds=[3, 4], steps=4,
                                         reduction="stats", scheduler=scheduler, guidance_scale=2.5))
    with scheduler_swapped(pipe, scheduler):
        gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
        images = pipe([1, 4], num_inference_steps=4, guidance_scale=2.5, generator=gens, output_type="pt").images
    np.testing.assert_allclose(final_sample(store), images.numpy(), atol=1e-5)
    # CFG rebuilt by hand: the batch is [uncond, cond] for this pipeline.
    out = store.denoiser_output(cond=None).astype(np.float64)
    np.testing.assert_allclose(guided_noise(store), out[:, :2] + 2.5 * (out[:, 2:] - out[:, :2]))
    report = frequency_report(store)
    final = report["final"]
    assert final["space"] == "pixel"
    np.testing.assert_allclose(final["spectrum"], radial_spectrum(images.numpy().astype(np.float64)).mean((0, 1)),
                               rtol=1e-4)
    if scheduler == "ddim":  # ε-prediction: x̂0 by hand from the stored inputs and ᾱ of the recorded timesteps
        alphas = pipe.scheduler.alphas_cumprod.double().numpy()
        t = store.manifest["recorded_timesteps"]
        a = alphas[t].reshape(-1, 1, 1, 1, 1)
        x0 = (store.latents() - np.sqrt(1 - a) * guided_noise(store)) / np.sqrt(a)
        np.testing.assert_allclose(report["predicted_x0"]["spectra"], spectra_over_time(x0), rtol=1e-6)


def test_frequency_report_of_an_incomplete_run(tmp_path, random_dit_pipe):
    import json

    from workbench.analysis.report import analyze_store
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore, write_manifest

    run = record_run(random_dit_pipe, "dit", tmp_path / "r", labels=[2], steps=3, reduction="stats")
    store = FeatureStore.open(run)
    manifest = dict(store.manifest, complete=False, steps_done=2)
    write_manifest(run, manifest)
    report = analyze_store(FeatureStore.open(run))
    json.dumps(report, allow_nan=False)
    assert report["frequency"]["final"] is None and any("incomplete" in n for n in report["notes"])
    assert len(report["frequency"]["predicted_x0"]["bands"]["high"]) == 2
    # No finished step, or a scheduler diffusers does not know: reported, no crash.
    write_manifest(run, dict(manifest, steps_done=0))
    empty = analyze_store(FeatureStore.open(run))
    json.dumps(empty, allow_nan=False)
    assert empty["frequency"] is None and empty["blocks"][0]["keyframes"] == 0
    assert empty["blocks"][0]["mean_adjacent_cosine"] is None
    foreign = dict(manifest, scheduler=dict(manifest["scheduler"], **{"class": "MyScheduler"}))
    write_manifest(run, foreign)
    report = analyze_store(FeatureStore.open(run))
    assert report["frequency"] is None and "MyScheduler" in report["notes"][-1]
    from workbench.cli import main

    assert main(["analyze", str(run)]) == 0
