"""RoDA: robust discretised-Sinkhorn alignment of BatchNorm affine parameters to the frozen bank.

Per minibatch: views of the target images, patch features with gradient, a sample of
`target_patches` of them and `bank_rows` bank rows, cost C = pairwise Euclidean distance, the
entropic plan gamma* (stabilised Sinkhorn, uniform marginals), and the loss
sum(pi * C) / sum(pi) with pi the discretised plan (Eq. 6); `ot-continuous` uses gamma* itself.
"""

from __future__ import annotations

import torch

from patchshift.core.adapt.adapt_config import AdaptConfig
from patchshift.core.adapt.ot import chosen_by_bank, discretise, sinkhorn
from patchshift.core.engine.patchcore import PatchCoreModel


def sample_rows(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[:k] if k < n else torch.arange(n)


def bank_subset(
    model: PatchCoreModel, patches: torch.Tensor, cfg: AdaptConfig, generator: torch.Generator
) -> torch.Tensor:
    """`bank_rows` rows of the bank, a uniform sample."""
    return model.bank[sample_rows(len(model.bank), cfg.bank_rows, generator)].to(patches.device)


def ot_loss(model: PatchCoreModel, cfg: AdaptConfig, continuous: bool):
    """The alignment loss for `train_affine`: discretised (RoDA) or continuous Sinkhorn."""

    def loss(features: torch.Tensor, generator: torch.Generator, stats: dict) -> torch.Tensor:
        patches = features[
            sample_rows(len(features), cfg.target_patches, generator).to(features.device)
        ]
        prototypes = bank_subset(model, patches, cfg, generator)
        cost = torch.cdist(patches, prototypes)
        plan = sinkhorn(cost, cfg.eps, cfg.sinkhorn_iters)
        if continuous:
            return (plan * cost).sum() / plan.sum()
        pi = discretise(plan, cfg.discretise)
        strong = chosen_by_bank(plan)
        stats["chosen_by_bank_share"] = stats.get("chosen_by_bank_share", []) + [
            float(strong.float().mean())
        ]
        pairs = cost[pi]
        if cfg.trim > 0:
            keep = max(1, int(round(len(pairs) * (1 - cfg.trim))))
            pairs = torch.topk(pairs, keep, largest=False).values
        return pairs.mean()

    return loss
