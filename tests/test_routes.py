"""In-process route tests over typed dependencies: the app is real, the worker is replaced through
`app.dependency_overrides`, so what each route hands to the worker is checked without running jobs.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from pathlib import Path

import pytest

from patchshift.core.adapt import METHODS, get_adapter

ADAPT_URL = "/v1/models/widget/adapt"


class RecordingWorker:
    """Takes submissions and keeps them; runs nothing."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, dict, int, int]] = []

    def require_jobs(self) -> None:  # this stand-in takes every job
        pass

    def submit(self, kind, model, params, files, source_files=()):
        from patchshift.service.job_store import QUEUED, Job

        self.submitted.append((kind, model, params, len(files), len(source_files)))
        return Job(f"job{len(self.submitted)}", kind, model, QUEUED, 0.0, None, params, "now")


@pytest.fixture()
def app_and_worker(tmp_path: Path, saved_model: Path):
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.deps import get_worker
    from patchshift.service.settings import Settings

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    app = create_app(Settings(models_dir=models, device="cpu"))
    worker = RecordingWorker()
    app.dependency_overrides[get_worker] = lambda: worker
    with TestClient(app) as client:
        yield client, worker


def images(dataset: Path, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    paths = sorted((dataset / "train" / "good").glob("*.png"))[:n]
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def sources(dataset: Path, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("source_files", item) for _, item in images(dataset, n)]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reaches_the_worker_with_only_what_was_set(app_and_worker, dataset, method):
    client, worker = app_and_worker
    adapter = get_adapter(method)
    extra = sources(dataset, 2) if adapter.min_source_images else []
    setting = "epochs" if "epochs" in adapter.options else "clusters"  # one each method takes
    data = {"method": method, setting: "2", "activate": "false"}
    if adapter.own_input_size:
        data["image_size"] = "64"
    response = client.post(
        ADAPT_URL, files=images(dataset, max(adapter.min_images, 5)) + extra, data=data
    )
    assert response.status_code == 202, response.text
    kind, model, params, n_files, n_sources = worker.submitted[-1]
    assert (kind, model, n_files, n_sources) == (
        "adapt",
        "widget",
        max(adapter.min_images, 5),
        len(extra),
    )
    assert params["config"] == {
        "method": method,
        setting: 2,
        **({"image_size": "64"} if adapter.own_input_size else {}),
    }
    assert params["activate"] == "false" and params["source_version"] == "v1"
    # what the worker stores, the worker can turn back into the config the route validated
    source = client.app.state.serving.get("widget")
    settings = {k: v for k, v in params["config"].items() if k != "method"}
    assert getattr(adapter.configure(source, settings), setting) == 2


def test_a_clip_job_stores_no_server_path_and_the_worker_adds_it_back(
    tmp_path: Path, saved_model: Path, dataset, monkeypatch
):
    """Job params are shown to every read-scope key: the server's CLIP checkpoint path stays out of
    them."""
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.deps import get_worker
    from patchshift.service.job_runner import JobInputs
    from patchshift.service.job_store import QUEUED, Job
    from patchshift.service.settings import Settings

    models, checkpoint = tmp_path / "models", tmp_path / "secret-dir" / "clip.pt"
    shutil.copytree(saved_model, models / "widget" / "v1")
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    settings = Settings(models_dir=models, device="cpu", clip_checkpoint=checkpoint)
    app = create_app(settings)
    worker = RecordingWorker()
    app.dependency_overrides[get_worker] = lambda: worker
    with TestClient(app) as client:
        data = {"method": "uda-global", "encoder": "clip", "image_size": "64", "epochs": "1"}
        response = client.post(ADAPT_URL, files=images(dataset, 5) + sources(dataset, 2), data=data)
        assert response.status_code == 202, response.text
        params = worker.submitted[-1][2]
        assert "secret-dir" not in json.dumps(params) and params["config"]["encoder"] == "clip"
        # the real worker task turns the stored params back into the config, the server's file
        # included
        seen = {}

        def configure(self, parent, options):
            seen.update(options)
            raise RuntimeError("stop here")

        monkeypatch.setattr(type(get_adapter("uda-global")), "configure", configure)
        job = Job("job1", "adapt", "widget", QUEUED, 0.0, None, params, "now")
        with pytest.raises(RuntimeError, match="stop here"):
            client.app.state.worker.runner.tasks["adapt"](
                job, JobInputs([], []), lambda *a: None, lambda: False
            )
    assert seen["clip_checkpoint"] == str(checkpoint) and seen["clip_model"] == settings.clip_model


def test_if_better_spelled_out_with_enough_images_reaches_the_worker(app_and_worker, dataset):
    client, worker = app_and_worker
    response = client.post(
        ADAPT_URL, files=images(dataset, 5), data={"method": "none", "activate": "if-better"}
    )
    assert response.status_code == 202, response.text
    assert worker.submitted[-1][2]["activate"] == "if-better"


@pytest.mark.parametrize(
    ("data", "extra_sources", "message"),
    [
        ({"method": "roda", "clusters": "4"}, 0, "clusters is not a setting of method roda"),
        (
            {"method": "uda-global", "augment": "flip"},
            2,
            "augment is not a setting of method uda-global",
        ),
        ({"method": "uda-global"}, 0, "method uda-global needs source images"),
        ({"method": "uda"}, 2, "source images belong to methods that learn from them"),
        ({"method": "uda", "epochs": "2"}, 0, "epochs is not a setting of method uda"),
        ({"method": "bn-stats"}, 2, "source images belong to methods that learn from them"),
        ({"method": "target-memory"}, 0, "needs at least 5 images"),
        (
            {"method": "bn-stats"},
            0,
            "activate=if-better checks the new version on the images themselves, which needs at "
            "least 5",
        ),
        ({"method": "no-such-method"}, 0, "method"),
    ],
)
def test_a_bad_adaptation_request_is_refused_before_the_worker(
    app_and_worker, dataset, data, extra_sources, message
):
    client, worker = app_and_worker
    n = 3 if data["method"] in ("target-memory", "bn-stats") else 5
    response = client.post(
        ADAPT_URL, files=images(dataset, n) + sources(dataset, extra_sources), data=data
    )
    assert response.status_code == 422 and message in response.text, response.text
    assert worker.submitted == []


@pytest.mark.parametrize(
    ("settings", "key", "expected"),
    [
        ({}, None, (200, "admin")),  # no keys configured: everyone is admin
        (
            {"admin_key": "admin-key-123", "read_key": "read-key-123"},
            "admin-key-123",
            (200, "admin"),
        ),
        ({"admin_key": "admin-key-123", "read_key": "read-key-123"}, "read-key-123", (200, "read")),
        ({"admin_key": "admin-key-123", "read_key": "read-key-123"}, None, (401, None)),
        ({"admin_key": "admin-key-123", "read_key": "read-key-123"}, "wrong-key-123", (401, None)),
        ({"admin_key": "admin-key-123", "open_reads": True}, None, (200, "read")),
    ],
)
def test_the_session_says_what_the_key_may_do(tmp_path: Path, settings, key, expected):
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    app = create_app(Settings(models_dir=tmp_path / "models", device="cpu", **settings))
    with TestClient(app) as client:
        response = client.get(
            "/v1/session", headers={"Authorization": f"Bearer {key}"} if key else {}
        )
        assert response.status_code == expected[0], response.text
        if expected[1]:
            assert response.json() == {
                "scope": expected[1],
                "auth": bool(settings),
                "device": "cpu",
            }
        methods = client.get(
            "/v1/methods", headers={"Authorization": f"Bearer {key}"} if key else {}
        )
        if expected[0] == 200:
            names = [m["name"] for m in methods.json()]
            assert (
                names[0] == "target-memory"
                and set(names) == set(METHODS)
                and methods.json()[0]["recommended"]
            )


def test_scoring_with_a_given_version_is_for_review_only(app_and_worker, dataset):
    client, _ = app_and_worker
    assert (
        client.put("/v1/models/widget/threshold", json={"threshold": 1e-3}).status_code == 200
    )  # v2, active, flags all
    probe = images(dataset, 2)
    old = client.post("/v1/models/widget/versions/v1/score", files=probe)
    assert old.status_code == 200 and old.json()["version"] == "v1"
    assert [r["anomalous"] for r in old.json()["results"]] == [
        False,
        False,
    ]  # v1's own threshold, not the active one's
    assert all(
        r["anomalous"]
        for r in client.post("/v1/models/widget/score", files=probe).json()["results"]
    )
    assert (
        client.get("/v1/models/widget").json()["drift"]["recent_images"] == 2
    )  # only the line's call fed drift
    assert client.post("/v1/models/widget/versions/v9/score", files=probe).status_code == 404
    assert client.delete("/v1/models/widget/versions/v1").status_code == 204
    assert (
        client.post("/v1/models/widget/versions/v1/score", files=probe).status_code == 404
    )  # deleted: not served from the cache


def test_history_keeps_what_the_line_saw_bounded(tmp_path: Path, saved_model: Path, dataset):
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    app = create_app(
        Settings(models_dir=models, device="cpu", history_scores=5, recent_images=3, drift_window=2)
    )
    with TestClient(app) as client:
        for _ in range(2):
            assert (
                client.post("/v1/models/widget/score", files=images(dataset, 3)).status_code == 200
            )
        client.post(
            "/v1/models/widget/versions/v1/score", files=images(dataset, 3)
        )  # review scoring is not the line's
        history = client.get("/v1/models/widget/history").json()
        assert len(history["scores"]) == 5 and len(history["recent_images"]) == 3  # bounded rings
        assert (
            client.get("/v1/models/widget").json()["images_scored"] == 6
        )  # the line's images only, all of them
        assert len(history["drift"]) == 2 and all(
            p["statistic"] > 0 and p["version"] == "v1" for p in history["drift"]
        )
        newest = history["recent_images"][0]
        assert (
            newest["filename"] == images(dataset, 3)[-1][1][0]
            and base64.b64decode(newest["thumbnail_jpeg"])[:2] == b"\xff\xd8"
        )
        assert client.get("/v1/models/nobody/history").status_code == 404
    quiet = create_app(Settings(models_dir=models, device="cpu", recent_images=0))
    with TestClient(quiet) as client:
        client.post("/v1/models/widget/score", files=images(dataset, 2))
        assert (
            client.get("/v1/models/widget/history").json()["recent_images"] == []
        )  # kept nowhere when turned off


def test_a_candidate_is_reviewed_against_the_active_version_on_the_line_s_own_images(
    tmp_path: Path, saved_model: Path, dataset
):
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    app = create_app(Settings(models_dir=models, device="cpu", recent_images=3))
    with TestClient(app) as client:
        assert (
            client.post("/v1/models/widget/versions/v1/review").status_code == 409
        )  # nothing seen yet: says so
        line = images(dataset, 4)
        assert client.post("/v1/models/widget/score", files=line).status_code == 200
        assert (
            client.put("/v1/models/widget/threshold", json={"threshold": 1e-3}).status_code == 200
        )  # v2 flags everything
        review = client.post("/v1/models/widget/versions/v1/review", data={"heatmap": "png"})
        assert review.status_code == 200, review.text
        body = review.json()
        assert body["active_version"] == "v2" and body["candidate_version"] == "v1"
        assert [i["filename"] for i in body["images"]] == [name for _, (name, _, _) in line[1:]][
            ::-1
        ]  # the 3 kept, newest first
        assert (
            [i["number"] for i in body["images"]]
            == [
                i["number"] for i in client.get("/v1/models/widget/history").json()["recent_images"]
            ]
            == [4, 3, 2]
        )  # the names the line's thumbnails give the same parts, to check them by
        kept = [("files", f) for _, f in line[1:]][::-1]
        direct = client.post("/v1/models/widget/versions/v1/score", files=kept).json()["results"]
        for image, expected in zip(
            body["images"], direct, strict=False
        ):  # the kept model inputs score as the uploads did
            assert image["candidate"]["score"] == pytest.approx(expected["score"], rel=1e-4)
            assert image["active"]["score"] == pytest.approx(
                image["candidate"]["score"], rel=1e-6
            )  # same bank, other threshold
            assert image["active"]["anomalous"] and not image["candidate"]["anomalous"]
            assert base64.b64decode(image["candidate"]["heatmap_png"])[:4] == b"\x89PNG"
        assert (
            client.get("/v1/models/widget/history").json()["scores"].__len__() == 4
        )  # reviewing is not the line's scoring
        assert client.post("/v1/models/widget/versions/v9/review").status_code == 404
    quiet = create_app(Settings(models_dir=models, device="cpu", recent_images=0))
    with TestClient(quiet) as client:
        client.post("/v1/models/widget/score", files=images(dataset, 2))
        refused = client.post("/v1/models/widget/versions/v1/review")
        assert (
            refused.status_code == 409
            and "PATCHSHIFT_RECENT_IMAGES" in refused.json()["error"]["message"]
        )


def test_auto_adapt_cannot_name_a_method_that_needs_source_images():
    from pydantic import ValidationError

    from patchshift.service.settings import Settings

    with pytest.raises(
        ValidationError, match="source domain, which a running service does not keep"
    ) as refused:
        Settings(auto_adapt_method="uda-global")
    choices = str(refused.value).split("takes one of ")[1].split("[")[0]  # the ones it does take
    assert "target-memory" in choices and "uda" in choices and "uda-global" not in choices
    with pytest.raises(ValidationError, match="unknown adaptation method 'rodda'"):
        Settings(auto_adapt_method="rodda")


def test_a_job_read_waits_for_the_job_to_end(app_and_worker):
    """GET /v1/jobs/{id}?wait=S answers when the job ends; wait=0 answers at once."""
    from patchshift.service.deps import get_jobs
    from patchshift.service.job_store import SUCCEEDED

    client, _ = app_and_worker
    jobs = client.app.state.jobs
    job = jobs.create("fit", "widget", {})
    assert client.get(f"/v1/jobs/{job.id}?wait=0").json()["status"] == "queued"

    first_read = threading.Event()

    class WatchedJobs:  # the job store, telling the test when the route has read the job once
        def get(self, job_id):
            answer = jobs.get(job_id)
            first_read.set()
            return answer

    def finish_after_the_first_read():
        first_read.wait(10)
        jobs.start(job.id)
        jobs.finish(job.id, SUCCEEDED, result_version="v2", result={})

    client.app.dependency_overrides[get_jobs] = lambda: WatchedJobs()
    finisher = threading.Thread(target=finish_after_the_first_read)
    finisher.start()
    answer = client.get(f"/v1/jobs/{job.id}?wait=30").json()
    finisher.join(10)
    assert answer["status"] == SUCCEEDED and answer["result_version"] == "v2"
    assert client.get("/v1/jobs/nope?wait=1").status_code == 404
    assert client.get(f"/v1/jobs/{job.id}?wait=601").status_code == 422
