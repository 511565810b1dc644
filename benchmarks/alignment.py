"""Alignment diagnostics under a shift: scale, distance to the bank, and the right rows.

    python -m benchmarks.alignment [--dataset bsd] [--corruptions ...] [--severities 3 5]

For the normal images of the shift benchmark's adaptation split (same split, same seed), per
condition and per model (no adaptation, AdaBN, RoDA adapted on the whole adaptation split as in
the benchmark), three numbers over all their patches:
- scale: mean patch-feature norm / mean bank-row norm (1 = the bank's scale);
- distance: mean distance to the nearest bank row / the same for the clean images under the
  source model (1 = as close to the bank as before the shift);
- twin agreement: share of patches whose nearest bank row is among the 10 nearest rows of the
  same patch of the clean image under the source model (what a perfect alignment would reach: 1).
Writes benchmarks/results/alignment-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .helpers import machine, markdown
from .protocol import adaptation_batch, add_protocol_arguments, as_float, corrupt_uint8

TWIN_ROWS = 10


@torch.inference_mode()
def patch_search(
    model, images: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per patch of `images` (uint8): feature norm, distance to and indices of the k nearest bank
    rows."""
    norms, distances, rows = [], [], []
    for start in range(0, len(images), 16):
        feats = model.features(as_float(images[start : start + 16]))
        flat = feats.reshape(-1, feats.shape[-1])
        dist, idx = model.index.search(flat, k=k)
        norms.append(flat.norm(dim=1).cpu())
        distances.append(dist[:, 0].cpu())
        rows.append(idx.cpu())
    return torch.cat(norms), torch.cat(distances), torch.cat(rows)


def twin_agreement(twin_rows: torch.Tensor, nearest: torch.Tensor) -> float:
    """Share of patches whose nearest bank row (nearest: (P, 1)) is among their clean twin's rows
    (P, k)."""
    return float((twin_rows == nearest).any(dim=1).float().mean())


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.alignment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_protocol_arguments(parser, severities=[3, 5])
    parser.add_argument("--methods", nargs="*", default=["none", "bn-stats", "roda"])
    args = parser.parse_args(argv)

    model, clean, batch_labels = adaptation_batch(args)
    normal = torch.from_numpy(batch_labels == 0)
    bank_norm = float(model.bank.norm(dim=1).mean())
    _, clean_distance, twin_rows = patch_search(model, clean[normal], TWIN_ROWS)
    clean_distance = float(clean_distance.mean())
    rows = []
    for corruption in args.corruptions:
        for severity in args.severities:
            shifted = corrupt_uint8(clean, corruption, severity, args.seed)
            for method in args.methods:
                adapted, _ = adapt(
                    model, as_float(shifted), AdaptConfig(method=method, seed=args.seed)
                )
                norms, distances, nearest = patch_search(adapted, shifted[normal], 1)
                agreement = twin_agreement(twin_rows, nearest)
                rows.append(
                    {
                        "condition": f"{corruption} {severity}",
                        "method": method,
                        "scale": float(norms.mean()) / bank_norm,
                        "distance": float(distances.mean()) / clean_distance,
                        "twin_agreement": float(agreement),
                    }
                )
                print(rows[-1], flush=True)
    result = {
        "dataset": args.dataset,
        "bank_norm": bank_norm,
        "clean_distance": clean_distance,
        "rows": rows,
        "machine": machine(),
    }
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / f"alignment-{args.dataset}.json").write_text(json.dumps(result, indent=2))
    print(f"\n{args.dataset}: {int(normal.sum())} normal adaptation images; {result['machine']}")
    print(
        markdown(
            rows,
            [
                ("condition", "condition", ""),
                ("method", "method", ""),
                ("scale", "norm / bank norm", ".2f"),
                ("distance", "NN distance / clean", ".2f"),
                ("twin_agreement", f"nearest row in clean twin's {TWIN_ROWS}", ".1%"),
            ],
        )
    )


if __name__ == "__main__":
    main()
