"""End to end: the real server under uvicorn on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import normal_image
from PIL import Image
from service_helpers import (
    Server,
    darkened,
    files_field,
    named_bytes,
    png_bytes,
    png_header_only,
    wait_job,
)

FIT_FORM = {
    "image_size": "96",
    "feature_dim": "64",
    "coreset_ratio": "0.25",
    "holdout_fraction": "0.2",
}


def held_adapter_env(tmp_path: Path) -> dict[str, str]:
    """The test-only `test-hold` method (tests/held_adapter.py): running until tmp_path/release
    exists."""
    tests_dir = str(Path(__file__).parent)
    return {
        "PATCHSHIFT_ADAPTER_PLUGINS": "held_adapter",
        "PATCHSHIFT_TEST_RELEASE": str(tmp_path / "release"),
        "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def scores_of(client, items, model="widget") -> tuple[np.ndarray, str]:
    response = client.post(f"/v1/models/{model}/score", files=files_field(items))
    assert response.status_code == 200, response.text
    body = response.json()
    return np.array([r["score"] for r in body["results"]]), body["version"]


def metric(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_fit_score_adapt_rollback_drift_restart(
    tmp_path: Path, dataset: Path, database_url: str
) -> None:
    env = {"PATCHSHIFT_DRIFT_WINDOW": "8", "PATCHSHIFT_DATABASE_URL": database_url}
    server = Server(tmp_path / "models", env=env).start()
    train = named_bytes(sorted((dataset / "train/good").glob("*.png")))
    good = named_bytes(sorted((dataset / "test/good").glob("*.png")))
    blob = named_bytes(sorted((dataset / "test/blob").glob("*.png")))
    try:
        with server.client() as client:
            response = client.post("/v1/models/widget/fit", files=files_field(train), data=FIT_FORM)
            assert response.status_code == 202, response.text
            job = wait_job(client, response.json()["job_id"])
            assert job["status"] == "succeeded" and job["result_version"] == "v1", job
            info = client.get("/v1/models/widget").json()
            assert info["active_version"] == "v1" and info["versions"][0]["bank_size"] > 0

            # scores, verdicts and heatmaps; they match in-process scoring of the stored version
            response = client.post(
                "/v1/models/widget/score", files=files_field(good + blob), data={"heatmap": "png"}
            )
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert [r["filename"] for r in results] == [n for n, _ in good + blob]
            scores = np.array([r["score"] for r in results])
            from patchshift.core.artifact import load_model
            from patchshift.core.common.images import load_batch

            stored = load_model(server.models_dir / "widget" / "v1", device="cpu")
            batch, _ = load_batch([d for _, d in good + blob], stored.config.image_size)
            np.testing.assert_allclose(
                scores, stored.score(batch).scores.numpy(), rtol=1e-4, atol=1e-4
            )
            assert scores[len(good) :].min() > scores[: len(good)].max()
            assert all(r["anomalous"] == (r["score"] > r["threshold"]) for r in results)
            heat = Image.open(io.BytesIO(base64.b64decode(results[0]["heatmap_png"])))
            assert heat.format == "PNG" and heat.size == (96, 96)
            metrics = client.get("/metrics").text
            assert metric(
                metrics, 'patchshift_images_scored_total{model="widget",version="v1"}'
            ) == len(results)

            # adaptation to a darker camera: new active version, parent v1, different scores
            shifted_good = darkened(good)
            before, _ = scores_of(client, shifted_good)
            response = client.post(
                "/v1/models/widget/adapt",
                files=files_field(darkened(train)),
                data={"method": "bn-stats", "activate": "true"},
            )
            assert response.status_code == 202, response.text
            job = wait_job(client, response.json()["job_id"])
            assert (
                job["status"] == "succeeded"
                and job["result_version"] == "v2"
                and job["result"]["activated"]
            ), job
            assert job["result"]["drift_after"] != job["result"]["drift_before"], (
                job
            )  # new features: both views
            info = client.get("/v1/models/widget").json()
            assert info["active_version"] == "v2"
            assert {v["version"]: v["parent"] for v in info["versions"]} == {"v1": None, "v2": "v1"}
            after, version = scores_of(client, shifted_good)
            assert version == "v2" and not np.allclose(before, after)

            # rollback
            assert client.post("/v1/models/widget/versions/v1/activate").status_code == 200
            again, version = scores_of(client, shifted_good)
            assert version == "v1"
            np.testing.assert_allclose(again, before, rtol=1e-5)

            # drift: quiet on a clean stream, fires on a darker one
            rng = np.random.default_rng(7)
            clean = [(f"clean{i}.png", png_bytes(normal_image(rng))) for i in range(8)]
            scores_of(client, clean)
            drift = client.get("/v1/models/widget").json()["drift"]
            assert drift["statistic"] is not None and not drift["drifting"], drift
            scores_of(client, darkened(clean))
            drift = client.get("/v1/models/widget").json()["drift"]
            assert drift["drifting"] and drift["statistic"] > drift["threshold"], drift
            assert (
                metric(client.get("/metrics").text, 'patchshift_drift_detected{model="widget"}')
                == 1
            )
            jobs_before = client.get("/v1/jobs").json()
    finally:
        server.stop()

    server.start()  # restart on the same store: state intact
    try:
        with server.client() as client:
            info = client.get("/v1/models/widget").json()
            assert info["active_version"] == "v1" and [v["version"] for v in info["versions"]] == [
                "v1",
                "v2",
            ]
            assert [(j["id"], j["status"]) for j in client.get("/v1/jobs").json()] == [
                (j["id"], j["status"]) for j in jobs_before
            ]
            restarted, _ = scores_of(client, shifted_good)
            np.testing.assert_allclose(restarted, before, rtol=1e-5)
    finally:
        server.stop()


@pytest.fixture()
def stored_server(tmp_path: Path, saved_model: Path):
    """A server whose store already holds widget/v1 (the session's fitted tiny model)."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    shutil.copytree(saved_model, models / "broken" / "v1")
    bank = models / "broken" / "v1" / "bank.safetensors"
    bank.write_bytes(bank.read_bytes()[:-100])  # a truncated artifact

    from conftest import save_tiny_uda

    save_tiny_uda(models / "global" / "v1")
    server = Server(
        models,
        env={
            "PATCHSHIFT_MAX_FILES": "4",
            "PATCHSHIFT_MAX_REQUEST_BYTES": str(2 * 1024 * 1024),
            **held_adapter_env(tmp_path),
        },
    ).start()
    yield server
    server.stop()


def test_kill9_during_adaptation_and_concurrent_scoring(
    stored_server: Server, dataset: Path
) -> None:
    train = named_bytes(sorted((dataset / "train/good").glob("*.png")))[:12]
    probe = named_bytes(sorted((dataset / "test/good").glob("*.png")))[:4]
    with stored_server.client() as client:
        reference, _ = scores_of(client, probe)
        response = client.post(
            "/v1/models/widget/adapt", files=files_field(train), data={"method": "test-hold"}
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        # a second adaptation of the same model is refused while the first is unfinished
        second = client.post(
            "/v1/models/widget/adapt", files=files_field(train), data={"method": "bn-stats"}
        )
        assert second.status_code == 409 and second.json()["error"]["job_id"] == job_id
        wait_job(client, job_id, until=("running",))

        errors: list[str] = []

        def hammer() -> None:
            with stored_server.client() as own:
                for _ in range(5):
                    response = own.post("/v1/models/widget/score", files=files_field(probe))
                    if response.status_code != 200 or response.json()["version"] != "v1":
                        errors.append(f"{response.status_code} {response.text[:200]}")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        deadline = time.monotonic() + 60
        while (
            client.get(f"/v1/jobs/{job_id}").json()["progress"] <= 0 and time.monotonic() < deadline
        ):
            time.sleep(0.2)
    stored_server.kill9()
    uploads = stored_server.models_dir / ".uploads"
    assert (uploads / job_id).is_dir()  # images are kept while the job is unfinished

    stored_server.start()
    with stored_server.client() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed" and "stopped while this job was running" in job["error"]
        info = client.get("/v1/models/widget").json()
        assert info["active_version"] == "v1" and [v["version"] for v in info["versions"]] == ["v1"]
        after, version = scores_of(client, probe)
        assert version == "v1"
        np.testing.assert_allclose(after, reference, rtol=1e-5)
        assert not (uploads / job_id).exists()

        # cancellation: a running job stops, no version is written
        response = client.post(
            "/v1/models/widget/adapt", files=files_field(train), data={"method": "test-hold"}
        )
        job_id = response.json()["job_id"]
        wait_job(client, job_id, until=("running",))
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
        job = wait_job(client, job_id, timeout=120)
        assert job["status"] == "cancelled", job
        assert [v["version"] for v in client.get("/v1/models/widget").json()["versions"]] == ["v1"]


def test_bad_input_gets_clear_4xx(stored_server: Server, dataset: Path) -> None:
    good = named_bytes(sorted((dataset / "test/good").glob("*.png")))[:1]
    png = good[0][1]
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    with stored_server.client() as client:

        def score(items, data=None, model="widget"):
            return client.post(
                f"/v1/models/{model}/score",
                files=files_field(items) if items else None,
                data=data or {},
            )

        cases = {
            "not an image": ([("notes.txt", b"hello, this is not an image")], 422, "not an image"),
            "truncated": ([("cut.png", png[: len(png) // 2])], 422, "truncated"),
            "zero bytes": ([("empty.png", b"")], 422, "empty"),
            "absurd dimensions": ([("bomb.png", png_header_only(50_000, 50_000))], 422, "pixels"),
        }
        for label, (items, status, words) in cases.items():
            response = score(good + items)
            body = response.json()
            assert response.status_code == status, (label, response.text)
            assert (
                body["error"]["code"] == "invalid_image" and body["error"]["file"] == items[0][0]
            ), (label, body)
            assert words in body["error"]["message"], (label, body)

        assert score(good * 5).status_code == 413  # more than PATCHSHIFT_MAX_FILES=4
        big = [("big.bmp", b"BM" + b"\0" * (3 * 1024 * 1024))]
        response = score(big)
        assert response.status_code == 413 and "limit" in response.json()["error"]["message"]
        response = client.post("/v1/models/widget/score", data={"heatmap": "none"})
        assert response.status_code == 422 and "files" in response.json()["error"]["message"]
        assert score(good, {"heatmap": "jpeg"}).status_code == 422
        response = score(good, model="nosuch")
        assert response.status_code == 404 and "nosuch" in response.json()["error"]["message"]
        assert score(good, model="bad$name").status_code == 400
        assert client.get("/v1/models/..%2F..%2Fetc").status_code in (400, 404)
        response = client.post("/v1/models/widget/versions/v9/activate")
        assert response.status_code == 404 and "v9" in response.json()["error"]["message"]
        assert client.get("/v1/jobs/nosuchjob").status_code == 404
        response = client.post(
            "/v1/models/widget/adapt", files=files_field(good), data={"method": "magic"}
        )
        assert response.status_code == 422 and "magic" in response.json()["error"]["message"]
        response = client.post(
            "/v1/models/widget/adapt",
            files=files_field(good + [("x.png", b"junk")]),
            data={"method": "bn-stats"},
        )
        assert response.status_code == 422 and response.json()["error"]["file"] == "x.png"
        assert (
            client.delete("/v1/models/widget/versions/v1").status_code == 409
        )  # the active version

        # unusual but valid modes are converted, not refused
        odd = {
            "gray16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
            "rgba.png": Image.fromarray(rgb).convert("RGBA"),
            "palette.png": Image.fromarray(rgb).convert("P"),
            "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        }
        items = []
        for name, image in odd.items():
            buffer = io.BytesIO()
            image.save(buffer, format="PNG" if name.endswith("png") else "JPEG")
            items.append((name, buffer.getvalue()))
        assert score(items).status_code == 200

        # a corrupt stored version: reported, refused with the reason, the other model keeps serving
        ready = client.get(
            "/readyz"
        )  # not ready while a model cannot serve, and it says which and why
        assert (
            ready.status_code == 503 and "bank.safetensors" in ready.json()["load_errors"]["broken"]
        )
        response = score(good, model="broken")
        assert (
            response.status_code == 503
            and "bank.safetensors" in response.json()["error"]["message"]
        )
        assert "bank.safetensors" in client.get("/v1/models/broken").json()["load_error"]
        response = client.post("/v1/models/broken/versions/v1/activate")
        assert (
            response.status_code == 422 and response.json()["error"]["code"] == "invalid_artifact"
        )

        # a UDA version (global detector) is served: scores yes, heatmaps no
        assert score(good, model="global").status_code == 200
        response = score(good, {"heatmap": "png"}, model="global")
        assert response.status_code == 422 and "no heatmaps" in response.json()["error"]["message"]
        version = client.get("/v1/models/global").json()["versions"][0]
        assert version["kind"] == "uda" and version["bank_size"] is None

        assert client.get("/readyz").status_code == 503
        assert client.delete("/v1/models/broken").status_code == 204
        assert client.get("/readyz").status_code == 200
        assert 'status="500"' not in client.get("/metrics").text


def test_uda_adaptation_over_http(stored_server: Server, dataset: Path) -> None:
    source = named_bytes(sorted((dataset / "train/good").glob("*.png")))[:8]
    target = darkened(named_bytes(sorted((dataset / "train/good").glob("*.png")))[8:20], 0.6)
    probe = named_bytes(sorted((dataset / "test/good").glob("*.png")))[:2]
    uda = {"method": "uda-global", "epochs": "1", "image_size": "64", "clusters": "2"}

    def adapt(files, data, source_files=()):
        fields = files_field(files) + [
            ("source_files", (n, d, "application/octet-stream")) for n, d in source_files
        ]
        return client.post("/v1/models/widget/adapt", files=fields, data=data)

    with stored_server.client() as client:
        # what is wrong with the request is said before any job exists
        response = adapt(target, uda)
        assert response.status_code == 422 and "source_files" in response.json()["error"]["message"]
        response = adapt(target, {"method": "roda"}, source)
        assert response.status_code == 422 and "belong" in response.json()["error"]["message"]
        response = adapt(
            target, {**uda, "augment": "flip"}, source
        )  # a setting of the BatchNorm methods
        assert (
            response.status_code == 422
            and "augment is not a setting of method uda-global"
            in response.json()["error"]["message"]
        )
        response = adapt(target, {**uda, "encoder": "clip"}, source)
        assert (
            response.status_code == 422
            and "PATCHSHIFT_CLIP_CHECKPOINT" in response.json()["error"]["message"]
        )
        response = adapt(target, {**uda, "clusters": "1"}, source)
        assert response.status_code == 422 and "clusters" in response.json()["error"]["message"]
        response = adapt(target, uda, source[:1] + [("junk.png", b"not an image")])
        assert response.status_code == 422 and "junk.png" in response.json()["error"]["message"]

        # a target made of two even groups breaks the scarcity assumption: the job says so, nothing
        # is written
        halves = darkened(target[:6], 0.3) + darkened(target[6:], 1.8)
        job = wait_job(client, adapt(halves, uda, source).json()["job_id"])
        assert job["status"] == "failed" and "no cluster dominates" in job["error"], job
        assert [v["version"] for v in client.get("/v1/models/widget").json()["versions"]] == ["v1"]

        response = adapt(target, uda, source)
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["job_id"])
        assert job["status"] == "succeeded", job.get("error")
        result = job["result"]
        assert (
            result["method"] == "uda-global"
            and result["n_source_images"] == 8
            and sum(result["cluster_sizes"]) == 12
        )
        info = client.get("/v1/models/widget").json()
        new = next(v for v in info["versions"] if v["version"] == job["result_version"])
        assert (
            info["active_version"] == new["version"]
            and new["kind"] == "uda"
            and new["parent"] == "v1"
        )
        scores, version = scores_of(client, probe)
        assert version == new["version"] and np.isfinite(scores).all()
        assert (
            client.post(
                "/v1/models/widget/score", files=files_field(probe), data={"heatmap": "png"}
            ).status_code
            == 422
        )
        # a BatchNorm method cannot adapt the UDA version; rolling back to PatchCore works
        response = adapt(target, {"method": "bn-stats"})
        assert (
            response.status_code == 422
            and "is a uda-global model" in response.json()["error"]["message"]
        )
        assert client.post("/v1/models/widget/versions/v1/activate").status_code == 200
        assert scores_of(client, probe)[1] == "v1"


def test_auth_scopes(tmp_path: Path, saved_model: Path, dataset: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    admin, reader = "admin-secret-123", "reader-secret-456"
    server = Server(
        models, env={"PATCHSHIFT_ADMIN_KEY": admin, "PATCHSHIFT_READ_KEY": reader}
    ).start()
    probe = named_bytes(sorted((dataset / "test/good").glob("*.png")))[:1]
    try:
        with (
            server.client() as anonymous,
            server.client(reader) as read_client,
            server.client(admin) as admin_client,
            server.client("wrong-key-000") as wrong,
        ):
            assert anonymous.get("/healthz").status_code == 200
            assert anonymous.get("/metrics").status_code == 200
            assert anonymous.get("/v1/models").status_code == 401
            assert wrong.get("/v1/models").status_code == 401
            assert read_client.get("/v1/models").status_code == 200
            assert (
                read_client.post("/v1/models/widget/score", files=files_field(probe)).status_code
                == 200
            )
            assert admin_client.get("/v1/models/widget").status_code == 200
            response = read_client.post("/v1/models/widget/versions/v1/activate")
            assert response.status_code == 403 and "admin" in response.json()["error"]["message"]
            assert anonymous.post("/v1/models/widget/versions/v1/activate").status_code == 401
            assert (
                read_client.put("/v1/models/widget/threshold", json={"threshold": 5.0}).status_code
                == 403
            )
            calibrate = "/v1/models/widget/versions/v1/calibrate"
            assert read_client.post(calibrate, files=files_field(probe * 5)).status_code == 403
            response = admin_client.put("/v1/models/widget/threshold", json={"threshold": 5.0})
            assert response.status_code == 200 and response.json()["active_version"] == "v2"
            result = read_client.post("/v1/models/widget/score", files=files_field(probe)).json()
            assert result["version"] == "v2" and result["results"][0]["threshold"] == 5.0
            metrics = anonymous.get("/metrics").text
            assert (
                metric(
                    metrics,
                    'patchshift_http_requests_total{method="GET",route="/v1/models",status="401"}',
                )
                == 2
            )
    finally:
        server.stop()
    log = server.log.read_text()
    assert admin not in log and reader not in log


def test_persistent_drift_starts_one_adaptation_that_goes_live_only_if_it_helps(
    tmp_path: Path, saved_model: Path, dataset: Path
) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    env = {
        "PATCHSHIFT_AUTO_ADAPT": "1",
        "PATCHSHIFT_DRIFT_WINDOW": "8",
        "PATCHSHIFT_AUTO_ADAPT_PATIENCE": "8",
        "PATCHSHIFT_AUTO_ADAPT_IMAGES": "16",
    }
    server = Server(models, env=env).start()
    rng = np.random.default_rng(11)
    clean = [(f"c{i}.png", png_bytes(normal_image(rng))) for i in range(24)]
    try:
        with server.client() as client:
            for start in range(0, 16, 8):
                scores_of(client, clean[start : start + 8])
            assert client.get("/v1/jobs").json() == []  # no drift, no job
            dark = darkened(clean)
            for start in range(0, 24, 8):
                scores_of(client, dark[start : start + 8])
            jobs = client.get("/v1/jobs").json()
            assert len(jobs) == 1 and jobs[0]["params"]["trigger"] == "drift", (
                jobs
            )  # one job, however long drift lasts
            assert (
                jobs[0]["params"]["config"]["method"] == "target-memory"
            )  # the recommended method by default
            job = wait_job(client, jobs[0]["id"])
            assert job["status"] == "succeeded", job
            result = job["result"]
            assert result["n_images"] == 16 and result["own_bank"] and result["bank_rows"] > 0, (
                result
            )
            gate = result["gate"]  # the label-free verdict decides, and says why
            assert result["activated"] == gate["better"] and gate["reason"], result
            info = client.get("/v1/models/widget").json()
            assert job["result_version"] == "v2" and info["active_version"] == (
                "v2" if result["activated"] else "v1"
            )
            assert (
                info["versions"][1]["parent"] == "v1"
                and info["versions"][1]["method"] == "target-memory"
            )
            assert info["versions"][1]["details"]["gate"] == gate
    finally:
        server.stop()


def test_default_adaptation_moves_the_memory_and_versions_keep_their_banks(
    tmp_path: Path, saved_model: Path
) -> None:
    """The default method over HTTP: a version with its own bank, gated, rolled back, reloaded."""
    import shutil

    from conftest import plant_defect

    from patchshift.core.common.images import to_tensor
    from patchshift.core.engine.levels import LevelCorrection
    from patchshift.core.evaluation.corruptions import corrupt

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    rng = np.random.default_rng(0)
    # 120 images, a fifth with dark blobs: the new threshold at 1% is supported and catches them, so
    # the gate may put it live
    images = [normal_image(rng) for _ in range(96)] + [
        plant_defect(normal_image(rng), rng)[0] for _ in range(24)
    ]
    blurred = (
        (corrupt(to_tensor(images), "defocus_blur", 5, seed=1) * 255)
        .round()
        .byte()
        .permute(0, 2, 3, 1)
        .numpy()
    )
    target = [(f"b{i}.png", png_bytes(image)) for i, image in enumerate(blurred)]
    server = Server(models).start()
    try:
        with server.client() as client:
            before, _ = scores_of(client, target[:64])
            response = client.post(
                "/v1/models/widget/adapt", files=files_field(target)
            )  # every field at its default
            assert response.status_code == 202, response.text
            job = wait_job(client, response.json()["job_id"])
            assert job["status"] == "succeeded", job
            result = job["result"]
            assert result["method"] == "target-memory" and result["own_bank"], result
            assert result["gate"]["better"] and result["activated"], (
                result
            )  # this shift: the new version ranks better
            estimate = result[
                "threshold_estimate"
            ]  # what the new threshold is expected to flag, and how sure
            assert (
                estimate["supported"]
                and 0
                < estimate["expected_false_alarm_rate"]
                < estimate["false_alarm_interval"][1]
                <= 0.04
            )
            corrected = not LevelCorrection.from_dict(result["input_levels"]).is_identity
            # the source's features, unless the input levels were corrected: then a second view
            assert result["drift_before"] > 0 and ("drift_after" in result) == corrected, result
            v1, v2 = models / "widget" / "v1", models / "widget" / "v2"
            assert (v2 / "bank.safetensors").stat().st_ino != (
                v1 / "bank.safetensors"
            ).stat().st_ino
            info = client.get("/v1/models/widget").json()
            sizes = {v["version"]: v["bank_size"] for v in info["versions"]}
            assert sizes["v2"] == result["bank_rows"] > sizes["v1"]
            after, version = scores_of(client, target[:64])
            assert version == "v2" and not np.allclose(after, before)
            # a threshold override of v2 shares v2's bank, not v1's
            assert (
                client.put("/v1/models/widget/threshold", json={"threshold": 3.0}).status_code
                == 200
            )
            v3 = models / "widget" / "v3"
            assert (v3 / "bank.safetensors").stat().st_ino == (
                v2 / "bank.safetensors"
            ).stat().st_ino
            # roll back to the parent: its own bank again
            assert client.post("/v1/models/widget/versions/v1/activate").status_code == 200
            again, version = scores_of(client, target[:64])
            assert version == "v1"
            np.testing.assert_allclose(again, before, rtol=1e-5)
            assert client.post("/v1/models/widget/versions/v2/activate").status_code == 200
        server.stop()
        server.start()  # v2 reloads from its own bank
        with server.client() as client:
            reloaded, version = scores_of(client, target[:64])
            assert version == "v2"
            np.testing.assert_allclose(reloaded, after, rtol=1e-4, atol=1e-4)
    finally:
        server.stop()
