"""Units of the service and of drift: store, job records, keys, drift statistic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_drift_statistic_hand_computed() -> None:
    from patchshift.core.engine.drift import DriftReference, drift_statistic

    reference = DriftReference(mean=np.array([0.0, 1.0]), std=np.array([1.0, 2.0]), n_images=4)
    window = np.array([[1.0, 1.0], [3.0, 5.0]])  # means (2, 3)
    # channel 0: (2-0)^2 / (1 * (1/2 + 1/4)) = 16/3; channel 1: (3-1)^2 / (4 * 0.75) = 4/3; mean
    # 10/3
    assert drift_statistic(reference, window) == pytest.approx(10 / 3)


def test_drift_statistic_is_about_one_without_drift() -> None:
    from patchshift.core.engine.drift import DriftReference, drift_statistic

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(16, 16))  # correlated channels
    reference = DriftReference.from_descriptors(rng.normal(size=(400, 16)) @ mixing)
    values = [drift_statistic(reference, rng.normal(size=(32, 16)) @ mixing) for _ in range(200)]
    assert 0.7 < np.mean(values) < 1.3
    shifted = [
        drift_statistic(reference, rng.normal(1.0, 1, size=(32, 16)) @ mixing) for _ in range(20)
    ]
    assert min(shifted) > max(values)


def test_drift_monitor_window_and_reset() -> None:
    from patchshift.core.engine.drift import DriftMonitor, DriftReference

    reference = DriftReference(np.zeros(2), np.ones(2), 100)
    monitor = DriftMonitor(reference, window=3, threshold=5.0)
    monitor.add(np.zeros((2, 2)), np.array([False, True]))
    assert monitor.statistic() is None and monitor.anomalous_share() == 0.5
    monitor.add(np.full((3, 2), 10.0), np.zeros(3, bool))
    assert monitor.statistic() > 5 and monitor.drifting() and monitor.n_recent == 3
    monitor.reset(reference)
    assert monitor.n_recent == 0 and not monitor.drifting()


def test_descriptors_are_channel_means_and_spreads() -> None:
    import torch

    from patchshift.core.engine.drift import image_descriptors

    feats = torch.tensor(
        [[[[1.0, 0.0], [3.0, 0.0]]]]
    )  # (1, 1, 2, 2): one image, two patches, two channels
    np.testing.assert_allclose(image_descriptors(feats).numpy(), [[2.0, 0.0, 1.0, 0.0]])


def test_store_versions_pointer_and_names(tmp_path: Path, saved_model: Path) -> None:
    import shutil

    from patchshift.service.http_errors import Conflict, InvalidName, NotFound
    from patchshift.service.store import ModelStore

    store = ModelStore(tmp_path)
    assert store.allocate_version("widget") == "v1"
    shutil.copytree(saved_model, tmp_path / "widget" / "v1")
    assert store.allocate_version("widget") == "v2"
    shutil.copytree(saved_model, tmp_path / "widget" / "v2")
    (tmp_path / "widget" / ".v2.tmp-abc").mkdir()  # a crashed write: not a version
    assert store.models() == ["widget"] and store.versions("widget") == ["v1", "v2"]
    assert store.active("widget") == "v2"  # no pointer yet: newest
    store.set_active("widget", "v1")
    assert store.active("widget") == "v1"
    with pytest.raises(Conflict):
        store.delete_version("widget", "v1")
    store.delete_version("widget", "v2")
    assert (
        store.versions("widget") == ["v1"] and store.allocate_version("widget") == "v3"
    )  # names never reused
    with pytest.raises(NotFound):
        store.set_active("widget", "v2")
    for bad in ("../etc", "a/b", ".hidden", "", "x" * 65, "a$b"):
        with pytest.raises(InvalidName):
            store.model_dir(bad)
    assert [p.name for p in store.clean_leftovers()] == [".v2.tmp-abc"]


def test_job_records_survive_and_recover(tmp_path: Path) -> None:
    from patchshift.service.job_store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

    jobs = JobStore.open(tmp_path / "jobs.sqlite")
    a = jobs.create("adapt", "widget", {"x": 1})
    b = jobs.create("fit", "other", {})
    c = jobs.create("fit", "third", {})
    assert jobs.start(a.id) and not jobs.start(a.id)
    jobs.progress(a.id, 0.5, "adapt", attempt=1)
    assert jobs.finish(c.id, CANCELLED) and not jobs.finish(c.id, SUCCEEDED)
    jobs.close()

    reopened = JobStore.open(tmp_path / "jobs.sqlite")
    interrupted, queued = reopened.recover()
    assert [j.id for j in interrupted] == [a.id] and [j.id for j in queued] == [b.id]
    job = reopened.get(a.id)
    assert (
        job.status == FAILED
        and job.progress == 0.5
        and "stopped" in job.error
        and job.params == {"x": 1}
    )
    assert reopened.get(b.id).status == QUEUED and reopened.get(c.id).status == CANCELLED
    assert RUNNING not in {j.status for j in reopened.list()}


def test_keys_and_scopes(tmp_path: Path) -> None:
    from patchshift.core.common.errors import ConfigError
    from patchshift.service.auth import ADMIN, READ, Keys
    from patchshift.service.settings import Settings

    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"admin": ["second-admin-key"], "read": ["second-read-key"]}')
    keys = Keys.from_settings(
        Settings(admin_key="first-admin-key", read_key="first-read-key", keys_file=keys_file)
    )
    assert keys.enabled
    assert keys.scope_of("first-admin-key") == ADMIN and keys.scope_of("second-admin-key") == ADMIN
    assert keys.scope_of("second-read-key") == READ and keys.scope_of("nope") is None
    assert not Keys.from_settings(Settings()).enabled
    keys_file.write_text("not json")
    with pytest.raises(ConfigError, match="keys file"):
        Keys.from_settings(Settings(keys_file=keys_file))
    with pytest.raises(ConfigError, match="8 characters"):
        Keys.from_settings(Settings(admin_key="short"))


def test_drift_monitor_is_safe_under_concurrent_add_reset_and_verdict() -> None:
    """The worker resets, the event loop adds and request threads read the same monitor."""
    import threading

    from patchshift.core.engine.drift import DriftMonitor, DriftReference

    rng = np.random.default_rng(0)
    reference = DriftReference.from_descriptors(rng.normal(size=(50, 64)))
    monitor = DriftMonitor(reference, window=256, threshold=10.0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(action) -> None:
        try:
            while not stop.is_set():
                action()
        except BaseException as exc:  # noqa: BLE001 - any exception is the finding
            errors.append(exc)
            stop.set()

    rows = rng.normal(size=(8, 64))
    flags = np.zeros(8, dtype=bool)
    actions = [
        lambda: monitor.add(rows, flags),
        lambda: monitor.add(rows, flags),
        monitor.verdict,
        monitor.verdict,
        monitor.anomalous_share,
        lambda: monitor.reset(reference),
    ]
    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    stop.wait(3.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []


def test_history_is_safe_under_concurrent_records_and_snapshots() -> None:
    import threading

    from patchshift.service.history import History

    history = History(scores=50, drift_points=20, images=5)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(k: int) -> None:
        try:
            for i in range(2000):
                history.record(
                    f"v{k}-{i}",
                    1.0,
                    [f"a{i}", f"b{i}"],
                    np.array([0.5, 2.0]),
                    np.array([False, True]),
                    (1.0 + i, 10.0, False),
                    [b"\xff\xd8jpeg"],
                    [np.zeros((2, 2, 3), np.uint8)],
                )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                snap = history.snapshot()
                assert (
                    len(snap["scores"]) <= 50
                    and len(snap["drift"]) <= 20
                    and len(snap["recent_images"]) <= 5
                )
                if snap["scores"]:  # a request is seen whole or not at all
                    newest = {
                        snap["scores"][-1]["version"],
                        snap["drift"][-1]["version"],
                        snap["recent_images"][0]["version"],
                    }
                    assert len(newest) == 1, newest
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    snap = history.snapshot()
    assert (
        len(snap["scores"]) == 50 and len(snap["drift"]) == 20 and len(snap["recent_images"]) == 5
    )
    assert all(
        r["filename"].startswith("b") for r in snap["recent_images"]
    )  # the last image of each request


def test_cancel_racing_the_worker_start_stops_the_running_job(tmp_path: Path) -> None:
    """A cancel that reads 'queued' just before the worker starts the job must stop the running job,
    not mark it cancelled while it runs on (and later saves a version no job result names)."""
    import threading

    from service_helpers import worker_and_lifecycle

    from patchshift.service.job_store import CANCELLED, RUNNING

    started, seen_cancel = threading.Event(), threading.Event()

    def task(job, inputs, progress, cancelled):
        started.set()
        for _ in range(500):
            if cancelled():
                seen_cancel.set()
                from patchshift.core.common.errors import CancelledError

                raise CancelledError("stopped")
            threading.Event().wait(0.01)
        return "v2", {}

    worker, _ = worker_and_lifecycle(tmp_path, {"adapt": task})
    jobs = worker.jobs
    job = worker.submit("adapt", "widget", {}, [("a.png", b"x")])
    read = jobs.get

    def get_then_worker_starts(job_id):  # the worker thread wins the race right after cancel's read
        record = read(job_id)
        jobs.get = read
        worker.start()
        assert started.wait(10)
        return record

    jobs.get = get_then_worker_starts
    answer = worker.cancel(job.id)
    assert answer.status == RUNNING, answer
    assert seen_cancel.wait(10), "the running job was never told to stop"
    worker.stop()
    assert jobs.get(job.id).status == CANCELLED


def test_a_job_and_an_activation_are_counted(tmp_path, client) -> None:
    """Pickup delay (submission to start) per job kind; activations by cause."""
    import threading

    from prometheus_client import generate_latest
    from service_helpers import worker_and_lifecycle

    done = threading.Event()

    def task(job, inputs, progress, cancelled):
        done.set()
        return "v2", {}

    worker, _ = worker_and_lifecycle(tmp_path, {"adapt": task})
    worker.submit("adapt", "widget", {}, [("a.png", b"x")])
    worker.start()
    assert done.wait(10)
    worker.stop()
    exposed = generate_latest(worker.metrics.registry).decode()
    assert 'patchshift_job_pickup_seconds_count{kind="adapt"} 1.0' in exposed
    assert client.put("/v1/models/widget/threshold", json={"threshold": 4.0}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'patchshift_activations_total{cause="threshold"} 1.0' in metrics
