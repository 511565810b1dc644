"""Every input bounded, nothing non-finite stored or served, truthful readiness, limits
that hold however a body arrives, no server paths in answers, and an API contract with teeth.

In-process tests use FastAPI's TestClient over the real app (lifespan, worker thread and all);
what only a real process shows (chunked uploads on a socket, peak memory) starts uvicorn.
"""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from service_helpers import Server, files_field, png_bytes, png_header_only

ADMIN = "admin-key-for-tests"


def read(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


@pytest.fixture()
def store(tmp_path: Path, saved_model: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    return models


@pytest.fixture()
def client(store: Path):
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    app = create_app(Settings(models_dir=store, device="cpu", max_files=4))
    with TestClient(app) as test_client:
        yield test_client


def wait_job(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end within {timeout} s: {job}")


def store_state(models: Path) -> tuple[list[str], str]:
    folder = models / "widget"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()), (
        folder / "ACTIVE"
    ).read_text() if (folder / "ACTIVE").exists() else ""


# 1. thresholds --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1e309", "Infinity", "NaN", "1e308", "5e-324", "0", "-3"])
def test_out_of_range_threshold_is_refused_and_changes_nothing(
    client, store: Path, raw: str
) -> None:
    before = store_state(store)
    response = client.put(
        "/v1/models/widget/threshold",
        content=f'{{"threshold": {raw}}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "threshold" in response.json()["error"]["message"]
    assert store_state(store) == before
    scored = client.post(
        "/v1/models/widget/score",
        files=files_field([("a.png", png_bytes(np.full((96, 96, 3), 128, np.uint8)))]),
    )
    assert scored.status_code == 200 and math.isfinite(scored.json()["results"][0]["threshold"])


def test_threshold_in_range_writes_a_version_for_any_model_kind(client, store: Path) -> None:
    response = client.put("/v1/models/widget/threshold", json={"threshold": 12.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        body["active_version"] == "v2"
        and next(v for v in body["versions"] if v["version"] == "v2")["threshold"] == 12.5
    )


def test_save_refuses_non_finite_threshold_and_tensors(fitted, tmp_path: Path) -> None:
    from patchshift.core.artifact import save_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.engine.backbone import batchnorm_layers

    bad = copy.copy(fitted)
    bad.threshold = float("inf")
    with pytest.raises(ArtifactError, match="threshold inf"):
        save_model(bad, tmp_path / "a")
    bad = copy.copy(fitted)
    bad.extractor = copy.deepcopy(fitted.extractor)
    next(iter(batchnorm_layers(bad.extractor).values())).weight.data[0] = float("nan")
    with pytest.raises(ArtifactError, match="BatchNorm state holds 1 of"):
        save_model(bad, tmp_path / "b")
    bad = copy.copy(fitted)
    bad.bank = fitted.bank.clone()
    bad.bank[0, 0] = float("inf")
    bad.bank_path = None
    with pytest.raises(ArtifactError, match="memory bank holds 1 of"):
        save_model(bad, tmp_path / "c")
    bad = copy.copy(fitted)
    bad.provenance = copy.deepcopy(fitted.provenance)
    bad.provenance.details = {"seconds": float("nan")}
    with pytest.raises(ArtifactError, match="details.seconds"):
        save_model(bad, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no staging left


def test_loader_refuses_non_finite_values(saved_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from patchshift.core.artifact import BANK_FILE, MANIFEST, load_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.common.fileio import file_sha256

    version = tmp_path / "v1"
    shutil.copytree(saved_model, version)
    bank = load_file(str(version / BANK_FILE))["bank"]
    bank[3, 1] = float("nan")
    (version / BANK_FILE).unlink()  # it may be a hard link shared with other versions
    save_file({"bank": bank}, str(version / BANK_FILE))
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["files"][BANK_FILE] = {
        "sha256": file_sha256(version / BANK_FILE),
        "bytes": (version / BANK_FILE).stat().st_size,
    }
    (version / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="non-finite"):
        load_model(version, device="cpu")
    manifest = json.loads((saved_model / MANIFEST).read_text())
    shutil.rmtree(version)
    shutil.copytree(saved_model, version)
    (version / MANIFEST).write_text(
        json.dumps(manifest).replace(
            f'"threshold": {manifest["threshold"]}', '"threshold": Infinity'
        )
    )
    with pytest.raises(ArtifactError, match="field threshold"):
        load_model(version, device="cpu")


def test_versions_made_under_older_ranges_still_load(
    saved_model: Path, tmp_path: Path, fitted
) -> None:
    """Ranges bound what a person asks for, not what is stored: an old version outside them
    loads."""
    from patchshift.core.artifact import MANIFEST, load_model
    from patchshift.core.common.errors import ConfigError
    from patchshift.core.engine.features import PatchFeatureExtractor
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.core.engine.patchcore import fit

    version = tmp_path / "v1"
    shutil.copytree(saved_model, version)
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["config"].update(batch_size=512, seed=-1, holdout_fraction=0.95)
    (version / MANIFEST).write_text(json.dumps(manifest))
    model = load_model(version, device="cpu")
    assert model.config.batch_size == 512 and model.threshold == fitted.threshold
    wide = PatchFeatureExtractor(
        fitted.backbone, 256, 3
    )  # more than Lite0 provides: loads, fit refuses it
    assert wide.feature_dim == 256
    with pytest.raises(ConfigError, match="feature_dim must be at most 224"):
        fit(
            [saved_model / "a.png", saved_model / "b.png"],
            ModelConfig(feature_dim=256, image_size=64),
            device="cpu",
        )
    with pytest.raises(ConfigError, match="batch_size must be in"):
        fit(
            [saved_model / "a.png", saved_model / "b.png"],
            ModelConfig(batch_size=512, image_size=64),
            device="cpu",
        )


def test_unloadable_active_version_is_not_ready_and_can_be_rolled_back(store: Path) -> None:
    """An active version that cannot load: /readyz 503 naming it, scoring 503, rollback through the
    API."""
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    shutil.copytree(store / "widget" / "v1", store / "widget" / "v2")
    manifest = json.loads((store / "widget" / "v2" / "manifest.json").read_text())
    manifest["threshold"] = "Infinity"
    (store / "widget" / "v2" / "manifest.json").write_text(
        json.dumps(manifest).replace('"Infinity"', "Infinity")
    )
    (store / "widget" / "ACTIVE").write_text("v2\n")
    with TestClient(create_app(Settings(models_dir=store, device="cpu"))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "v2" in ready.json()["load_errors"]["widget"]
        assert str(store) not in ready.text
        image = png_bytes(np.full((96, 96, 3), 100, np.uint8))
        assert (
            client.post(
                "/v1/models/widget/score", files=files_field([("a.png", image)])
            ).status_code
            == 503
        )
        info = client.get("/v1/models/widget")
        assert info.status_code == 200, info.text  # an unreadable version does not hide the model
        body = info.json()
        assert [v["version"] for v in body["versions"]] == ["v1"]
        assert (
            body["unreadable_versions"][0]["version"] == "v2"
            and "threshold" in body["unreadable_versions"][0]["error"]
        )
        assert str(store) not in info.text
        refused = client.post("/v1/models/widget/versions/v2/activate")
        assert (
            refused.status_code == 422 and (store / "widget" / "ACTIVE").read_text().strip() == "v2"
        )
        rolled = client.post("/v1/models/widget/versions/v1/activate")
        assert rolled.status_code == 200 and rolled.json()["active_version"] == "v1"
        assert client.get("/readyz").status_code == 200
        assert (
            client.post(
                "/v1/models/widget/score", files=files_field([("a.png", image)])
            ).status_code
            == 200
        )


# 2, 3. adaptation and fit settings ------------------------------------------------------------


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
    images = read(sorted((dataset / "train/good").glob("*.png"))[:3])
    response = client.post(f"/v1/models/widget/{route}", files=files_field(images), data=data)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"], response.text
    assert client.get("/v1/jobs").json() == []


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
    images = read(sorted((dataset / "train/good").glob("*.png"))[:6])
    response = client.post(
        "/v1/models/widget/adapt", files=files_field(images), data={"method": "roda", "lr": "1"}
    )
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["job_id"])
    assert job["status"] == "failed" and job["error"].startswith("adaptation diverged:"), job
    assert "BatchNorm values are not finite; try a lower lr (it was 1)" in job["error"]
    assert store_state(store)[1] == before[1]
    assert [v for v in store_state(store)[0] if not v.startswith(".")] == ["v1"]


def test_threshold_change_waits_for_the_models_unfinished_job(
    client, dataset: Path, monkeypatch
) -> None:
    """A job held in 'running' by the test (no timing assumptions): the threshold route answers
    409."""
    import threading

    import patchshift.core.adapt as adapt_module

    release = threading.Event()

    def held(model, target, cfg, loss, report_, progress, cancel):
        assert release.wait(60), "the test never released the job"
        return copy.deepcopy(model.extractor)

    monkeypatch.setattr(adapt_module.batchnorm, "train_affine", held)
    images = read(sorted((dataset / "train/good").glob("*.png"))[:4])
    job_id = client.post(
        "/v1/models/widget/adapt",
        files=files_field(images),
        data={"method": "roda", "activate": "false"},
    ).json()["job_id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    response = client.put("/v1/models/widget/threshold", json={"threshold": 9.0})
    assert response.status_code == 409 and "unfinished job" in response.json()["error"]["message"]
    release.set()
    assert wait_job(client, job_id)["status"] == "succeeded"
    assert client.put("/v1/models/widget/threshold", json={"threshold": 9.0}).status_code == 200


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


# 6. the pixel limit ---------------------------------------------------------------------------


def test_one_pixel_limit_100_megapixels() -> None:
    from patchshift.core.common.errors import InvalidImageError
    from patchshift.core.common.images import MAX_PIXELS, decode_for_model

    assert MAX_PIXELS == 100_000_000
    frame = io.BytesIO()
    Image.new("L", (10_000, 10_000), 40).save(frame, "PNG", compress_level=1)
    model_input, original, preview = decode_for_model(
        frame.getvalue(), (96, 96), "frame.png", preview_side=512
    )
    assert (
        original == (10_000, 10_000)
        and model_input.shape == (96, 96, 3)
        and preview.shape == (512, 512, 3)
    )
    assert (model_input == 40).all()
    # just over the limit, and far over it (past Pillow's own bomb guard): our message, with the
    # limit
    for width, height in ((10_001, 10_000), (20_000, 20_000)):
        with pytest.raises(InvalidImageError, match="100 megapixels"):
            decode_for_model(png_header_only(width, height), (96, 96), "big.png")
    # between Pillow's 89.5 MP and ours: not refused for its size (this header has no pixel data)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_for_model(png_header_only(9_500, 9_500), (96, 96), "camera.png")


def test_grey_frames_resize_before_conversion_gives_identical_pixels() -> None:
    from patchshift.core.common.images import decode_for_model, to_rgb

    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (301, 517), dtype=np.uint8))
    buffer = io.BytesIO()
    gray.save(buffer, "PNG")
    fast, _, _ = decode_for_model(buffer.getvalue(), (96, 64))
    converted_first = np.asarray(to_rgb(gray).resize((96, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(fast, converted_first)


# 7. names and paths ---------------------------------------------------------------------------


def test_store_files_are_out_of_reach_of_model_names(client, store: Path, dataset: Path) -> None:
    assert (store / ".state" / "jobs.sqlite").is_file() and not (store / "jobs.sqlite").exists()
    (store / "notes.txt").write_text("an operator's file")
    images = read(sorted((dataset / "train/good").glob("*.png"))[:3])
    response = client.post("/v1/models/notes.txt/fit", files=files_field(images))
    assert response.status_code == 400 and "taken by a file" in response.json()["error"]["message"]
    response = client.post("/v1/models/jobs.sqlite/fit", files=files_field(images))
    assert response.status_code == 202, (
        response.text
    )  # an ordinary name now: the database lives in .state/
    for name in ("a..b", "-x", "x" * 65, "bad$name"):
        response = client.get(f"/v1/models/{name}")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_name", (
            name,
            response.text,
        )


def test_legacy_job_database_is_moved_out_of_the_name_space(store: Path) -> None:
    from patchshift.service.job_store import JobStore, move_legacy_database

    legacy = JobStore(store / "jobs.sqlite")
    legacy.create("fit", "widget", {"n_images": 3})
    legacy.close()
    target = store / ".state" / "jobs.sqlite"
    assert move_legacy_database(store, target) == store / "jobs.sqlite"
    assert not (store / "jobs.sqlite").exists() and len(JobStore(target).list()) == 1
    assert move_legacy_database(store, target) is None


def test_errors_never_show_server_paths() -> None:
    from patchshift.service.http_errors import redact_paths

    message = (
        "/srv/models/bsd/v3/manifest.json is invalid: field threshold; "
        "[Errno 17] File exists: '/srv/models/jobs.sqlite'"
    )
    assert (
        redact_paths(message)
        == "manifest.json is invalid: field threshold; [Errno 17] File exists: 'jobs.sqlite'"
    )
    assert (
        redact_paths("image_size must be N or WIDTHxHEIGHT, got 1/2 of 576x224")
        == "image_size must be N or WIDTHxHEIGHT, got 1/2 of 576x224"
    )


# 8. the OpenAPI contract ----------------------------------------------------------------------


def test_openapi_describes_names_limits_errors_and_media_types(client) -> None:
    spec = client.get("/openapi.json").json()
    score = spec["paths"]["/v1/models/{name}/score"]["post"]
    name = next(p for p in score["parameters"] if p["name"] == "name")["schema"]
    assert name["maxLength"] == 64 and name["pattern"].startswith("^[A-Za-z0-9]")
    assert {"400", "401", "403", "404", "413", "422", "503"} <= set(score["responses"])
    body = spec["components"]["schemas"][
        score["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    ]
    assert (
        body["properties"]["files"]["minItems"] == 1
        and body["properties"]["files"]["maxItems"] == 4
    )
    adapt = spec["paths"]["/v1/models/{name}/adapt"]["post"]
    adapt_body = json.dumps(spec["components"]["schemas"])
    assert '"exclusiveMinimum": 0.0' in adapt_body and "413" in adapt["responses"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert len(metrics) == 1 and next(iter(metrics)).startswith("text/plain; version=")
    threshold = spec["components"]["schemas"]["ThresholdIn"]["properties"]["threshold"]
    assert threshold["minimum"] == 1e-6 and threshold["maximum"] == 1e6


def test_multipart_counting_cannot_be_sidestepped(client) -> None:
    """A second Content-Type header (Starlette reads the first) or files under other field names
    still count against the limits."""
    import httpx

    image = png_bytes(np.full((96, 96, 3), 128, np.uint8))
    request = httpx.Request(
        "POST",
        "http://test/v1/models/widget/score",
        files=files_field([(f"{i}.png", image) for i in range(5)]),
    )
    body = request.read()
    headers = [("content-type", request.headers["content-type"]), ("content-type", "text/plain")]
    response = client.post("/v1/models/widget/score", content=body, headers=headers)
    # refused by the streaming count ("more than 4 files in field"), not after the body was spooled
    assert (
        response.status_code == 413
        and "more than 4 files in field 'files'" in response.json()["error"]["message"]
    )
    extra = files_field([("a.png", image)]) + [
        (f"other{i}", (f"{i}.png", b"x", "application/octet-stream")) for i in range(80)
    ]
    response = client.post("/v1/models/widget/score", files=extra)
    assert (
        response.status_code == 413
        and "parts in one request" in response.json()["error"]["message"]
    )


def test_405_names_every_allowed_method(client) -> None:
    for path, allowed in (
        ("/v1/jobs/abc", {"GET", "DELETE"}),
        ("/v1/models/widget", {"GET", "DELETE"}),
        ("/v1/models/widget/threshold", {"PUT"}),
        ("/docs", {"GET"}),
    ):
        response = client.patch(path)
        assert response.status_code == 405
        assert set(response.headers["allow"].split(", ")) == allowed, (
            path,
            response.headers["allow"],
        )


def test_api_docs_load_without_internet(client) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert "http://" not in html.text and "https://" not in html.text, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000


# 4, 5. limits while reading, memory of the worst request: a real server -----------------------


def send_chunked(
    port: int, path: str, boundary: str, parts: list[tuple[str, str, int]], chunk: int = 64 * 1024
) -> tuple[int, dict, int, int]:
    """POST a multipart body with Transfer-Encoding: chunked, stopping as soon as the server
    answers.

    parts: (field, filename, size in bytes of zeros). Returns (status, error body, bytes sent, body
    size)."""
    pieces = []
    for field, filename, size in parts:
        pieces.append(
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        pieces.append(b"\0" * size)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    body = b"".join(pieces)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            while sent < len(body):
                piece = body[sent : sent + chunk]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                sent += len(piece)
                sock.settimeout(0.02)
                try:
                    peeked = sock.recv(1, socket.MSG_PEEK)
                except (TimeoutError, BlockingIOError):
                    peeked = b""
                sock.settimeout(30)
                if peeked:
                    break
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(30)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + int(
                next(
                    (
                        line.split(b":")[1]
                        for line in answer.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    b"0",
                )
            ):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    status = int(answer.split(b" ", 2)[1])
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1] or b"{}")
    return status, error, sent, len(body)


def test_limits_hold_for_chunked_bodies(tmp_path: Path, saved_model: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    env = {
        "PATCHSHIFT_MAX_REQUEST_BYTES": str(3 * 1024 * 1024),
        "PATCHSHIFT_MAX_FILE_BYTES": str(1024 * 1024),
        "PATCHSHIFT_MAX_FILES": "4",
    }
    server = Server(models, env=env).start()
    try:
        # the whole body over the request limit (no single file over its limit): refused while
        # arriving
        parts = [("files", f"{i}.png", 900 * 1024) for i in range(4)] + [
            ("source_files", f"s{i}.png", 900 * 1024) for i in range(4)
        ]
        status, error, sent, total = send_chunked(
            server.port, "/v1/models/widget/adapt", "b0undary", parts
        )
        assert status == 413 and "3145728-byte limit" in error["error"]["message"], error
        assert sent < total
        # one file over the per-file limit: refused at that file, named
        status, error, sent, total = send_chunked(
            server.port,
            "/v1/models/widget/score",
            "b0undary",
            [("files", "huge.png", 2 * 1024 * 1024)],
        )
        assert (
            status == 413
            and error["error"]["file"] == "huge.png"
            and "1 MiB limit per file" in error["error"]["message"]
        )
        assert sent < total
        # more files than the route takes
        status, error, _, _ = send_chunked(
            server.port,
            "/v1/models/widget/score",
            "b0undary",
            [("files", f"{i}.png", 10) for i in range(5)],
        )
        assert status == 413 and "at most 4 per request" in error["error"]["message"]
        with server.client() as client:  # the server is fine afterwards
            good = png_bytes(np.full((96, 96, 3), 128, np.uint8))
            assert (
                client.post(
                    "/v1/models/widget/score", files=files_field([("a.png", good)])
                ).status_code
                == 200
            )
    finally:
        server.stop()


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        / 1024
    )


def test_worst_allowed_score_request_has_bounded_memory(tmp_path: Path, saved_model: Path) -> None:
    """PATCHSHIFT_MAX_FILES images of the largest accepted size (10000 x 10000 RGB), heatmaps on:
    the server's peak resident memory grows by less than 1.5 GiB (measured: README, "Limits")."""
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    files = 4
    server = Server(models, env={"PATCHSHIFT_MAX_FILES": str(files)}).start()
    try:
        frame = io.BytesIO()
        Image.new("RGB", (10_000, 10_000), (90, 90, 90)).save(frame, "PNG", compress_level=1)
        with server.client(timeout=300) as client:
            small = png_bytes(np.full((96, 96, 3), 128, np.uint8))
            assert (
                client.post(
                    "/v1/models/widget/score",
                    files=files_field([("a.png", small)]),
                    data={"heatmap": "png"},
                ).status_code
                == 200
            )
            before = peak_rss_mib(server.process.pid)
            response = client.post(
                "/v1/models/widget/score",
                files=files_field([(f"{i}.png", frame.getvalue()) for i in range(files)]),
                data={"heatmap": "png"},
            )
            assert response.status_code == 200, response.text[:300]
            growth = peak_rss_mib(server.process.pid) - before
            overlay = Image.open(
                io.BytesIO(
                    __import__("base64").b64decode(response.json()["results"][0]["heatmap_png"])
                )
            )
        assert overlay.size == (1024, 1024)  # PATCHSHIFT_HEATMAP_MAX_SIDE
        print(f"peak RSS growth for {files} x 100 MP with heatmaps: {growth:.0f} MiB")
        assert growth < 1536, growth
    finally:
        server.stop()


def test_drift_observation_runs_off_the_event_loop(client, monkeypatch) -> None:
    """Starting a self-adaptation writes up to 64 files: that must never stall every request."""
    import asyncio

    from patchshift.service.drift_watch import DriftWatch

    seen: list[bool] = []
    original = DriftWatch.observe

    def recording(self, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DriftWatch, "observe", recording)
    image = png_bytes(np.full((96, 96, 3), 128, np.uint8))
    assert (
        client.post("/v1/models/widget/score", files=files_field([("a.png", image)])).status_code
        == 200
    )
    assert seen == [False]


def test_an_activation_waits_while_images_of_the_old_version_enter_its_monitor(
    client, monkeypatch
) -> None:
    """Activation resets the drift window: images scored by the old version must not land in the new
    one's."""
    import threading

    state = client.app.state
    old = state.registry.get("widget")
    monitor = state.registry.slot("widget").monitor
    descriptors = old.score(torch.rand(1, 3, *old.config.image_size)).descriptors.numpy()
    added_at, activated_at = [], []
    original_add = monitor.add

    activating = threading.Event()

    def slow_add(*args, **kwargs):  # an activation starts while the old version's images go in
        racer.start()
        assert activating.wait(10)
        racer.join(0.5)
        assert racer.is_alive(), "the activation did not wait for the images to go in"
        original_add(*args, **kwargs)
        added_at.append(time.monotonic())

    def activate_copy():
        activating.set()
        state.registry.activate("widget", "v1", copy.copy(old))
        activated_at.append(time.monotonic())

    racer = threading.Thread(target=activate_copy)
    monkeypatch.setattr(monitor, "add", slow_add)
    assert state.drift.observe("widget", old, descriptors, np.zeros(1, bool), []) is not None
    racer.join(10)
    assert activated_at and activated_at[0] >= added_at[0]  # the activation waited for the add
    assert (
        monitor.n_recent == 0 and state.registry.get("widget") is not old
    )  # and then reset the window
    assert (
        state.drift.observe("widget", old, descriptors, np.zeros(1, bool), []) is None
    )  # old version: ignored


def test_a_refused_auto_adaptation_is_tried_again_once_the_slot_frees(client, monkeypatch) -> None:
    from patchshift.service.http_errors import Conflict

    state = client.app.state
    model = state.registry.get("widget")
    key = ("widget", model.version)
    state.drift._attempted.add(key)

    def busy(*args, **kwargs):
        raise Conflict("model widget has an unfinished job")

    monkeypatch.setattr(state.worker, "submit", busy)
    state.drift._submit("widget", model, {}, [])
    assert key not in state.drift._attempted


def rollback_while_writing(state, monkeypatch, to: str) -> None:
    """Make the next version allocation activate `to` first, as an operator's rollback would
    meanwhile."""
    allocate = state.store.allocate_version

    def rollback_then_allocate(name):
        state.registry.activate(name, to)
        return allocate(name)

    monkeypatch.setattr(state.store, "allocate_version", rollback_then_allocate)


def test_a_threshold_version_never_undoes_a_rollback_made_while_it_was_written(
    client, monkeypatch
) -> None:
    state = client.app.state
    assert (
        client.put("/v1/models/widget/threshold", json={"threshold": 5.0}).json()["active_version"]
        == "v2"
    )
    rollback_while_writing(state, monkeypatch, "v1")
    response = client.put("/v1/models/widget/threshold", json={"threshold": 7.0})
    assert response.status_code == 409 and "v3" in response.json()["error"]["message"], (
        response.text
    )
    assert state.store.active("widget") == "v1" and state.registry.get("widget").version == "v1"


def test_a_fit_never_undoes_a_rollback_made_while_it_ran(
    client, monkeypatch, dataset: Path
) -> None:
    state = client.app.state
    assert (
        client.put("/v1/models/widget/threshold", json={"threshold": 5.0}).json()["active_version"]
        == "v2"
    )
    rollback_while_writing(state, monkeypatch, "v1")
    images = [(p.name, p.read_bytes()) for p in sorted((dataset / "train/good").glob("*.png"))[:4]]
    response = client.post(
        "/v1/models/widget/fit",
        files=files_field(images),
        data={"activate": "true", "calibration": "kfold"},
    )
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["job_id"])
    assert (
        job["status"] == "succeeded"
        and job["result_version"] == "v3"
        and not job["result"]["activated"]
    ), job
    assert "changed from v2 to v1" in job["result"]["not_activated"]
    assert state.store.active("widget") == "v1"


def test_threshold_override_works_for_a_uda_version(store: Path) -> None:
    """Any model kind takes a threshold: a new version, same detector, the given threshold (was a
    500 for UDA)."""
    from conftest import normal_image
    from fastapi.testclient import TestClient

    from patchshift.core.artifact import load_model, save_model
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.train import fit_uda
    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    rng = np.random.default_rng(0)
    source = (
        torch.stack(
            [torch.from_numpy(normal_image(rng)).permute(2, 0, 1) for _ in range(8)]
        ).float()
        / 255
    )
    uda, _ = fit_uda(
        source[..., :64, :64],
        None,
        UDAConfig(image_size=64, epochs=1, batch_size=4, embedding_dim=16),
        device="cpu",
    )
    save_model(uda, store / "global" / "v1")
    with TestClient(create_app(Settings(models_dir=store, device="cpu"))) as client:
        response = client.put("/v1/models/global/threshold", json={"threshold": 0.25})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (
            body["active_version"] == "v2"
            and body["versions"][1]["kind"] == "uda"
            and body["versions"][1]["threshold"] == 0.25
        )
    reloaded = load_model(store / "global" / "v2", device="cpu")
    assert reloaded.threshold == 0.25 and torch.equal(reloaded.centre, uda.centre)


def test_too_few_images_for_the_target_memory_is_a_422_before_any_job(
    client, dataset: Path
) -> None:
    images = read(sorted((dataset / "train/good").glob("*.png"))[:3])
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
    images = read(sorted((dataset / "train/good").glob("*.png"))[:2])
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
    images = read(sorted((dataset / "train/good").glob("*.png"))[:2])
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
    images = read(sorted((dataset / "train/good").glob("*.png"))[:2])
    response = client.post(
        "/v1/models/widget/adapt",
        files=files_field(images),
        data={"method": "none", "activate": "maybe"},
    )
    assert response.status_code == 422 and "activate" in response.text
