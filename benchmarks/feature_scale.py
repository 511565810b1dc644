"""Feature scale and alignment under a shift: is the misalignment a matter of scale?

    python -m patchshift.benchmarks.feature_scale [--dataset bsd] [--corruptions ...] [--severities 3 5]

For the normal images of the shift benchmark's adaptation split (same split, same seed), per
condition and per model (no adaptation, AdaBN, RoDA adapted on the whole adaptation split as in
the benchmark): the mean norm of their patch features relative to the mean norm of the bank rows
(1 = same scale), and the mean distance of their patches to the nearest bank row relative to the
same images' clean patches under the source model (1 = as well aligned as clean images).
Writes benchmarks/results/feature-scale-<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .common import machine, markdown
from .shift import add_protocol_arguments, as_float, corrupt_uint8, load_images, protocol_split


@torch.inference_mode()
def scale_and_distance(model, images: torch.Tensor) -> tuple[float, float]:
    """(mean patch-feature norm, mean distance to the nearest bank row) over `images` (uint8)."""
    norms, distances = [], []
    for start in range(0, len(images), 16):
        feats = model.features(as_float(images[start : start + 16]))
        flat = feats.reshape(-1, feats.shape[-1])
        norms.append(flat.norm(dim=1).cpu())
        distances.append(model.index.search(flat, k=1)[0].flatten().cpu())
    return float(torch.cat(norms).mean()), float(torch.cat(distances).mean())


def main(argv: list[str] | None = None) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt

    parser = argparse.ArgumentParser(prog="patchshift bench feature-scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_arguments(parser, severities=[3, 5])
    args = parser.parse_args(argv)

    model, samples, labels, adapt_idx = protocol_split(args)
    clean = load_images([samples[i].path for i in adapt_idx], model.config.image_size)
    normal = torch.from_numpy(labels[adapt_idx] == 0)
    bank_norm = float(model.bank.norm(dim=1).mean())
    _, clean_distance = scale_and_distance(model, clean[normal])
    rows = []
    for corruption in args.corruptions:
        for severity in args.severities:
            shifted = corrupt_uint8(clean, corruption, severity, args.seed)
            row = {"condition": f"{corruption} {severity}"}
            for method in ("none", "bn-stats", "roda"):
                adapted, _ = adapt(model, as_float(shifted), AdaptConfig(method=method, seed=args.seed))
                norm, distance = scale_and_distance(adapted, shifted[normal])
                row[f"scale {method}"] = norm / bank_norm
                row[f"distance {method}"] = distance / clean_distance
            rows.append(row)
            print(row, flush=True)
    result = {"dataset": args.dataset, "bank_norm": bank_norm, "clean_distance": clean_distance, "rows": rows, "machine": machine()}
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / f"feature-scale-{args.dataset}.json").write_text(json.dumps(result, indent=2))
    print(f"\n{args.dataset}: {int(normal.sum())} normal adaptation images; {result['machine']}")
    columns = [("condition", "condition", "")]
    columns += [(f"scale {m}", f"norm / bank norm, {m}", ".2f") for m in ("none", "bn-stats", "roda")]
    columns += [(f"distance {m}", f"NN distance / clean, {m}", ".2f") for m in ("none", "bn-stats", "roda")]
    print(markdown(rows, columns))


if __name__ == "__main__":
    main()
