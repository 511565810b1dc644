"""The levels step: before a method adapts a PatchCore version, its input levels are matched to
the source's (core.engine.levels), so that a change of light or camera gain is undone in the pixels
and the method adapts to what remains."""

from __future__ import annotations

import copy

import torch

from patchshift.core.engine.levels import level_correction, levels_of
from patchshift.core.engine.patchcore import PatchCoreModel


def match_levels(model: PatchCoreModel, target: torch.Tensor) -> tuple[PatchCoreModel, dict]:
    """(N, 3, H, W) target images in [0, 1] -> a copy of `model` whose extractor corrects the
    target condition's levels (the model itself is not touched), and what was done, for the job
    result. `model` itself where its features stay as they are: a version fitted before levels were
    recorded, or a correction the parent already applies."""
    source = model.extractor.source_levels
    if source is None:
        return model, {
            "input_levels": None,
            "levels": "levels not matched: this model records no levels of its training images "
            "(fitted before they were recorded); fit it again to match them",
        }
    correction = level_correction(source, levels_of(target))
    details = {"input_levels": correction.to_dict(), "levels": correction.describe()}
    levels = None if correction.is_identity else correction
    if levels == model.extractor.levels:  # the parent's own features: nothing to copy
        return model, details
    extractor = copy.copy(model.extractor)  # shares the networks; its own levels attribute
    extractor.levels = levels
    parent = copy.copy(model)
    parent.extractor = extractor
    return parent, details
