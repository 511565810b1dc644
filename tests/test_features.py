import pytest
import torch

from patchshift.core.common.errors import ConfigError
from patchshift.core.engine.backbone import build_backbone
from patchshift.core.engine.features import PatchFeatureExtractor
from patchshift.core.engine.model_config import ModelConfig
from patchshift.core.engine.reduction import channel_pooling_matrix


def test_channel_pooling_matrix_by_hand():
    expected = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, 0.5]])
    assert torch.allclose(channel_pooling_matrix(4, 2), expected)
    # expanding (2 -> 4 channels) repeats each channel
    assert torch.allclose(
        channel_pooling_matrix(2, 4), torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]])
    )


@pytest.mark.parametrize(
    "width,height,strides,dim,grid",
    [
        (64, 64, (8, 16), 64, (8, 8)),
        (96, 64, (8, 16), 128, (8, 12)),
        (128, 96, (8, 16), 32, (12, 16)),
        (64, 64, (16,), 48, (4, 4)),
        (64, 64, (4, 8, 16), 96, (16, 16)),
    ],
)
def test_feature_shapes(width, height, strides, dim, grid):
    backbone = build_backbone("tf_efficientnet_lite0", None, strides)
    extractor = PatchFeatureExtractor(backbone, dim, 3).eval()
    with torch.inference_mode():
        z = extractor(torch.rand(2, 3, height, width))
    assert z.shape == (2, *grid, dim)
    assert torch.isfinite(z).all()


@pytest.mark.parametrize(
    ("border", "corner", "edge", "stage3"),
    [("zeros", 4 / 9, 6 / 9, 4 / 9), ("inside", 1.0, 1.0, 1.0)],
)
def test_the_neighbourhood_average_at_the_border_by_hand(border, corner, edge, stage3):
    """Constant stage maps of ones: zero padding (PatchCore's) shrinks the border cells, counting
    only the cells inside (versions before the setting) keeps them at one."""
    backbone = build_backbone("tf_efficientnet_lite0", None, (8, 16))
    extractor = PatchFeatureExtractor(backbone, 8, 3, border)
    z = extractor.from_maps(
        {"blocks.2": torch.ones(1, 40, 4, 4), "blocks.4": torch.ones(1, 112, 2, 2)}
    )
    assert z.shape == (1, 4, 4, 8)
    fine, coarse = z[0, ..., :4], z[0, ..., 4:]
    assert torch.allclose(fine[0, 0], torch.full((4,), corner)) and torch.allclose(
        fine[0, 1], torch.full((4,), edge)
    )
    assert torch.allclose(fine[1, 1], torch.ones(4))  # inside: the same either way
    assert torch.allclose(coarse, torch.full_like(coarse, stage3))  # a 2x2 map is all corners
    with pytest.raises(ConfigError, match="border"):
        PatchFeatureExtractor(backbone, 8, 3, "mirror")


def test_features_are_differentiable_in_batchnorm_affine():
    backbone = build_backbone("tf_efficientnet_lite0", None, (8, 16))
    extractor = PatchFeatureExtractor(backbone, 32, 3)
    z = extractor(torch.rand(1, 3, 64, 64))
    z.square().mean().backward()
    bn = next(m for m in extractor.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ConfigError):
        ModelConfig(feature_dim=127)  # not a multiple of two stages
    with pytest.raises(ConfigError):
        ModelConfig(image_size="12x12")
    with pytest.raises(ConfigError):
        ModelConfig(image_size="abc")
    assert ModelConfig(image_size="576x224").input_hw == (224, 576)
    cfg = ModelConfig(image_size=(100, 80), coreset_max_size=5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
