"""What every BatchNorm adapter shares: views, the training loop, the new version."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from patchshift.core.adapt.adapt_config import AdaptConfig
from patchshift.core.common.errors import ConfigError
from patchshift.core.common.finite import refuse_non_finite_scores
from patchshift.core.common.progress import CancelFn, ProgressFn, check_cancel, report
from patchshift.core.engine.backbone import batchnorm_layers
from patchshift.core.engine.drift import DriftReference
from patchshift.core.engine.patchcore import PatchCoreModel, Provenance
from patchshift.core.engine.threshold import (
    TransferredThreshold,
    gumbel_threshold,
    transferred_calibration,
)

if TYPE_CHECKING:
    from patchshift.core.adapt.gate import BatchRanking, GateVerdict

# loss(features (N, D) with grad, generator) -> scalar; may record diagnostics in `stats`.
LossFn = Callable[[torch.Tensor, torch.Generator, dict], torch.Tensor]


@dataclass
class AdaptReport:
    method: str
    n_images: int
    seconds: float = 0.0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    message: str = ""  # what a person should read about the run (uda: which cluster it trusted)
    # What the new version scores the target images (out-of-fold where they built its memory).
    target_scores: np.ndarray | None = None
    target_index: np.ndarray | None = (
        None  # which target images target_scores are of (None: all, in order)
    )
    gate: GateVerdict | None = None  # set by adapt(judge=True)
    # What the adapter already computed on the source backbone, so the gate does not redo it:
    # the target's patch features (N, h, w, D) and the batch's own ranking. Dropped after the gate.
    source_features: torch.Tensor | None = None
    reference_ranking: BatchRanking | None = None
    # A moved memory's rows: the target image each came from, -1 for the source bank's (out-of-fold
    # scoring).
    memory_image: torch.Tensor | None = None
    # The new threshold, its expected false-alarm rate and whether the batch supports it (None: not
    # moved by a law).
    threshold: TransferredThreshold | None = None
    # A target memory's out-of-fold patch scores (S, h, w) of the scored images and their patches'
    # mutual robust z (S, h*w): what its threshold's normal scores are made of (threshold studies
    # read them).
    target_patch_scores: torch.Tensor | None = None
    target_patch_z: torch.Tensor | None = None


def view_transforms(kind: str, square: bool) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Transforms that keep a normal part normal; quarter turns only where the input is square."""
    identity = [lambda x: x]
    half_turn = [lambda x: torch.rot90(x, 2, (2, 3))]
    quarter = (
        [lambda x: torch.rot90(x, 1, (2, 3)), lambda x: torch.rot90(x, 3, (2, 3))] if square else []
    )
    flips = [lambda x: torch.flip(x, (3,)), lambda x: torch.flip(x, (2,))]
    if kind == "none":
        return identity
    if kind == "rot90":
        return identity + half_turn + quarter
    if kind == "flip":
        return identity + flips + half_turn
    diagonal = [
        lambda x: torch.rot90(torch.flip(x, (3,)), 1, (2, 3)),
        lambda x: torch.rot90(torch.flip(x, (2,)), 1, (2, 3)),
    ]
    return identity + half_turn + quarter + flips + (diagonal if square else [])


def draw_views(cfg: AdaptConfig, n_transforms: int, generator: torch.Generator) -> list[int]:
    """Indices of cfg.views transforms: the image itself first, then others drawn without
    replacement."""
    if cfg.views == 1 or n_transforms == 1:
        return [0] * cfg.views
    return [0] + (
        torch.randperm(n_transforms - 1, generator=generator)[: cfg.views - 1] + 1
    ).tolist()


def make_views(batch: torch.Tensor, cfg: AdaptConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, V, 3, H, W): cfg.views views of every image. With augmentation off the views are plain
    copies (the paper's 'direct copy' ablation)."""
    transforms = view_transforms(cfg.augment, batch.shape[-1] == batch.shape[-2])
    return apply_views(batch, draw_views(cfg, len(transforms), generator), transforms)


def apply_views(batch: torch.Tensor, chosen: list[int], transforms: list) -> torch.Tensor:
    if len(set(chosen)) == 1 and chosen[0] == 0:
        return batch.unsqueeze(1).expand(-1, len(chosen), -1, -1, -1)
    return torch.stack([transforms[i](batch) for i in chosen], dim=1)


def step_size(cfg: AdaptConfig, height: int, width: int) -> int:
    """Images per optimiser step: cfg.batch_size, fewer when their views exceed the pixel budget
    (activation memory grows with the pixels that go through the network with gradient)."""
    per_image = cfg.views * height * width / 1e6
    return max(1, min(cfg.batch_size, int(cfg.max_step_megapixels // per_image)))


class TargetInputs:
    """The network inputs of every target image's views.

    Each image's views are drawn once (per chunk of images, in order) and stay fixed across epochs.
    With frozen layers below the first adapted BatchNorm (`cut` > 0), their output is computed once
    and cached; otherwise the views are made per step, so memory does not grow with the target set.
    """

    def __init__(
        self,
        extractor: nn.Module,
        target: torch.Tensor,
        cfg: AdaptConfig,
        cut: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.extractor, self.target, self.cut, self.device = extractor, target, cut, device
        self.transforms = view_transforms(cfg.augment, target.shape[-1] == target.shape[-2])
        self.chosen = []  # per image, its transform indices
        for start in range(0, len(target), cfg.batch_size):
            picks = draw_views(cfg, len(self.transforms), generator)
            self.chosen += [picks] * len(target[start : start + cfg.batch_size])
        self.cached = self._prefix(torch.arange(len(target))) if cut > 0 else None

    @torch.inference_mode()
    def _prefix(self, indices: torch.Tensor) -> torch.Tensor:
        """(N, V, C, h, w): the frozen layers' output for every view, computed once."""
        out = []
        for start in range(0, len(indices), 8):
            views = self._views(indices[start : start + 8])
            b, v = views.shape[:2]
            maps = self.extractor.backbone.prefix(views.reshape(b * v, *views.shape[2:]), self.cut)
            out.append(maps.reshape(b, v, *maps.shape[1:]))
        return torch.cat(out)

    def _views(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) normalised views of the images at `indices`."""
        groups = [
            apply_views(self.target[i : i + 1], self.chosen[i], self.transforms)
            for i in indices.tolist()
        ]
        views = torch.cat(groups).to(self.device)
        b, v = views.shape[:2]
        return self.extractor.normalise(views.reshape(b * v, *views.shape[2:])).reshape(
            b, v, *views.shape[2:]
        )

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """(B * V, C, h, w): what enters the layers from `cut` on."""
        inputs = (
            self.cached[indices.to(self.cached.device)]
            if self.cached is not None
            else self._views(indices)
        )
        return inputs.reshape(-1, *inputs.shape[2:])


def affine_parameters(extractor: nn.Module, first_layer: int = 0) -> list[nn.Parameter]:
    """Freeze everything except the BatchNorm weights and biases from backbone layer `first_layer`
    on."""
    for parameter in extractor.parameters():
        parameter.requires_grad_(False)
    backbone = extractor.backbone
    params = []
    for module in list(backbone.layers.values())[first_layer:]:
        for layer in batchnorm_layers(module).values():
            if layer.affine:
                layer.weight.requires_grad_(True)
                layer.bias.requires_grad_(True)
                params += [layer.weight, layer.bias]
    if not params:
        raise ConfigError("the backbone has no BatchNorm affine parameters to adapt")
    return params


@torch.inference_mode()
def reestimate_statistics(
    extractor: nn.Module,
    target: torch.Tensor,
    batch_size: int,
    device: torch.device,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> None:
    """AdaBN, in place (pass a copy): every BatchNorm's running mean becomes the target images'
    mean, and its running variance the average of each batch's own variance (the usual AdaBN
    estimate), each batch weighted by its number of images (torch's cumulative average weighs
    batches equally, so a short last batch, possibly one defective image, would count as much as a
    full one)."""
    layers = batchnorm_layers(extractor)
    momenta = {name: layer.momentum for name, layer in layers.items()}
    for layer in layers.values():
        layer.reset_running_stats()
    extractor.train()
    try:
        for start in range(0, len(target), batch_size):
            check_cancel(cancel)
            batch = target[start : start + batch_size]
            for layer in layers.values():  # running = running + (n / seen) * (batch - running)
                layer.momentum = len(batch) / (start + len(batch))
            extractor(batch.to(device))
            report(progress, "statistics", min(start + batch_size, len(target)), len(target))
    finally:  # the layers' own settings come back even when cancelled
        for name, layer in layers.items():
            layer.momentum = momenta[name]
        extractor.eval()


def set_batchnorm_mode(extractor: nn.Module, mode: str) -> None:
    extractor.eval()
    if mode == "train":
        for layer in batchnorm_layers(extractor).values():
            layer.train()


def train_affine(
    model: PatchCoreModel,
    target: torch.Tensor,
    cfg: AdaptConfig,
    loss_fn: LossFn,
    report_: AdaptReport,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
) -> nn.Module:
    """Copy the extractor and train only its BatchNorm affine parameters on `loss_fn`."""
    device = model.device
    extractor = copy.deepcopy(model.extractor)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.reestimate_stats:
        check_cancel(cancel)
        reestimate_statistics(extractor, target, model.config.batch_size, device, progress, cancel)
    backbone = extractor.backbone
    cut = backbone.first_stage_layer if cfg.trained_layers == "feature-stages" else 0
    params = affine_parameters(extractor, cut)
    extractor.eval()
    inputs = TargetInputs(extractor, target, cfg, cut, generator, device)
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    step = step_size(cfg, *target.shape[-2:])
    batches_per_epoch = -(-len(target) // step)
    total = cfg.epochs * batches_per_epoch
    report_.details["images_per_step"] = step
    for _epoch in range(cfg.epochs):
        order = torch.randperm(len(target), generator=generator)
        for b in range(batches_per_epoch):
            check_cancel(cancel)
            batch = inputs.batch(order[b * step : (b + 1) * step])
            set_batchnorm_mode(extractor, cfg.bn_mode)
            with torch.enable_grad():
                maps = backbone(batch, start=cut)
                feats = extractor.from_maps(maps)
                loss = loss_fn(feats.reshape(-1, feats.shape[-1]), generator, report_.details)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            report_.losses.append(float(loss.detach()))
            report_.steps += 1
            report(progress, "adapt", report_.steps, total)
    for parameter in extractor.parameters():
        parameter.requires_grad_(False)
    report_.details["trained_from_layer"] = backbone.layer_names[cut]
    return extractor.eval()


def apply_threshold(
    adapted: PatchCoreModel, threshold: TransferredThreshold, report_: AdaptReport
) -> None:
    """Set the new version's threshold; the manifest and the job result say what it is expected to
    flag and how sure that is, and why the parent's stayed where it did."""
    adapted.threshold = threshold.value
    report_.threshold = threshold
    report_.details["threshold_estimate"] = threshold.to_dict()
    if threshold.kept_reason is not None:
        adapted.provenance.threshold_source = "parent-kept"
        report_.details["threshold_note"] = threshold.kept_reason


def derive_version(
    source: PatchCoreModel,
    extractor: nn.Module,
    target: torch.Tensor,
    report_: AdaptReport,
    cfg: AdaptConfig,
    progress: ProgressFn | None = None,
) -> PatchCoreModel:
    """A new model version: adapted BatchNorm, same bank, threshold moved to the target's scores."""
    adapted = PatchCoreModel(
        source.config,
        source.backbone,
        extractor,
        source.bank,
        source.threshold,
        Provenance(
            method=report_.method,
            parent=source.version,
            threshold_source="transferred-to-target",
            calibration_scores=[],
            n_train_images=source.provenance.n_train_images,
            details={
                "adapt_config": cfg.to_dict(),
                "n_target_images": len(target),
                **report_.details,
            },
        ),
        source.device,
        index=source.index,
    )
    adapted.bank_path = source.bank_path
    step = source.config.batch_size

    def batches():
        for start in range(0, len(target), step):
            yield target[start : start + step]
            report(progress, "threshold", min(start + step, len(target)), len(target))

    target_scores, _, descriptors = adapted.score_stream(batches())
    refuse_non_finite_scores(
        target_scores, cfg.lr if report_.steps else None
    )  # an lr hint only where something trained
    # The adapted version watches for drift away from the condition it was adapted to.
    adapted.drift_reference = (
        DriftReference.from_descriptors(descriptors) if len(target) >= 2 else source.drift_reference
    )
    apply_threshold(
        adapted,
        gumbel_threshold(target_scores, source.config.false_alarm_rate, source.threshold),
        report_,
    )
    adapted.provenance.details.update(
        report_.details
    )  # the manifest carries the threshold's estimate too
    adapted.provenance.calibration_scores = transferred_calibration(
        source.provenance.calibration_scores, target_scores
    )
    report_.target_scores = target_scores
    return adapted
