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
