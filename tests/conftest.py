import pytest
import torch

from workbench.models.zoo import build_pipeline, embedded_path, load_pipeline

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """Every test that is skipped without CUDA (its skipif reason names CUDA) is marked ``gpu``, so the GPU machine
    runs them all with ``pytest -m gpu`` (``scripts/device_issue19.sh``), not those a name filter happens to catch."""
    for item in items:
        if any("CUDA" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def random_unet_pipe():
    """A randomly initialised tiny-unet pipeline (architecture only, no trained weights)."""
    return build_pipeline("tiny-unet", seed=0)


@pytest.fixture(scope="session")
def random_dit_pipe():
    return build_pipeline("tiny-dit", seed=0)


def _shipped(name: str):
    if not (embedded_path(name) / "model_index.json").exists():
        pytest.fail(f"shipped weights for {name} are missing from the checkout")
    return load_pipeline(name)


@pytest.fixture(scope="session")
def unet_pipe():
    """The shipped tiny-unet (trained weights)."""
    return _shipped("tiny-unet")


@pytest.fixture(scope="session")
def dit_pipe():
    return _shipped("tiny-dit")
