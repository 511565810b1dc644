"""Synthetic probes as a label-free check of which version ranks a batch better: measured, not
adopted.

    python -m benchmarks.gate_probes [--dataset bsd] [--corruptions gaussian_noise ...]
    [--severities 3 5]

The shift benchmark's adaptation batch (the same 20% split and seed), corrupted; the default target
memory adapted on it. Every image gets a probe: a strip or a block of the same image, flipped,
pasted elsewhere (the condition's own noise and contrast, so only the structure is new). Each
version scores the originals and the probed copies (the target memory out of fold, so no image meets
its own patches): a version that ranks the probed copies above the originals more often should see
defects better. Next to it, each version's image AUROC on the batch's real defects (the only use of
the labels). Writes benchmarks/results/gate-probes-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .helpers import machine, markdown
from .protocol import adaptation_batch, add_protocol_arguments, as_float, corrupt_uint8

COLUMNS = [
    ("condition", "condition", ""),
    ("version", "version", ""),
    ("defects", "image AUROC, the batch's defects", ".3f"),
    ("probes", "image AUROC, probed against originals", ".3f"),
    ("paired", "probed copy above its original", ".0%"),
]


def planted(images: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, 3, H, W) -> copies with a piece of each image pasted elsewhere in it: a strip (2-4% of
    the short side thick, 15-30% long) or a block (6-12% of the short side), flipped at random."""
    rng = np.random.default_rng(seed)
    out = images.clone()
    _, _, height, width = images.shape
    side = min(height, width)
    for i in range(len(images)):
        if rng.random() < 0.5:
            length, thickness = (
                int(side * rng.uniform(0.15, 0.3)),
                max(3, int(side * rng.uniform(0.02, 0.04))),
            )
            h, w = (thickness, length) if rng.random() < 0.5 else (length, thickness)
        else:
            h = w = int(side * rng.uniform(0.06, 0.12))
        (sy, dy), (sx, dx) = rng.integers(0, height - h, 2), rng.integers(0, width - w, 2)
        piece = images[i, :, sy : sy + h, sx : sx + w]
        flips = [dim for dim in (1, 2) if rng.random() < 0.5]
        out[i, :, dy : dy + h, dx : dx + w] = piece.flip(flips) if flips else piece
    return out


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt
    from patchshift.core.adapt.target_memory import target_features
    from patchshift.core.common.fileio import atomic_write_bytes
    from patchshift.core.engine.patchcore import kfold_scores
    from patchshift.core.evaluation.metrics import auroc

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gate_probes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_protocol_arguments(parser, severities=[3, 5])
    args = parser.parse_args(argv)
    model, clean, truth = adaptation_batch(args)

    def parent_scores(images: torch.Tensor) -> np.ndarray:
        return model.score_batches(images[i : i + 16] for i in range(0, len(images), 16))[0]

    rows = []
    for corruption in args.corruptions:
        for severity in args.severities:
            shifted = as_float(corrupt_uint8(clean, corruption, severity, args.seed))
            probed = planted(shifted, args.seed)
            adapted, summary = adapt(model, shifted, AdaptConfig(seed=args.seed))

            def memory_scores(images: torch.Tensor, adapted=adapted, summary=summary) -> np.ndarray:
                feats = target_features(
                    adapted.extractor, images, adapted.config.batch_size, adapted.device
                )
                return kfold_scores(adapted, feats, summary.memory_image)

            for name, score in (("parent", parent_scores), ("target-memory", memory_scores)):
                original, copy = score(shifted), score(probed)
                rows.append(
                    {
                        "condition": f"{corruption} {severity}",
                        "version": name,
                        "defects": auroc(truth, original),
                        "probes": auroc(
                            np.r_[np.zeros(len(original)), np.ones(len(copy))],
                            np.r_[original, copy],
                        ),
                        "paired": float(np.mean(copy > original)),
                    }
                )
                print(rows[-1], flush=True)
    out = Path(args.out_dir) / f"gate-probes-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        out, json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=2).encode()
    )
    print(f"\nsynthetic probes against the batch's defects, {args.dataset} ({machine()})")
    print(markdown(rows, COLUMNS))


if __name__ == "__main__":
    main()
