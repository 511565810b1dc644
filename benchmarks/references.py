"""Reference rows for the shift benchmark: what is recoverable at all, with information no
deployed adapter has. They are references for the adapters, not adapters.

- `refit-target`: a new bank fitted on the clean train/good images corrupted the same way, i.e.
  what re-collecting normal images under the new camera and refitting from scratch would give.
- `paired-oracle`: the BatchNorm affine parameters (after AdaBN, as RoDA) trained to map each
  corrupted adaptation image's patch features onto the source model's features of the *clean*
  image: the same parameters with a perfect target. Its image AUROC shows how much BatchNorm
  can undo the shift (a strong reference, not a strict bound: AdaBN beats it on pixel AUROC
  under noise).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .protocol import as_float, corrupt_uint8, load_images


def refit_on_condition(model, root: Path, corruption: str, severity: int, seed: int):
    """A PatchCore model fitted on the train/good images under the same corruption."""
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import train_images

    train = corrupt_uint8(
        load_images(train_images(root), model.config.image_size), corruption, severity, seed
    )
    encoded = []
    for image in train:  # fit takes image files; lossless PNG keeps the corrupted pixels exactly
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return fit(encoded, model.config, device=model.device)


def paired_oracle(
    model,
    shifted: torch.Tensor,
    clean: torch.Tensor,
    epochs: int = 5,
    lr: float = 1e-2,
    seed: int = 0,
):
    """BatchNorm affine trained on ||f_adapted(shifted) - f_source(clean)||^2 per patch."""
    from patchshift.core.adapt import AdaptConfig
    from patchshift.core.adapt.base import (
        AdaptReport,
        affine_parameters,
        derive_version,
        reestimate_statistics,
    )

    cfg = AdaptConfig(method="paired-oracle", epochs=epochs, lr=lr, seed=seed)
    batch = model.config.batch_size
    shifted, clean = as_float(shifted), as_float(clean)
    goal = torch.cat(
        [model.features(clean[i : i + batch]) for i in range(0, len(clean), batch)]
    ).clone()
    extractor = copy.deepcopy(model.extractor)
    reestimate_statistics(extractor, shifted, batch, model.device)
    optimiser = torch.optim.Adam(affine_parameters(extractor), lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    report = AdaptReport(method="paired-oracle", n_images=len(shifted))
    for _ in range(cfg.epochs):
        order = torch.randperm(len(shifted), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            chosen = order[start : start + cfg.batch_size]
            extractor.eval()
            with torch.enable_grad():
                feats = extractor(shifted[chosen].to(model.device))
                loss = (feats - goal[chosen]).square().sum(-1).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            report.losses.append(float(loss.detach()))
            report.steps += 1
    for parameter in extractor.parameters():
        parameter.requires_grad_(False)
    return derive_version(model, extractor.eval(), shifted, report, cfg)


def reference_model(
    method: str,
    model,
    root: Path,
    corruption: str,
    severity: int,
    clean: torch.Tensor,
    shifted: torch.Tensor,
    adapt_idx: np.ndarray,
    seed: int,
):
    if method == "refit-target":
        return refit_on_condition(model, root, corruption, severity, seed)
    return paired_oracle(model, shifted[adapt_idx], clean[adapt_idx], seed=seed)
