import pytest
import torch

from workbench.models.zoo import build_pipeline, embedded_path, load_pipeline

torch.set_num_threads(2)


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
