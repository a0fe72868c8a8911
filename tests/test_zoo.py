import shutil
import time

import pytest

from workbench.models.catalog import CLASS_CONDITIONAL, count_parameters
from workbench.models.zoo import ModelLoadError, build_pipeline, embedded_path, load_pipeline


def test_embedded_models_are_small_enough():  # tiny-sd: tests/test_tiny_sd.py (each weights file ≤ 8 MB)
    for name in CLASS_CONDITIONAL:
        assert count_parameters(name) <= 8_000_000
        pipe = build_pipeline(name)  # the count read from the weights' headers is the architecture's
        built = sum(p.numel() for m in (pipe.denoiser, pipe.class_encoder) if m is not None for p in m.parameters())
        assert count_parameters(name) == built
        weights = list(embedded_path(name).rglob("*.safetensors"))
        assert weights, f"{name} ships no safetensors"
        assert sum(w.stat().st_size for w in weights) <= 8 * 1024 * 1024
        assert not list(embedded_path(name).rglob("*.bin"))


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="unknown model 'no such model'.*tiny-unet"):
        load_pipeline("no such model")


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a diffusers model folder"):
        load_pipeline(str(f))


@pytest.fixture()
def unet_copy(tmp_path):
    dst = tmp_path / "tiny-unet"
    shutil.copytree(embedded_path("tiny-unet"), dst)
    return dst


def test_local_folder_loads(unet_copy):
    pipe = load_pipeline(str(unet_copy))
    assert type(pipe).__name__ == "ShapesPipeline" and pipe.unet is not None


def test_corrupt_weights_file_is_named(unet_copy):
    weights = unet_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="corrupt or not a safetensors file") as info:
        load_pipeline(str(unet_copy))
    assert "unet/diffusion_pytorch_model.safetensors" in str(info.value)


def test_missing_component_folder(unet_copy):
    shutil.rmtree(unet_copy / "class_encoder")
    with pytest.raises(ModelLoadError, match="component 'class_encoder' but the folder .* is missing"):
        load_pipeline(str(unet_copy))


def test_missing_weights_refused_not_pickled(unet_copy):
    (unet_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (unet_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        load_pipeline(str(unet_copy))


def test_missing_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_pipeline(str(tmp_path / "empty"))


def test_unreachable_hub_fails_fast(monkeypatch):
    # No hub is reachable from CI; where one is, the id does not exist. Either way: one clear error, quickly.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="'frdiff-workbench-tests/does-not-exist' is not an embedded model"):
        load_pipeline("frdiff-workbench-tests/does-not-exist")
    assert time.monotonic() - start < 30


def test_offline_mode_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="loading it from the hub failed"):
        load_pipeline("frdiff-workbench-tests/does-not-exist")
