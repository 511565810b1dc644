"""A version's threshold from known-good images: the law by hand, the new version, the route and the
command."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import normal_image, plant_defect
from PIL import Image

from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.core.engine.recalibration import known_good_threshold, recalibrated
from patchshift.service.cli import main


def test_the_threshold_is_the_score_of_the_conformal_rank_with_the_beta_law_of_its_rate() -> None:
    # 200 scores 1..200 at 1%: rank ceil(201 * 0.99) = 199, the score 199 (the 2nd highest); a new
    # good part lands above it with probability 2 / 201, and the share above it is Beta(2, 199)
    estimate = known_good_threshold(np.arange(1.0, 201.0), 0.01)
    assert estimate.value == 199.0
    assert estimate.expected_false_alarm_rate == pytest.approx(2 / 201)
    # Beta(2, b)'s CDF is 1 - (1 - x)^b (1 + b x): its 5th and 95th percentiles for b = 199
    low, high = estimate.false_alarm_interval
    for x, p in ((low, 0.05), (high, 0.95)):
        assert 1 - (1 - x) ** 199 * (1 + 199 * x) == pytest.approx(p, abs=1e-6)
    assert estimate.supported and high < 0.04 and "2nd highest of 200" in estimate.note
    # 10 scores at 5%: rank ceil(11 * 0.95) = 11 > 10, so the highest; Beta(1, 10): 1 / 11
    # expected, 95th percentile 1 - 0.05^(1/10) = 25.9%, more than 4 x 5%: not supported, and the
    # note says how many images would be (the fewest N with 1 - 0.05^(1/N) <= 20%: 14)
    estimate = known_good_threshold(np.arange(1.0, 11.0), 0.05)
    assert estimate.value == 10.0
    assert estimate.expected_false_alarm_rate == pytest.approx(1 / 11)
    assert estimate.false_alarm_interval[1] == pytest.approx(1 - 0.05 ** (1 / 10))
    assert not estimate.supported and "about 14 pin it" in estimate.note
    # 20 scores at 20%: rank ceil(21 * 0.8) = 17, the score 17 (4th highest), 4 / 21 expected
    estimate = known_good_threshold(np.arange(1.0, 21.0), 0.2)
    assert (estimate.value, estimate.expected_false_alarm_rate) == (17.0, pytest.approx(4 / 21))
    # ties: the rank's score, whatever its neighbours (18 at 15%: rank ceil(19 * 0.85) = 17)
    assert known_good_threshold(np.r_[np.ones(16), 2.0, 3.0], 0.15).value == 2.0


@pytest.mark.parametrize(
    ("scores", "rate", "error", "message"),
    [
        (np.arange(4.0), 0.01, DatasetError, "4 known-good image(s) are too few"),
        (np.arange(10.0), 0.0, ConfigError, "above 0 and below 1"),
        (np.r_[np.arange(9.0), np.nan], 0.01, DatasetError, "non-finite"),
    ],
)
def test_images_that_cannot_give_a_threshold_are_refused_with_the_reason(
    scores, rate, error, message
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        known_good_threshold(scores, rate)


def shifted(images: list[np.ndarray]) -> torch.Tensor:
    """(N, 3, S, S) model inputs of the images under a darker light with less contrast."""
    from patchshift.core.common.images import to_tensor

    return to_tensor([np.clip(0.55 * im.astype(np.float32) + 10, 0, 255) for im in images])


def test_a_version_flagging_every_good_part_under_a_new_light_gets_a_threshold_that_holds(
    fitted,
) -> None:
    rng = np.random.default_rng(7)
    known_good = shifted([normal_image(rng) for _ in range(40)])
    fresh_good = shifted([normal_image(rng) for _ in range(20)])
    fresh_bad = shifted([plant_defect(normal_image(rng), rng)[0] for _ in range(20)])

    def flagged(model, images):
        scores, _ = model.score_batches([images])
        return float((np.asarray(scores) > model.threshold).mean())

    before = flagged(fitted, fresh_good)
    derived, estimate = recalibrated(fitted, (known_good[i : i + 8] for i in range(0, 40, 8)), 0.01)
    # the new version: the law of its own scores of the known-good images, nothing else changed
    scores, _ = fitted.score_batches([known_good])
    # (batches of 8 against one of 40: float sums differ in the 6th digit)
    assert derived.threshold == pytest.approx(known_good_threshold(scores, 0.01).value, rel=1e-4)
    assert derived.provenance.calibration_scores == pytest.approx(list(scores), rel=1e-4)
    assert derived.provenance.threshold_source == "known-good"
    assert derived.provenance.details["previous_threshold"] == fitted.threshold
    assert derived.bank is fitted.bank and derived.version is None
    assert fitted.threshold != derived.threshold  # the source version is not touched
    # under the new light the fitted threshold flags most good parts; the calibrated one few, and
    # it still catches defects
    after_good, after_bad = flagged(derived, fresh_good), flagged(derived, fresh_bad)
    assert before >= 0.5, before
    assert after_good <= 0.1 and after_bad >= 0.5, (after_good, after_bad)
    assert estimate.expected_false_alarm_rate == pytest.approx(1 / 41)  # the highest of 40


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_route_writes_a_new_version_without_activating_it(client, dataset) -> None:
    files = [
        ("files", (p.name, p.read_bytes(), "image/png"))
        for p in sorted((dataset / "test" / "good").glob("*.png"))
        + sorted((dataset / "train" / "good").glob("*.png"))[:14]
    ]  # 20: two chunks of decoding and scoring
    url = "/v1/models/widget/versions/v1/calibrate"
    answer = client.post(url, files=files, data={"false_alarm_rate": "0.05"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["version"], body["parent"], body["known_good_images"]) == ("v2", "v1", 20)
    assert body["false_alarm_rate"] == 0.05 and body["threshold_estimate"]["note"]
    model = client.get("/v1/models/widget").json()
    assert model["active_version"] == "v1"
    v2 = next(v for v in model["versions"] if v["version"] == "v2")
    assert v2["threshold"] == pytest.approx(body["threshold"])
    assert (v2["parent"], v2["threshold_source"]) == ("v1", "known-good")
    # what the route stored is what the core gives for those images
    from patchshift.core.artifact import load_model
    from patchshift.core.common.images import load_target

    v1 = client.app.state.serving.get("widget")
    scores, _ = v1.score_batches([load_target([f[1][1] for f in files], v1.config.image_size)])
    assert body["threshold"] == pytest.approx(known_good_threshold(scores, 0.05).value)
    stored = load_model(client.app.state.store.version_dir("widget", "v2"), "cpu")
    assert stored.threshold == pytest.approx(body["threshold"])


@pytest.mark.parametrize(
    ("version", "n_files", "data", "status", "message"),
    [
        ("v1", 3, {}, 422, "3 known-good image(s) are too few"),
        ("v1", 6, {"false_alarm_rate": "0.7"}, 422, "false_alarm_rate"),
        ("v9", 6, {}, 404, "v9"),
        ("v1", 6, {"false_alarm_rate": "0"}, 422, "above 0 and below 1"),
        ("v1", 0, {}, 422, "not-an-image.png"),
    ],
)
def test_the_route_refuses_what_cannot_give_a_threshold(
    client, dataset, version, n_files, data, status, message
) -> None:
    paths = sorted((dataset / "train" / "good").glob("*.png"))[: n_files or 20]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    if n_files == 0:  # 20 images, the 2nd and the 18th (one in each chunk of 16) not images
        files[1] = ("files", ("truncated.png", files[1][1][1][:40], "image/png"))
        files[17] = ("files", ("not-an-image.png", b"hello", "image/png"))
    answer = client.post(f"/v1/models/widget/versions/{version}/calibrate", files=files, data=data)
    assert answer.status_code == status, answer.text
    assert message in json.dumps(answer.json())
    if n_files == 0:  # every bad file named, whichever chunk it is in
        assert [f["file"] for f in answer.json()["error"]["files"]] == [
            "truncated.png",
            "not-an-image.png",
        ]
    assert [v["version"] for v in client.get("/v1/models/widget").json()["versions"]] == ["v1"]


def test_the_command_writes_the_new_version_and_refuses_too_few_images(
    saved_model, tmp_path, capsys
) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "known-good"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i}.png").write_bytes(png(normal_image(rng)))
    out = tmp_path / "v2"
    code = main(["--no-progress", "calibrate", "--model", str(saved_model), "--images", str(folder),
                 "--out", str(out)])  # fmt: skip
    printed, err = capsys.readouterr()
    assert code == 0, err
    from patchshift.core.artifact import load_model

    derived = load_model(out, "cpu")
    assert f"-> {derived.threshold:.4f}" in printed and "highest of 12 known-good images" in printed
    assert derived.provenance.threshold_source == "known-good"

    for path in list(folder.iterdir())[4:]:
        path.unlink()
    code = main(["--no-progress", "calibrate", "--model", str(saved_model), "--images", str(folder),
                 "--out", str(tmp_path / "v3")])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "at least 5" in err
    assert not (tmp_path / "v3").exists()


def test_a_version_whose_parent_was_deleted_meanwhile_is_not_written(client) -> None:
    from patchshift.service.http_errors import NotFound

    lifecycle, store = client.app.state.lifecycle, client.app.state.store
    assert client.put("/v1/models/widget/threshold", json={"threshold": 3.0}).status_code == 200
    v1 = client.app.state.serving.for_review("widget", "v1")
    assert client.delete("/v1/models/widget/versions/v1").status_code == 204
    with pytest.raises(NotFound, match="v1 of model 'widget' was deleted"):
        lifecycle.save_derived_version("widget", "v1", v1, "calibrate a threshold")
    assert store.versions("widget") == ["v2"]
    assert lifecycle.save_derived_version("widget", "v2", v1, "calibrate a threshold") == "v3"
