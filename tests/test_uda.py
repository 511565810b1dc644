"""UDA by anomaly scarcity: clustering rule, losses, training, end to end on generated images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import normal_image, plant_defect


def test_dominant_cluster_picks_the_inlier_blob() -> None:
    from patchshift.core.uda import dominant_cluster, kmeans

    rng = np.random.default_rng(0)
    inliers = rng.normal(0, 0.1, (90, 8))
    outliers = np.concatenate(
        [rng.normal(3, 0.3, (5, 8)), rng.normal(-3, 0.3, (5, 8))]
    )  # two kinds of defect
    points = torch.tensor(np.concatenate([inliers, outliers]), dtype=torch.float32)
    found = dominant_cluster(points, 8, 0.6)
    assert found.dominant and found.majority >= 0.9 and found.sizes[0] == int(found.members.sum())
    assert (
        found.members.any() and not found.members[90:].any()
    )  # the presumed normals are all inliers
    found = dominant_cluster(points, 3, 0.6)
    assert found.members[:90].all() and not found.members[90:].any() and found.sizes == [90, 5, 5]
    labels, _ = kmeans(points, 3)
    assert sorted(torch.bincount(labels).tolist()) == [5, 5, 90]


@pytest.mark.parametrize("outlier_share", [0.1, 0.3])
def test_the_dominant_cluster_holds_only_normals_with_10_and_30_percent_outliers(
    outlier_share: float,
) -> None:
    """Hand-built features: 200 normals in one elongated mode, and defects of three kinds (each a
    blob of its own, as cracks, spots and breaks would be) making up 10% or 30% of the target.
    At the default k = 8 the largest cluster holds normals only and the target is not refused;
    with k = 2 the defect kinds have nowhere to go but in with the normals. (Not asserted, found
    here: at k = 16 with 30% defects a tight defect kind outnumbers each slice of the spread normal
    mode and becomes the largest cluster; at k = 4 a defect kind can join a normal cluster.)"""
    from patchshift.core.uda import dominant_cluster

    rng = np.random.default_rng(7)
    n_normal = 200
    n_defect = round(n_normal * outlier_share / (1 - outlier_share))
    scale = np.linspace(1.0, 0.2, 16)  # an elongated normal mode, like real feature clouds
    normals = rng.normal(0, 1, (n_normal, 16)) * scale
    kinds = [np.eye(16)[axis] * 6 for axis in (3, 7, 11)]
    defects = np.concatenate(
        [
            kind + rng.normal(0, 0.3, (n_defect // 3 + (i < n_defect % 3), 16))
            for i, kind in enumerate(kinds)
        ]
    )
    points = torch.tensor(np.concatenate([normals, defects]), dtype=torch.float32)
    assert dominant_cluster(points, 2, 0.6).members[n_normal:].any()
    found = dominant_cluster(points, 8, 0.6)
    assert found.dominant, found.message
    assert found.members[:n_normal].sum() > 0 and not found.members[n_normal:].any(), found.sizes


def test_no_dominant_cluster_is_reported() -> None:
    from patchshift.core.uda import dominant_cluster

    rng = np.random.default_rng(1)
    points = torch.tensor(
        np.concatenate([rng.normal(c, 0.1, (25, 4)) for c in (-5, 5)]), dtype=torch.float32
    )
    found = dominant_cluster(points, 8, 0.6)
    assert (
        not found.dominant
        and found.majority == 0.5
        and found.separation > 1.5
        and "no cluster dominates" in found.message
    )


def test_split_separation_hand_values_and_one_mode_is_never_refused() -> None:
    from patchshift.core.uda import dominant_cluster
    from patchshift.core.uda.clustering import split_separation

    # two point masses: the split explains everything and lambda_1 is all the variance -> pi/2
    masses = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3)
    assert split_separation(masses, torch.tensor([0, 0, 0, 1, 1, 1])) == pytest.approx(math.pi / 2)
    # 1-D uniform points split at the middle: explained 3/4 (variance 1/12 -> within 1/48), lambda_1
    # share 1
    line = torch.linspace(-1, 1, 2001).unsqueeze(1)
    assert split_separation(line, (line[:, 0] > 0).long()) == pytest.approx(
        0.75 * math.pi / 2, rel=1e-3
    )
    # one Gaussian mode splits about evenly, but not into separate groups: adapted, not refused
    blob = torch.randn(400, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(
        2, 0.5, 16
    )
    found = dominant_cluster(blob, 8, 0.6)
    assert found.majority < 0.6 and found.separation < 1.2 and found.dominant


def test_info_nce_and_dsvdd_hand_computed() -> None:
    from patchshift.core.uda import dsvdd_loss, info_nce

    source = torch.tensor([[2.0, 0.0]])  # cosine similarity ignores the length
    targets = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    # -log(e^(1/0.5) / (e^(1/0.5) + e^(0/0.5))) = log(1 + e^-2)
    assert float(info_nce(source, targets[:1], targets, tau=0.5)) == pytest.approx(
        math.log(1 + math.exp(-2)), rel=1e-6
    )
    embeddings = torch.tensor([[1.0, 1.0], [3.0, 1.0]])
    assert float(dsvdd_loss(embeddings, torch.tensor([1.0, 1.0]))) == pytest.approx(
        2.0
    )  # (0 + 4) / 2


def _images(
    rng: np.random.Generator,
    n: int,
    factor: float = 1.0,
    defects: int = 0,
    side: int = 24,
    low_contrast: bool = False,
) -> torch.Tensor:
    out = []
    for i in range(n):
        image = normal_image(rng)
        if i < defects:
            image, _ = plant_defect(image, rng, side=side)
        image = image.astype(np.float32) * factor
        if low_contrast:  # a new camera: darker, flatter
            image = (image - 128) * 0.4 + 60
        out.append(np.clip(image, 0, 255))
    return torch.tensor(np.stack(out)).permute(0, 3, 1, 2) / 255


def test_training_keeps_the_centre_and_lowers_the_loss_and_psi_stays_frozen() -> None:
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.model import build_encoder
    from patchshift.core.uda.train import fit_uda

    rng = np.random.default_rng(2)
    cfg = UDAConfig(
        image_size=96, epochs=4, batch_size=8, clusters=3, lr=1e-3, holdout_fraction=0.2
    )
    source, target = _images(rng, 20), _images(rng, 20, factor=0.6, defects=2)
    model, report = fit_uda(source, target, cfg, device="cpu")
    fresh, _ = build_encoder(cfg, torch.device("cpu"))
    train_idx = np.sort(np.random.default_rng(cfg.seed).permutation(20)[4:])
    with torch.inference_mode():
        expected_centre = fresh(source[train_idx]).mean(dim=0)
    torch.testing.assert_close(
        model.centre, expected_centre, rtol=1e-4, atol=1e-4
    )  # set once, never moved
    assert np.mean(report.losses[-3:]) < np.mean(report.losses[:3])
    psi_state, fresh_state = report.psi.state_dict(), fresh.state_dict()
    assert all(torch.equal(psi_state[k], fresh_state[k]) for k in fresh_state)
    assert any(not torch.equal(model.encoder.state_dict()[k], fresh_state[k]) for k in fresh_state)
    assert (
        report.cluster_sizes and sum(report.cluster_sizes) == 20 and math.isfinite(model.threshold)
    )


@pytest.fixture
def one_thread():
    """Training sums depend on how many threads split them: one thread makes the run repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_uda_beats_source_only_under_a_shift(one_thread) -> None:
    from patchshift.core.evaluation.metrics import image_auroc
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.train import fit_uda

    rng = np.random.default_rng(3)
    cfg = UDAConfig(
        image_size=96, epochs=4, batch_size=8, clusters=3, lr=1e-3, holdout_fraction=0.2
    )
    source = _images(rng, 16)
    target = _images(rng, 20, defects=2, side=10, low_contrast=True)  # 10% defective
    test = _images(rng, 20, defects=10, side=10, low_contrast=True)
    labels = np.r_[np.ones(10), np.zeros(10)]
    source_only, _ = fit_uda(source, None, cfg, device="cpu")
    adapted, report = fit_uda(source, target, cfg, device="cpu")
    base = image_auroc(labels, source_only.score_tensor(test))
    uda = image_auroc(labels, adapted.score_tensor(test))
    assert uda > base + 0.2, (uda, base, report.message)  # measured: 0.17 -> 0.62


def test_target_without_a_dominant_cluster_is_refused_with_the_reason() -> None:
    from patchshift.core.common.errors import DatasetError
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.train import fit_uda

    rng = np.random.default_rng(4)
    cfg = UDAConfig(image_size=96, epochs=1, batch_size=8, clusters=2)
    source = _images(rng, 10)
    target = torch.cat(
        [_images(rng, 10, factor=0.3), _images(rng, 10, factor=1.6)]
    )  # two equal groups
    with pytest.raises(DatasetError, match="no cluster dominates"):
        fit_uda(source, target, cfg, device="cpu")


def test_uda_version_saves_loads_and_scores_the_same(tmp_path) -> None:
    from patchshift.core.artifact import load_model, read_manifest, save_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.train import fit_uda

    rng = np.random.default_rng(5)
    cfg = UDAConfig(image_size=64, epochs=1, batch_size=4, clusters=2, embedding_dim=16)
    model, _ = fit_uda(
        _images(rng, 8)[..., :64, :64],
        _images(rng, 10, factor=0.7, defects=1)[..., :64, :64],
        cfg,
        device="cpu",
    )
    out = save_model(model, tmp_path / "uda-v1")
    assert read_manifest(out).kind == "uda" and model.version == "uda-v1"
    loaded = load_model(out, device="cpu")
    probe = _images(rng, 3)[..., :64, :64]
    np.testing.assert_allclose(
        loaded.score(probe).scores.numpy(), model.score(probe).scores.numpy(), rtol=1e-5
    )
    assert loaded.threshold == model.threshold and loaded.score(probe).anomaly_maps is None
    assert loaded.drift_reference is not None and loaded.drift_reference.mean.shape == (16,)
    encoder = out / "encoder.safetensors"
    encoder.write_bytes(encoder.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="encoder.safetensors"):
        load_model(out, device="cpu")


TINY_CLIP = {  # an open_clip architecture small enough for a unit test
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def test_clip_psi_loads_from_a_local_checkpoint_and_stays_frozen(tmp_path) -> None:
    import json

    open_clip = pytest.importorskip("open_clip")
    from patchshift.core.common.errors import ConfigError
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.clip import ClipImageEncoder
    from patchshift.core.uda.train import fit_uda

    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    reference = open_clip.create_model("tiny-clip")
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(reference.state_dict(), checkpoint)

    rng = np.random.default_rng(6)
    cfg = UDAConfig(
        image_size=64,
        epochs=1,
        batch_size=4,
        clusters=2,
        embedding_dim=16,
        encoder="clip",
        clip_model=str(config),
        clip_checkpoint=str(checkpoint),
    )
    _, report = fit_uda(
        _images(rng, 6)[..., :64, :64],
        _images(rng, 10, factor=0.8, defects=1)[..., :64, :64],
        cfg,
        device="cpu",
    )
    assert isinstance(report.psi, ClipImageEncoder) and report.psi.size == (32, 32)
    loaded = report.psi.clip.state_dict()
    assert all(
        torch.equal(loaded[k], v) for k, v in reference.state_dict().items()
    )  # the file's weights, untouched by training
    assert sum(report.cluster_sizes) == 10

    with pytest.raises(ConfigError, match="needs clip_checkpoint"):
        UDAConfig(encoder="clip")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    for bad, message in ((tmp_path / "missing.pt", "does not exist"), (broken, "does not load")):
        bad_cfg = UDAConfig(
            image_size=64,
            epochs=1,
            batch_size=4,
            clusters=2,
            encoder="clip",
            clip_model=str(config),
            clip_checkpoint=str(bad),
        )
        with pytest.raises(ConfigError, match=message):
            fit_uda(
                _images(rng, 4)[..., :64, :64],
                _images(rng, 6)[..., :64, :64],
                bad_cfg,
                device="cpu",
            )


def test_uda_reports_progress_and_cancels_between_steps() -> None:
    from patchshift.core.common.errors import CancelledError
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.train import fit_uda

    rng = np.random.default_rng(7)
    cfg = UDAConfig(image_size=64, epochs=3, batch_size=4, clusters=2, embedding_dim=16)
    source, target = _images(rng, 9)[..., :64, :64], _images(rng, 8, factor=0.8)[..., :64, :64]
    seen: list[tuple[str, int, int]] = []
    fit_uda(
        source,
        target,
        cfg,
        device="cpu",
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    steps = 3 * 2  # 8 training images (one of 9 held out) in batches of 4, three epochs
    assert [s for s in seen if s[0] == "uda"] == [("uda", i, steps) for i in range(1, steps + 1)]
    calls = []
    with pytest.raises(CancelledError):
        fit_uda(source, target, cfg, device="cpu", cancel=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3  # checked before every step; stopped at the third


def test_a_uda_version_inherits_the_encoder_and_from_a_uda_parent_its_input_size():
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.uda_config import inherited_settings

    from_patchcore = inherited_settings(
        ModelConfig(backbone="tf_efficientnet_lite0", image_size=320)
    )
    assert from_patchcore == {
        "backbone": "tf_efficientnet_lite0",
        "weights": None,
    }  # the PatchCore input size is not the encoder's
    from_uda = inherited_settings(UDAConfig(image_size=(96, 64), weights="/w.pth"))
    assert from_uda["image_size"] == (96, 64) and from_uda["weights"] == "/w.pth"


def grain_image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A new texture family: round grains on a square lattice (period 10 px, random phase), nothing
    like the woven diagonal gratings the source model was fitted on."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + rng.uniform(0, 10, (2, 1, 1))
    dist = np.hypot((y % 10) - 5, (x % 10) - 5)
    grey = 0.35 + 0.35 * np.clip((4 - dist) / 2, 0, 1) + rng.normal(0, 0.02, (size, size))
    return (np.clip(np.stack([grey] * 3, -1), 0, 1) * 255).astype(np.uint8)


def grain_set(rng: np.random.Generator, n: int, n_defective: int) -> tuple[list[bytes], np.ndarray]:
    import io

    from PIL import Image

    files, masks = [], []
    for i in range(n):
        image, mask = grain_image(rng), np.zeros((96, 96), bool)
        if i < n_defective:  # a patch of the old family's texture: normal to the source model
            top, left = rng.integers(8, 96 - 24 - 8, 2)
            image[top : top + 24, left : left + 24] = normal_image(rng)[:24, :24]
            mask[top : top + 24, left : left + 24] = True
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
        masks.append(mask)
    return files, np.stack(masks)


@pytest.mark.parametrize("defective_share", [0.1, 0.3])
def test_uda_beats_source_only_on_a_new_texture_family(fitted, defective_share: float) -> None:
    """The source model knows woven gratings; the line now makes a grain-textured part. uda builds a
    memory of the new family from the dominant cluster of 40 unlabeled images (10% or 30% with
    a patch of the old family's texture) and finds held-out defects that the source model takes for
    normal; its heatmaps point at them, and the label-free gate finds it ranks the batch better
    (40 images are too few for the gate to trust its threshold: the parent would stay active)."""
    from patchshift.core.adapt import adapt
    from patchshift.core.adapt.methods import get_adapter
    from patchshift.core.common.images import load_target
    from patchshift.core.evaluation.metrics import image_auroc

    rng = np.random.default_rng(11)
    n_defective = round(40 * defective_share)
    target, _ = grain_set(rng, 40, n_defective)  # the first n_defective are the defective ones
    test, masks = grain_set(rng, 24, 12)
    labels = masks.any(axis=(1, 2)).astype(int)
    cfg = get_adapter("uda").configure(fitted, {})
    adapted, report = adapt(fitted, target, cfg, judge=True)
    images = load_target(test, fitted.config.image_size)
    before, _ = fitted.score_batches([images])
    after, maps = adapted.score_batches([images])
    assert image_auroc(labels, after) >= image_auroc(labels, before) + 0.2
    assert image_auroc(labels, after) >= 0.9, (after, report.message)
    # the memory is built from the dominant cluster: none of the defective images is in it
    sources = torch.unique(report.memory_image)
    assert len(sources) == report.details["memory_images"] and sources.min() >= n_defective
    gate = report.gate
    assert gate.agreement_after > gate.agreement_before, gate.reason
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps[labels == 1]]
    assert np.mean([mask[p] for mask, p in zip(masks[labels == 1], peaks, strict=True)]) >= 0.8


MEMORY_PROBE = """
import resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_uda import grain_set
from patchshift.core.adapt import adapt
from patchshift.core.adapt.methods import get_adapter
from patchshift.core.artifact import load_model
from patchshift.core.common.images import load_target

model = load_model({model!r}, device="cpu")
files, _ = grain_set(np.random.default_rng(5), {n}, {n} // 10)
images = load_target(files, model.config.image_size)
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
adapted, report = adapt(model, images, get_adapter("uda").configure(model, {{}}))
# VmHWM: this process's own peak (ru_maxrss would carry the forking parent's over)
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(peak - before, report.details["memory_images"])
"""


def test_uda_memory_stays_bounded_on_a_few_hundred_images(saved_model) -> None:
    """The bound: the peak rise over what the decoded images take stays under 64 MiB plus 4 times
    the bytes of the target's patch features (held once; the mutual scores' distance blocks, the
    coreset's working set and the fold scoring are each bounded by them or by a fixed block). An
    all-pairs distance between the 240 x 144 patches would take 4.5 GB. Measured in a fresh
    process, so nothing else counts (36 MiB at 300 images)."""
    import subprocess
    import sys
    from pathlib import Path

    n_images = 240
    script = MEMORY_PROBE.format(
        tests=str(Path(__file__).parent), model=str(saved_model), n=n_images
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rise, memory_images = map(int, done.stdout.split()[-2:])
    side = 96 // 8  # the tiny model's 96-px input at stride 8
    feature_bytes = n_images * side * side * 64 * 4  # 64 channels of float32
    assert memory_images < n_images and rise < 64 * 2**20 + 4 * feature_bytes, rise / 2**20


def test_uda_refuses_fewer_than_two_images_per_cluster(fitted) -> None:
    from patchshift.core.adapt import adapt
    from patchshift.core.adapt.methods import get_adapter
    from patchshift.core.common.errors import DatasetError

    target, _ = grain_set(np.random.default_rng(2), 16, 0)
    cfg = get_adapter("uda").configure(fitted, {"clusters": 10})
    with pytest.raises(DatasetError, match=r"at least 20 target images .* got 16; .*\(--clusters"):
        adapt(fitted, target, cfg)
