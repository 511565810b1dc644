"""The two training objectives of the UDA detector."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dsvdd_loss(embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Deep SVDD: mean squared distance of source normals to the fixed centre."""
    return (embeddings - centre).square().sum(dim=1).mean()


def info_nce(
    source: torch.Tensor, positives: torch.Tensor, targets: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean over pairs (source_i, positives_i) of -log( exp(sim(s, t+)/tau) / sum_{t' in targets}
    exp(sim(s, t')/tau) ), cosine similarity; `targets` is the whole target batch (positives and the
    non-selected negatives)."""
    s = F.normalize(source, dim=1)
    logits_all = s @ F.normalize(targets, dim=1).T / tau  # (P, T)
    positive = (s * F.normalize(positives, dim=1)).sum(dim=1) / tau  # (P,)
    return (torch.logsumexp(logits_all, dim=1) - positive).mean()
