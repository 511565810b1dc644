"""Baselines with the adapter interface: moment matching (TTT++ Eq. 3)."""

from __future__ import annotations

import torch

from patchshift.core.engine.patchcore import PatchCoreModel


def moment_loss(model: PatchCoreModel):
    """||mu_s - mu_t||^2 + ||Sigma_s - Sigma_t||_F^2 between bank rows and target patch features."""
    bank = model.bank.to(model.device)
    mu_s = bank.mean(0)
    sigma_s = torch.cov(bank.T)

    def loss(features: torch.Tensor, generator: torch.Generator, stats: dict) -> torch.Tensor:
        mu_t = features.mean(0)
        sigma_t = torch.cov(features.T)
        return (mu_s - mu_t).square().sum() + (sigma_s - sigma_t).square().sum()

    return loss
