import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import normal_image, texture_defect
from service_helpers import (
    files_field,
    named_bytes,
    store_state,
    wait_job,
)

from patchshift.core.adapt import METHODS, AdaptConfig, adapt, get_adapter
from patchshift.core.common.errors import (
    CancelledError,
    ConfigError,
    DatasetError,
    InvalidImageError,
)
from patchshift.core.common.images import to_tensor
from patchshift.core.engine.backbone import batchnorm_state
from patchshift.core.evaluation.corruptions import corrupt
from patchshift.core.evaluation.metrics import image_auroc


@pytest.fixture(scope="module")
def shifted():
    """24 normal and 6 texture-defect images under defocus blur 5, where no adaptation suffers."""
    rng = np.random.default_rng(0)
    images = [normal_image(rng) for _ in range(24)] + [
        texture_defect(normal_image(rng), rng) for _ in range(6)
    ]
    labels = np.array([0] * 24 + [1] * 6)
    return corrupt(to_tensor(images), "defocus_blur", 5, seed=1), labels


def all_parameters(model):
    return {name: p.detach().clone() for name, p in model.extractor.named_parameters()}


def test_only_batchnorm_affine_changes(fitted, shifted):
    images, _ = shifted
    before_params = all_parameters(fitted)
    before_bn = batchnorm_state(fitted.extractor)
    adapted, report = adapt(
        fitted, images[:8], AdaptConfig(method="roda", epochs=1, reestimate_stats=False)
    )
    after = all_parameters(adapted)
    bn_affine = {
        k
        for k in after
        if k.endswith((".weight", ".bias"))
        and k.rsplit(".", 1)[0] in {n.rsplit(".", 1)[0] for n in before_bn}
    }
    changed = {k for k in after if not torch.equal(after[k], before_params[k])}
    assert changed and changed <= bn_affine
    after_bn = batchnorm_state(adapted.extractor)
    assert all(torch.equal(after_bn[k], before_bn[k]) for k in before_bn if "running" in k)
    assert adapted.bank.data_ptr() == fitted.bank.data_ptr() and adapted.index is fitted.index
    # the source model itself is untouched
    assert all(torch.equal(p, before_params[k]) for k, p in all_parameters(fitted).items())
    assert report.steps == 1 and len(report.losses) == 1
    assert adapted.provenance.method == "roda" and adapted.provenance.parent == fitted.version


def test_roda_raises_auroc_under_blur(fitted, shifted):
    images, labels = shifted
    before = image_auroc(labels, fitted.score(images).scores.numpy())
    adapted, _ = adapt(fitted, images, AdaptConfig(method="roda", epochs=2))
    after = image_auroc(labels, adapted.score(images).scores.numpy())
    assert before < 0.9
    assert after > before + 0.05


def test_bn_stats_only_changes_running_statistics(fitted, shifted):
    images, _ = shifted
    adapted, _ = adapt(fitted, images, AdaptConfig(method="bn-stats"))
    before, after = batchnorm_state(fitted.extractor), batchnorm_state(adapted.extractor)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith((".weight", ".bias")))


@pytest.mark.parametrize(
    "method",
    [
        m
        for m in METHODS
        if m != "roda"
        and get_adapter(m).config_type is AdaptConfig
        and not get_adapter(m).moves_memory
    ],
)
def test_every_batchnorm_method_runs_on_one_image(fitted, shifted, method):
    images, _ = shifted
    adapted, report = adapt(fitted, images[:1], AdaptConfig(method=method, epochs=1))
    assert np.isfinite(adapted.threshold) and report.n_images == 1
    assert torch.isfinite(adapted.score(images[:2]).scores).all()


def test_only_defective_images_still_give_a_version(fitted):
    rng = np.random.default_rng(3)
    images = to_tensor([texture_defect(normal_image(rng), rng) for _ in range(4)])
    adapted, _ = adapt(fitted, images, AdaptConfig(method="roda", epochs=1))
    assert np.isfinite(adapted.threshold)


def test_unreadable_files_are_named(fitted, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"nope")
    with pytest.raises(InvalidImageError, match="broken.png"):
        adapt(fitted, [bad], AdaptConfig())
    with pytest.raises(DatasetError, match="at least one image"):
        adapt(fitted, [], AdaptConfig())
    with pytest.raises(ConfigError, match="unknown adaptation method"):
        adapt(fitted, torch.rand(1, 3, 96, 96), AdaptConfig(method="magic"))


def test_cancellation_leaves_source_untouched(fitted, shifted):
    images, _ = shifted
    before = batchnorm_state(fitted.extractor)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError):
        adapt(fitted, images, AdaptConfig(method="roda", epochs=3), cancel=cancel)
    after = batchnorm_state(fitted.extractor)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_views_keep_shape_for_rectangular_inputs():
    from patchshift.core.adapt.base import make_views

    batch = torch.rand(2, 3, 32, 48)
    views = make_views(
        batch, AdaptConfig(augment="dihedral", views=4), torch.Generator().manual_seed(0)
    )
    assert views.shape == (2, 4, 3, 32, 48)
    assert torch.equal(views[:, 0], batch)
    assert not torch.equal(views[:, 1], batch)
    copies = make_views(batch, AdaptConfig(augment="none", views=3), torch.Generator())
    assert all(torch.equal(copies[:, v], batch) for v in range(3))


def test_step_size_keeps_the_pixel_budget():
    from patchshift.core.adapt.base import step_size

    cfg = AdaptConfig(views=4, batch_size=8, max_step_megapixels=4.5)
    assert step_size(cfg, 224, 576) == 8  # 8 x 4 x 0.129 MP = 4.13 MP fits
    assert step_size(cfg, 512, 512) == 4  # 1.05 MP per image
    assert step_size(cfg, 4096, 4096) == 1  # never zero


def test_target_views_are_fixed_per_image_and_cached_only_below_the_cut(fitted):
    from patchshift.core.adapt.base import TargetInputs, make_views

    extractor = fitted.extractor
    target = torch.rand(5, 3, 64, 64)
    cfg = AdaptConfig(augment="dihedral", views=3, batch_size=2)
    inputs = TargetInputs(
        extractor, target, cfg, 0, torch.Generator().manual_seed(3), torch.device("cpu")
    )
    assert (
        inputs.cached is None
    )  # nothing frozen below: views made per step, memory independent of the target size
    expected = torch.cat(
        [
            make_views(target[s : s + 2], cfg, g)
            for g in [torch.Generator().manual_seed(3)]
            for s in range(0, 5, 2)
        ]
    )
    order = torch.tensor([4, 0, 2])
    got = inputs.batch(order).reshape(3, 3, 3, 64, 64)
    torch.testing.assert_close(
        got, extractor.normalise(expected[order].reshape(-1, 3, 64, 64)).reshape(3, 3, 3, 64, 64)
    )
    cut = extractor.backbone.first_stage_layer
    cached = TargetInputs(
        extractor, target, cfg, cut, torch.Generator().manual_seed(3), torch.device("cpu")
    )
    assert cached.cached is not None and len(cached.cached) == 5
    with torch.inference_mode():
        direct = extractor.backbone.prefix(got.reshape(-1, 3, 64, 64), cut)
    torch.testing.assert_close(cached.batch(order), direct, rtol=1e-4, atol=1e-5)


def test_feature_stage_training_leaves_early_layers_alone(fitted, shifted):
    images, _ = shifted
    cfg = AdaptConfig(
        method="roda", epochs=1, reestimate_stats=False, trained_layers="feature-stages"
    )
    adapted, report = adapt(fitted, images[:8], cfg)
    backbone = adapted.extractor.backbone
    cut = backbone.first_stage_layer
    assert cut > 0 and report.details["trained_from_layer"] == backbone.layer_names[cut]
    before = dict(fitted.extractor.backbone.named_parameters())
    names = list(backbone.layers.keys())
    for name, parameter in backbone.named_parameters():
        layer = name.split(".")[1]
        if names.index(layer) < cut:
            assert torch.equal(parameter, before[name]), name


def test_a_config_of_another_method_kind_is_refused_by_name(fitted, shifted):
    images, _ = shifted
    with pytest.raises(ConfigError, match="method uda-global takes a UDAConfig"):
        adapt(fitted, images[:4], AdaptConfig(method="uda-global"))


def test_each_method_takes_only_its_own_settings_and_parents(fitted):
    uda_global, roda = get_adapter("uda-global"), get_adapter("roda")
    with pytest.raises(ConfigError, match="augment is not a setting of method uda-global"):
        uda_global.configure(fitted, {"augment": "none", "epochs": 1})
    with pytest.raises(ConfigError, match="clusters is not a setting of method roda"):
        roda.configure(fitted, {"clusters": 4})
    cfg = uda_global.configure(fitted, {"epochs": 2, "image_size": "64"})
    assert cfg.method == "uda-global" and cfg.epochs == 2 and cfg.image_size == (64, 64)
    assert cfg.backbone == fitted.config.backbone  # inherited from the parent version
    assert roda.configure(fitted, {"epochs": 3}) == AdaptConfig(method="roda", epochs=3)
    assert uda_global.accepts(object()) and roda.accepts(fitted) and not roda.accepts(object())
    uda = get_adapter("uda")  # a memory of the new domain: its defaults differ from target-memory's
    with pytest.raises(ConfigError, match="epochs is not a setting of method uda"):
        uda.configure(fitted, {"epochs": 2})
    assert uda.configure(fitted, {"clusters": 5}) == AdaptConfig(
        method="uda", memory="target", clusters=5
    )
    assert uda.accepts(fitted) and not uda.accepts(object())


def test_adabn_statistics_weigh_images_not_batches():
    """8 black images and 1 image of 9s in batches of 8: the target's mean is 1, not the 4.5 of two
    equally weighted batches."""
    from patchshift.core.adapt.base import reestimate_statistics

    extractor = torch.nn.Sequential(torch.nn.BatchNorm2d(1))
    target = torch.cat([torch.zeros(8, 1, 2, 2), torch.full((1, 1, 2, 2), 9.0)])
    reestimate_statistics(extractor, target, batch_size=8, device=torch.device("cpu"))
    layer = extractor[0]
    assert layer.running_mean.item() == pytest.approx(1.0)
    assert layer.momentum == 0.1 and not layer.training  # the layer's own settings are back


def test_non_finite_target_scores_fail_the_adaptation_with_a_hint():
    from patchshift.core.common.errors import AdaptationError
    from patchshift.core.common.finite import refuse_non_finite_scores

    refuse_non_finite_scores(np.array([1.0, 2.0]))
    with pytest.raises(
        AdaptationError,
        match=r"2 target image\(s\) got a non-finite score.*lower lr \(it was 0.01\)",
    ):
        refuse_non_finite_scores(np.array([1.0, np.nan, np.inf]), lr=0.01)


def test_an_unknown_batchnorm_step_is_refused_by_name(fitted, shifted):
    from patchshift.core.adapt.base import AdaptReport
    from patchshift.core.adapt.batchnorm import batchnorm_step

    with pytest.raises(
        ConfigError, match="unknown BatchNorm step 'rodda'; choose from none, stats"
    ):
        batchnorm_step(
            fitted,
            shifted[0][:2],
            "rodda",
            AdaptConfig(method="roda"),
            AdaptReport("roda", 2),
            None,
            None,
        )


def test_adabn_gives_the_layers_their_settings_back_when_cancelled():
    from patchshift.core.adapt.base import reestimate_statistics

    extractor = torch.nn.Sequential(torch.nn.BatchNorm2d(1))
    calls = iter([False, True])
    with pytest.raises(CancelledError):
        reestimate_statistics(
            extractor, torch.zeros(4, 1, 2, 2), 2, torch.device("cpu"), cancel=lambda: next(calls)
        )
    assert extractor[0].momentum == 0.1 and not extractor[0].training


def test_diverged_adaptation_fails_and_writes_nothing(
    client, store: Path, dataset: Path, monkeypatch
) -> None:
    """A training run that leaves the finite numbers fails the job with the reason; no version,
    ACTIVE kept."""
    import patchshift.core.adapt as adapt_module
    from patchshift.core.engine.backbone import batchnorm_layers

    def diverging(model, target, cfg, loss, report_, progress, cancel):
        extractor = copy.deepcopy(model.extractor)
        for layer in list(batchnorm_layers(extractor).values())[-3:]:
            layer.weight.data.fill_(float("inf"))
        return extractor

    monkeypatch.setattr(adapt_module.batchnorm, "train_affine", diverging)
    before = store_state(store)
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:6])
    response = client.post(
        "/v1/models/widget/adapt", files=files_field(images), data={"method": "roda", "lr": "1"}
    )
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["job_id"])
    assert job["status"] == "failed" and job["error"].startswith("adaptation diverged:"), job
    assert "BatchNorm values are not finite; try a lower lr (it was 1)" in job["error"]
    assert store_state(store)[1] == before[1]
    assert [v for v in store_state(store)[0] if not v.startswith(".")] == ["v1"]


def test_bn_stats_reports_progress_and_stage(fitted, dataset: Path) -> None:
    from patchshift.core.adapt import AdaptConfig, adapt

    calls: list[tuple[str, int, int]] = []
    paths = sorted((dataset / "train/good").glob("*.png"))[:20]
    adapt(
        fitted,
        paths,
        AdaptConfig(method="bn-stats"),
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    stages = [c[0] for c in calls]
    assert stages[0] == "statistics" and stages[-1] == "threshold"
    statistics = [c for c in calls if c[0] == "statistics"]
    assert len(statistics) >= 2 and statistics[-1][1:] == (20, 20)  # batch size 8: 8, 16, 20
