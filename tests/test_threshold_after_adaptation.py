"""The threshold a target memory sets, on hand-built batches with 0%, 25% and 50% defective images.

Each image has 8 x 8 patch scores drawn from N(10, 1); a defective one has 3 patches raised by a
defect of the stated strength. The patches' mutual z is their robust z within the batch (in a real
batch it comes from the other target images; here the defect patches stand out the same way). The
threshold is judged on 5,000 fresh normal and 5,000 fresh defective images, against the oracle
threshold that flags at most 1% of the fresh normal ones (it catches every defective one here).
Goal (issue: the verdict after adaptation): at most 2% false alarms and at least 70% of the
oracle's recall, and a stated expected rate whose interval holds the fresh images' rate.

Measured on 200-image batches, this rule / the rule before it (a law through the raw scores' 10th
percentile and median, no estimate stated), false alarms and recall:
  0% defective  (defects +4.0..+5.0):  0.6% / 0.3%, 100% / 100% (guards the stated estimate)
  25% defective (defects +4.0..+5.0):  0.4% / 0.0%, 100% / 30%
  50% defective (defects +4.2..+5.2):  0.3% / 0.0%, 100% / 0%
"""

import numpy as np
import pytest
import torch

from patchshift.core.adapt import AdaptConfig
from patchshift.core.adapt.target_memory import batch_threshold
from patchshift.core.engine.contamination import robust_z
from patchshift.core.evaluation.metrics import oracle_threshold

RATE = 0.01


def patch_scores(
    rng: np.random.Generator, n: int, defect: tuple[float, float] | None
) -> torch.Tensor:
    """(n, 8, 8) patch scores; with `defect` (low, high), 3 patches of each image raised by U(low,
    high)."""
    scores = rng.normal(10.0, 1.0, (n, 64))
    if defect is not None:
        cells = np.argsort(rng.random((n, 64)), axis=1)[:, :3]
        np.put_along_axis(scores, cells, 10.0 + rng.uniform(*defect, (n, 3)), axis=1)
    return torch.from_numpy(scores.reshape(n, 8, 8))


@pytest.mark.parametrize(
    "share, defect, expected_recall",
    [(0.0, (4.0, 5.0), 1.0), (0.25, (4.0, 5.0), 1.0), (0.5, (4.2, 5.2), 1.0)],
)
def test_threshold_keeps_the_false_alarm_rate_and_most_of_the_oracles_recall(
    share, defect, expected_recall
):
    fresh = np.random.default_rng(0)
    good = patch_scores(fresh, 5000, None).flatten(1).amax(1).numpy()
    bad = patch_scores(fresh, 5000, defect).flatten(1).amax(1).numpy()
    oracle_recall = float((bad > oracle_threshold(good, RATE)).mean())

    rng = np.random.default_rng(1)
    n_bad = int(share * 200)
    batch = torch.cat([patch_scores(rng, 200 - n_bad, None), patch_scores(rng, n_bad, defect)])
    threshold, normal = batch_threshold(
        batch, robust_z(batch.flatten(1)), RATE, fallback=0.0, cfg=AdaptConfig()
    )

    false_alarms, recall = (
        float((good > threshold.value).mean()),
        float((bad > threshold.value).mean()),
    )
    assert false_alarms <= 2 * RATE and recall >= 0.7 * oracle_recall, (
        false_alarms,
        recall,
        oracle_recall,
    )
    assert recall == pytest.approx(expected_recall, abs=0.01)
    # the job result states what it expects and how sure: the fresh images' rate stays under the
    # interval's top
    low, high = threshold.false_alarm_interval
    assert (
        threshold.supported
        and false_alarms <= high
        and low < threshold.expected_false_alarm_rate < high
    )
    assert "expected to flag" in threshold.note and len(normal) == 200


def test_a_batch_too_small_for_the_tail_is_not_supported():
    """12 normal images cannot tell where 1% of normal parts lie: the threshold is stated as
    unsupported."""
    batch = patch_scores(np.random.default_rng(2), 12, None)
    threshold, _ = batch_threshold(
        batch, robust_z(batch.flatten(1)), RATE, fallback=0.0, cfg=AdaptConfig()
    )
    assert not threshold.supported and threshold.false_alarm_interval[1] > 4 * RATE
    assert "cannot support" in threshold.note


def test_reweighted_scores_put_the_threshold_on_the_deployed_scale():
    """With PatchCore's re-weighting an image's deployed score is its largest patch distance times a
    factor; the normal scores and the threshold follow it (else the threshold would sit above every
    deployed score)."""
    batch = patch_scores(np.random.default_rng(3), 120, None)
    z = robust_z(batch.flatten(1))
    plain, normal = batch_threshold(batch, z, RATE, fallback=0.0, cfg=AdaptConfig())
    deployed = 0.5 * batch.flatten(1).amax(1).numpy()
    halved, halved_normal = batch_threshold(
        batch, z, RATE, fallback=0.0, cfg=AdaptConfig(), image_scores=deployed
    )
    assert halved.value == pytest.approx(0.5 * plain.value) and np.allclose(
        halved_normal, 0.5 * normal
    )
    assert halved.false_alarm_interval == pytest.approx(plain.false_alarm_interval)


def test_a_collapse_note_reads_whole_where_the_law_gave_none():
    from patchshift.core.engine.threshold import gumbel_threshold

    kept = gumbel_threshold(
        np.arange(20.0), 0.0, fallback=100.0
    )  # rate 0: the parent's threshold, no law, no note
    raw, normal = np.arange(20.0) + 5.0, np.arange(20.0)  # every image a suspect, none above 100
    flagged = kept.with_suspects(raw, normal)
    assert flagged.recall_collapses and flagged.note.startswith(
        "it flags 0% of the 20 target images"
    )
