"""A model's version lifecycle (service/lifecycle.py): the job slot, activation and rollback, and
the rule that a job never undoes an activation made while it ran; with the races that guard them."""

from __future__ import annotations

import copy
import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from service_helpers import (
    files_field,
    named_bytes,
    png_bytes,
    store_state,
    wait_job,
)

ADMIN = "admin-key-for-tests"


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


def test_threshold_change_waits_for_the_models_unfinished_job(
    client, dataset: Path, monkeypatch
) -> None:
    """A job held in 'running' by the test (no timing assumptions): the threshold route answers
    409."""

    import patchshift.core.adapt as adapt_module

    running, release = threading.Event(), threading.Event()

    def held(model, target, cfg, loss, report_, progress, cancel):
        running.set()
        assert release.wait(60), "the test never released the job"
        return copy.deepcopy(model.extractor)

    monkeypatch.setattr(adapt_module.batchnorm, "train_affine", held)
    images = named_bytes(sorted((dataset / "train/good").glob("*.png"))[:4])
    job_id = client.post(
        "/v1/models/widget/adapt",
        files=files_field(images),
        data={"method": "roda", "activate": "false"},
    ).json()["job_id"]
    assert running.wait(30), "the job never started"
    response = client.put("/v1/models/widget/threshold", json={"threshold": 9.0})
    assert response.status_code == 409 and "unfinished job" in response.json()["error"]["message"]
    release.set()
    assert wait_job(client, job_id)["status"] == "succeeded"
    assert client.put("/v1/models/widget/threshold", json={"threshold": 9.0}).status_code == 200


def test_an_activation_waits_while_images_of_the_old_version_enter_its_monitor(
    client, monkeypatch
) -> None:
    """Activation resets the drift window: images scored by the old version must not land in the new
    one's."""

    state = client.app.state
    old = state.serving.get("widget")
    monitor = state.drift.monitor("widget")
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
        state.lifecycle.activate("widget", "v1", copy.copy(old))
        activated_at.append(time.monotonic())

    racer = threading.Thread(target=activate_copy)
    monkeypatch.setattr(monitor, "add", slow_add)
    assert state.drift.observe("widget", old, descriptors, np.zeros(1, bool), []) is not None
    racer.join(10)
    assert activated_at and activated_at[0] >= added_at[0]  # the activation waited for the add
    assert (
        monitor.n_recent == 0 and state.serving.get("widget") is not old
    )  # and then reset the window
    assert (
        state.drift.observe("widget", old, descriptors, np.zeros(1, bool), []) is None
    )  # old version: ignored


def rollback_while_writing(state, monkeypatch, to: str) -> None:
    """Make the next version allocation activate `to` first, as an operator's rollback would
    meanwhile."""
    allocate = state.store.allocate_version

    def rollback_then_allocate(name):
        state.lifecycle.activate(name, to)
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
    assert state.store.active("widget") == "v1" and state.serving.get("widget").version == "v1"


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
    """Any model kind takes a threshold: a new version, same detector, the given threshold."""
    from conftest import save_tiny_uda
    from fastapi.testclient import TestClient

    from patchshift.core.artifact import load_model
    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    uda = save_tiny_uda(store / "global" / "v1")
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


def test_a_job_slot_held_for_a_change_makes_a_submission_wait(tmp_path: Path) -> None:
    """While a threshold version is written no job can be queued for the model (and the other way
    round)."""
    from service_helpers import worker_and_lifecycle

    from patchshift.service.http_errors import Conflict

    worker, lifecycle = worker_and_lifecycle(tmp_path, {})
    (tmp_path / "uploads").mkdir()
    queued_at: list[float] = []
    lock = lifecycle._slots
    waiting = threading.Event()

    class ObservedLock:  # the slot's lock, telling the test when the submission waits on it
        def __enter__(self):
            waiting.set()
            return lock.__enter__()

        def __exit__(self, *exc):
            return lock.__exit__(*exc)

    def submit_now():
        worker.submit("adapt", "widget", {}, [("a.png", b"x")])
        queued_at.append(time.monotonic())

    with lifecycle.job_slot("widget", "set the threshold"):
        lifecycle._slots = ObservedLock()
        racer = threading.Thread(target=submit_now)
        racer.start()
        assert waiting.wait(10), "the submission never reached the job slot"
        assert queued_at == [] and worker.jobs.unfinished("widget") == []  # it waits
        released_at = time.monotonic()
    racer.join(10)
    lifecycle._slots = lock
    assert queued_at and queued_at[0] >= released_at
    with pytest.raises(Conflict, match="unfinished job"):  # and now the queued job holds the slot
        with lifecycle.job_slot("widget", "set the threshold"):
            pass


def test_a_job_does_not_undo_an_activation_made_while_it_ran(client) -> None:
    state = client.app.state
    assert client.put("/v1/models/widget/threshold", json={"threshold": 3.0}).status_code == 200
    finished = state.serving.load("widget", "v1")  # what a job started from v1 would hand over
    reason = state.lifecycle.activate_unless_moved("widget", "v1", "v1", finished, "adaptation")
    assert reason == (
        "the active version changed from v1 to v2 while this job ran; v1 is kept for review"
    )
    assert state.store.active("widget") == "v2" and state.serving.get("widget").version == "v2"
    assert (
        state.lifecycle.activate_unless_moved("widget", "v2", "v1", finished, "adaptation") is None
    )
    assert state.store.active("widget") == "v1" and state.serving.get("widget") is finished
