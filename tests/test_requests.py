"""A fit or adaptation request is validated once (service/requests.py): the CLI, the HTTP routes
and the worker refuse it with the same message."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import (
    files_field,
    named_bytes,
    wait_job,
)

from patchshift.core.common.errors import ConfigError, DatasetError
from patchshift.service.cli import main
from patchshift.service.requests import (
    ACTIVATE_IF_BETTER,
    adaptation_config,
    check_adaptation_images,
    check_fit_images,
    fit_config,
)


def cli_error(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(["--no-progress", *argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip()


def png_files(dataset: Path, n: int):
    paths = sorted((dataset / "train" / "good").glob("*.png"))[:n]
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


@pytest.mark.parametrize(
    ("flag", "field", "value", "message"),
    [
        ("--coreset-ratio", "coreset_ratio", "2", "coreset_ratio must be in (0, 1], got 2.0"),
        ("--feature-dim", "feature_dim", "1", "feature_dim must be in [2, 4096], got 1"),
    ],
)
def test_a_fit_setting_out_of_range_reads_the_same_from_the_cli_and_the_api(
    client, dataset, tmp_path, capsys, flag, field, value, message
):
    code, err = cli_error(
        capsys, "fit", "--data", str(dataset), "--out", str(tmp_path / "x"), flag, value
    )
    assert code == 2 and message in err, err
    response = client.post(
        "/v1/models/widget/fit", files=png_files(dataset, 2), data={field: value}
    )
    assert response.status_code == 422 and response.json()["error"]["message"] == message


def test_an_adaptation_setting_out_of_range_reads_the_same_from_the_cli_and_the_api(
    client, dataset, saved_model, tmp_path, capsys
):
    message = "epochs must be in [1, 100], got 0"
    argv = [
        "adapt",
        "--model",
        str(saved_model),
        "--images",
        str(dataset),
        "--out",
        str(tmp_path / "a"),
    ]
    code, err = cli_error(capsys, *argv, "--epochs", "0")
    assert code == 2 and message in err, err
    response = client.post(
        "/v1/models/widget/adapt",
        files=png_files(dataset, 5),
        data={"method": "roda", "epochs": "0"},
    )
    assert response.status_code == 422 and response.json()["error"]["message"] == message


def test_a_rule_across_fields_reads_the_same_from_the_cli_and_the_api(
    client, dataset, tmp_path, capsys
):
    """Holdout calibration that holds nothing out needs a fixed threshold, from any front end."""
    with pytest.raises(ConfigError) as refused:
        fit_config({"calibration": "holdout", "holdout_fraction": 0.0})
    message = str(refused.value)
    argv = ["fit", "--data", str(dataset), "--out", str(tmp_path / "x")]
    settings = ["--calibration", "holdout", "--holdout-fraction", "0"]
    code, err = cli_error(capsys, *argv, *settings)
    assert code == 2 and message in err, err
    response = client.post(
        "/v1/models/widget/fit",
        files=png_files(dataset, 2),
        data={"calibration": "holdout", "holdout_fraction": "0"},
    )
    assert response.status_code == 422 and response.json()["error"]["message"] == message
    # with the threshold fixed by the caller (CLI --threshold) nothing needs holding out
    assert fit_config({"calibration": "holdout", "holdout_fraction": 0.0}, fixed_threshold=True)


def test_fit_and_adaptation_rules_by_hand(fitted) -> None:
    from patchshift.core.adapt import get_adapter

    with pytest.raises(ConfigError, match="unexpected keyword argument 'colour'"):
        fit_config({"colour": "red"})
    with pytest.raises(ConfigError, match="feature_dim must be at most 224"):
        fit_config({"feature_dim": 1000})
    with pytest.raises(DatasetError, match="at least 2 normal images"):
        check_fit_images(1)
    check_fit_images(2)
    roda, uda = get_adapter("roda"), get_adapter("uda-global")
    assert adaptation_config(roda, fitted, "v1", {"epochs": 3}).epochs == 3
    with pytest.raises(ConfigError, match="clusters is not a setting of method roda"):
        adaptation_config(roda, fitted, "v1", {"clusters": 4})
    with pytest.raises(ConfigError, match="source images belong to methods that learn from them"):
        check_adaptation_images(roda, 10, 2)
    with pytest.raises(ConfigError, match="method uda-global needs source images"):
        check_adaptation_images(uda, 10, 0)
    with pytest.raises(DatasetError, match="activate=if-better .* needs at least 5"):
        check_adaptation_images(roda, 4, 0, ACTIVATE_IF_BETTER)
    check_adaptation_images(roda, 5, 0, ACTIVATE_IF_BETTER)


@pytest.mark.parametrize(
    "route,data,field",
    [
        ("adapt", {"lr": "1e308"}, "lr"),
        ("adapt", {"lr": "1e9"}, "lr"),
        ("adapt", {"lr": "nan"}, "lr"),
        ("adapt", {"lr": "0"}, "lr"),
        ("adapt", {"epochs": "0"}, "epochs"),
        ("adapt", {"epochs": "99999999999999999999999"}, "epochs"),
        ("adapt", {"views": "1000"}, "views"),
        ("adapt", {"trim": "1"}, "trim"),
        ("adapt", {"method": "uda", "clusters": "100000"}, "clusters"),
        ("fit", {"feature_dim": "100000"}, "feature_dim"),
        ("fit", {"feature_dim": "1000"}, "feature_dim must be at most 224"),
        (
            "fit",
            {"feature_reduction": "pca", "feature_dim": "200"},
            "feature_dim must be at most 152 with pca",
        ),
        ("fit", {"feature_reduction": "svd"}, "feature_reduction"),
        ("fit", {"coreset_ratio": "nan"}, "coreset_ratio"),
        ("fit", {"coreset_max_size": "-1"}, "coreset_max_size"),
        ("fit", {"false_alarm_rate": "2"}, "false_alarm_rate"),
        ("fit", {"calibration": "magic"}, "calibration"),
        ("fit", {"holdout_fraction": "1"}, "holdout_fraction"),
        (
            "fit",
            {"holdout_fraction": "0", "calibration": "holdout"},
            "holdout_fraction must be above 0 with holdout calibration",
        ),
        ("fit", {"image_size": "100000"}, "image_size"),
        ("fit", {"image_size": "4000x10"}, "image_size"),
    ],
)
def test_settings_out_of_range_are_422_before_any_job(
    client, dataset: Path, route: str, data: dict, field: str
) -> None:
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:3])
    response = client.post(f"/v1/models/widget/{route}", files=files_field(images), data=data)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"], response.text
    assert client.get("/v1/jobs").json() == []


def test_too_few_images_for_the_target_memory_is_a_422_before_any_job(
    client, dataset: Path
) -> None:
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:3])
    response = client.post(
        "/v1/models/widget/adapt", files=files_field(images)
    )  # the default method
    assert (
        response.status_code == 422 and "at least 5 images" in response.json()["error"]["message"]
    ), response.text
    assert client.get("/v1/jobs").json() == []


@pytest.mark.parametrize(("sent", "policy"), [("True", "true"), ("yes", "true"), ("0", "false")])
def test_activate_takes_the_boolean_spellings_of_before(
    client, dataset: Path, sent: str, policy: str
) -> None:
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:2])
    response = client.post(
        "/v1/models/widget/adapt",
        files=files_field(images),
        data={"method": "none", "activate": sent},
    )
    assert response.status_code == 202, response.text
    assert (
        client.get(f"/v1/jobs/{response.json()['job_id']}").json()["params"]["activate"] == policy
    )
    wait_job(client, response.json()["job_id"])


def test_if_better_with_too_few_images_for_the_check_is_refused_before_any_job(
    client, dataset: Path
) -> None:
    """The label-free check needs 5 images: with fewer, the job would run and then always keep the
    parent."""
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:2])
    for data in (
        {"method": "none", "activate": "if-better"},
        {"method": "none"},
    ):  # spelled out, and the default
        response = client.post("/v1/models/widget/adapt", files=files_field(images), data=data)
        assert (
            response.status_code == 422
            and "activate=if-better" in response.json()["error"]["message"]
        ), response.text
    assert client.get("/v1/jobs").json() == []


def test_activate_refuses_anything_else(client, dataset: Path) -> None:
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:2])
    response = client.post(
        "/v1/models/widget/adapt",
        files=files_field(images),
        data={"method": "none", "activate": "maybe"},
    )
    assert response.status_code == 422 and "activate" in response.text
