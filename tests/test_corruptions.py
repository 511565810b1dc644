import pytest
import torch

from patchshift.core.common.errors import ConfigError
from patchshift.core.evaluation.corruptions import CORRUPTIONS, corrupt, disk_kernel


@pytest.fixture
def images():
    return torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_and_in_range(images, name):
    a = corrupt(images, name, 3, seed=7)
    b = corrupt(images, name, 3, seed=7)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == images.shape


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_stronger_with_severity(images, name):
    changes = [(corrupt(images, name, s, seed=0) - images).abs().mean().item() for s in range(1, 6)]
    assert all(b > a for a, b in zip(changes, changes[1:], strict=False)), changes


def test_noise_depends_on_seed(images):
    assert not torch.equal(
        corrupt(images, "gaussian_noise", 1, seed=0), corrupt(images, "gaussian_noise", 1, seed=1)
    )


def test_brightness_by_hand():
    pixel = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    # severity 1 adds 0.1 to V = 0.6: hue and saturation kept, so RGB scales by 0.7 / 0.6
    assert torch.allclose(
        corrupt(pixel, "brightness", 1).flatten(), torch.tensor([0.2, 0.4, 0.6]) * 0.7 / 0.6
    )
    black = torch.zeros(1, 3, 1, 1)
    assert torch.allclose(corrupt(black, "brightness", 5).flatten(), torch.full((3,), 0.5))


def test_contrast_by_hand():
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    # severity 5: (x - 0.5) * 0.05 + 0.5
    assert torch.allclose(corrupt(x, "contrast", 5)[0, 0, 0], torch.tensor([0.475, 0.525]))


def test_defocus_kernel_normalised():
    kernel = disk_kernel(3, 0.1)
    assert torch.isclose(kernel.sum(), torch.tensor(1.0))
    assert kernel.shape == (17, 17)


def test_bad_arguments(images):
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(images, "fog", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt(images, "contrast", 6)
