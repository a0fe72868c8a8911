import numpy as np
import pytest
import torch

from workbench.models.data import CLASSES, IMAGE_SIZE, class_index, make_shapes, to_uint8


def test_deterministic_from_seed():
    a, b = make_shapes(64, seed=7), make_shapes(64, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = make_shapes(64, seed=8)
    assert not torch.equal(a.images, c.images)


def test_shape_range_and_classes():
    batch = make_shapes(600, seed=0)
    assert batch.images.shape == (600, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.images.dtype == torch.float32
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    counts = torch.bincount(batch.labels, minlength=len(CLASSES))
    assert len(CLASSES) >= 6 and (counts > 50).all()


def test_requested_labels_are_used():
    labels = [i % len(CLASSES) for i in range(12)]
    batch = make_shapes(12, seed=3, labels=labels)
    assert batch.labels.tolist() == labels
    with pytest.raises(ValueError, match="labels"):
        make_shapes(3, seed=0, labels=[0, 1])
    with pytest.raises(ValueError, match="0..5"):
        make_shapes(2, seed=0, labels=[0, 9])


def test_shapes_differ_by_class_on_the_same_background():
    # Same seed → same background, colours, position; only the class changes: the masks must differ.
    imgs = [make_shapes(1, seed=11, labels=[c]).images for c in range(len(CLASSES))]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert (imgs[i] - imgs[j]).abs().amax() > 0.2, (CLASSES[i], CLASSES[j])


def test_both_frequency_bands_present():
    # Backgrounds carry texture: the mean high-frequency power must be a real share of the total.
    img = make_shapes(256, seed=2).images.mean(1).numpy()
    spec = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean((1, 2), keepdims=True)), axes=(1, 2))) ** 2
    yy, xx = np.mgrid[-16:16, -16:16]
    radius = np.hypot(yy, xx)
    high = spec[:, radius > 8].sum() / spec.sum()
    assert 0.05 < high < 0.9


def test_class_index_and_uint8():
    assert class_index("circle") == 0 and class_index("STAR") == 5 and class_index(2) == 2 and class_index("3") == 3
    with pytest.raises(ValueError, match="unknown class"):
        class_index("hexagon")
    with pytest.raises(ValueError, match="out of range"):
        class_index(6)
    u = to_uint8(torch.tensor([[[[-1.0]], [[0.0]], [[1.0]]]]))
    assert u.shape == (1, 1, 1, 3) and u.flatten().tolist() == [0, 128, 255]
