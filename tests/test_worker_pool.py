"""The scaled-out service as processes on loopback: scoring replicas (`patchshift serve`,
PATCHSHIFT_RUN_JOBS=0) and workers (`patchshift worker`) on one PostgreSQL database and one model
store. A worker's lease is 3 s, so that a silent worker is noticed quickly.

Most tests share one pool (1 scorer, 2 workers), each on a model of its own; a worker a test
stopped or killed is started again after it."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from service_helpers import Server, files_field, png_bytes, wait_job

LEASE = 3.0
# the models of the shared pool's tests: one each, so their versions are theirs alone
POOL_MODELS = ("killed", "dying", "paused", "stopped", "cancelled", "raced")


@contextmanager
def pool(store: Path, url: str, scorers: int = 3, workers: int = 2) -> Iterator[dict]:
    env = {
        "PATCHSHIFT_DATABASE_URL": url,
        "PATCHSHIFT_WORKER_LEASE": str(LEASE),
        "PATCHSHIFT_FOLLOW_INTERVAL": "1",
        "OMP_NUM_THREADS": "1",
    }
    logs = store.parent
    with ExitStack() as stack:
        started = {
            "scorers": [
                Server(store, {**env, "PATCHSHIFT_RUN_JOBS": "0"}, logs / f"scorer{i}.log")
                for i in range(scorers)
            ],
            "workers": [
                Server(store, env, logs / f"worker{i}.log", command="worker")
                for i in range(workers)
            ],
        }
        processes = [*started["scorers"], *started["workers"]]
        for process in processes:  # side by side: start-up is mostly imports
            stack.callback(process.stop)
            process.launch()
        for process in processes:
            process.wait_ready(180)
        yield started


@pytest.fixture(scope="module")
def shared_pool(saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from conftest import fresh_postgres_database

    store = tmp_path_factory.mktemp("pool") / "models"
    for name in POOL_MODELS:
        shutil.copytree(saved_model, store / name / "v1")
    with fresh_postgres_database() as url, pool(store, url, scorers=1, workers=2) as started:
        yield {**started, "store": store, "url": url}


@pytest.fixture()
def pool_of_two(shared_pool: dict) -> Iterator[dict]:
    """The shared pool with both workers running, before and after the test."""
    yield shared_pool
    for worker in shared_pool["workers"]:
        if worker.process.poll() is not None:
            worker.start(180)


def versions(pool: dict, model: str) -> list[str]:
    from patchshift.service.store import ModelStore

    return ModelStore(pool["store"]).versions(model)


def adaptation_images(dataset: Path, n: int = 48) -> list:
    """Darkened copies of the widget's images, many enough that the job runs for seconds."""
    import numpy as np
    from PIL import Image

    paths = sorted((dataset / "train/good").glob("*.png")) + sorted(
        (dataset / "test").glob("*/*.png")
    )
    images = []
    for i in range(n):
        pixels = np.asarray(Image.open(paths[i % len(paths)]).convert("RGB"), np.float32)
        images.append((f"{i}.png", png_bytes((pixels * 0.6 + i % 7).clip(0, 255).astype("uint8"))))
    return files_field(images)


def runner_of(job_id: str, workers: list[Server]) -> Server | None:
    """The worker whose log says it started `job_id` last."""
    started = [w for w in workers if f"job {job_id} (" in w.log.read_text()]
    return started[-1] if len(started) == 1 else None


def until_running(client: httpx.Client, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        if job["status"] == "running" and job["progress"] > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran")


def test_a_worker_killed_mid_adaptation_has_its_job_run_again_once(
    pool_of_two: dict, dataset: Path
) -> None:
    scorer, workers = pool_of_two["scorers"][0], pool_of_two["workers"]
    with scorer.client() as client:
        answer = client.post(
            "/v1/models/killed/adapt", files=adaptation_images(dataset), data={"activate": "true"}
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        until_running(client, job_id)
        victim = runner_of(job_id, workers)
        victim.kill9()
        killed = time.monotonic()
        job = wait_job(client, job_id, until=("queued", "succeeded", "failed"), timeout=60)
        noticed = time.monotonic() - killed
        job = wait_job(client, job_id, timeout=300)
    assert job["status"] == "succeeded", job
    # noticed within the lease plus a sweep (a quarter lease) and the polling
    assert noticed < 2 * LEASE + 2, noticed
    survivor = next(w for w in workers if w is not victim)
    assert f"job {job_id} (adapt of killed) started: run 2" in survivor.log.read_text()
    assert versions(pool_of_two, "killed") == ["v1", job["result_version"]]  # one version
    from patchshift.core.artifact import load_model

    load_model(pool_of_two["store"] / "killed" / job["result_version"])  # whole


def test_a_cancel_asked_while_its_worker_dies_ends_the_job_cancelled(
    pool_of_two: dict, dataset: Path
) -> None:
    """The worker is frozen (it cannot hear the cancel), the cancel is asked, then the worker is
    killed: the sweep ends the job cancelled instead of running it again."""
    import signal

    scorer, workers = pool_of_two["scorers"][0], pool_of_two["workers"]
    with scorer.client() as client:
        answer = client.post("/v1/models/dying/adapt", files=adaptation_images(dataset, 96))
        job_id = answer.json()["job_id"]
        until_running(client, job_id)
        victim = runner_of(job_id, workers)
        victim.process.send_signal(signal.SIGSTOP)
        assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "running"
        victim.kill9()
        job = wait_job(client, job_id, timeout=2 * LEASE + 30)
    assert job["status"] == "cancelled", job
    assert "cancelled by request" in job["error"] and "not run again" in job["error"], job
    survivor = next(w for w in workers if w is not victim)
    assert f"job {job_id} (adapt of dying) started: run 2" not in survivor.log.read_text()
    assert versions(pool_of_two, "dying") == ["v1"]


def test_a_paused_worker_that_lost_its_lease_writes_nothing_when_it_wakes(
    pool_of_two: dict, dataset: Path
) -> None:
    """SIGSTOP past the lease (a frozen VM, a network partition): the other worker runs the job
    again; when the paused one wakes, its run writes nothing (no second version, the job's record
    untouched) and the job ends once."""
    import signal

    with pool_of_two["scorers"][0].client() as client:
        answer = client.post("/v1/models/paused/adapt", files=adaptation_images(dataset, 96))
        job_id = answer.json()["job_id"]
        until_running(client, job_id)
        paused = runner_of(job_id, pool_of_two["workers"])
        other = next(w for w in pool_of_two["workers"] if w is not paused)
        paused.process.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while f"job {job_id} (adapt of paused) started: run 2" not in other.log.read_text():
                assert time.monotonic() < deadline, "the job was not run again"
                time.sleep(0.1)
        finally:
            paused.process.send_signal(signal.SIGCONT)
        job = wait_job(client, job_id, timeout=300)
        deadline = time.monotonic() + 60
        while f"job {job_id}: this run lost its lease" not in paused.log.read_text():
            assert time.monotonic() < deadline, paused.log.read_text()[-3000:]
            time.sleep(0.2)
        again = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert again == job  # the woken run changed nothing
    # one new version (the paused run may have taken a number, never a version)
    assert versions(pool_of_two, "paused") == ["v1", job["result_version"]]
    assert paused.process.poll() is None  # and its worker goes on


def test_a_worker_told_to_stop_hands_its_job_back(pool_of_two: dict, dataset: Path) -> None:
    """SIGINT (as SIGTERM) mid-adaptation: the worker exits soon, its job goes back to the queue
    and the other worker runs it to the end."""
    with pool_of_two["scorers"][0].client() as client:
        answer = client.post("/v1/models/stopped/adapt", files=adaptation_images(dataset))
        job_id = answer.json()["job_id"]
        until_running(client, job_id)
        leaving = runner_of(job_id, pool_of_two["workers"])
        asked = time.monotonic()
        leaving.stop()
        stopped = time.monotonic() - asked
        job = wait_job(client, job_id, timeout=300)
    assert leaving.process.returncode == 0 and stopped < 15, (leaving.process.returncode, stopped)
    assert job["status"] == "succeeded", job
    assert f"job {job_id} (adapt of stopped) interrupted by shutdown; queued" in (
        leaving.log.read_text()
    )
    other = next(w for w in pool_of_two["workers"] if w is not leaving)
    assert f"job {job_id} (adapt of stopped) started: run 2" in other.log.read_text()


def test_cancelling_on_a_scoring_replica_stops_the_job_on_its_worker(
    pool_of_two: dict, dataset: Path
) -> None:
    with pool_of_two["scorers"][0].client() as client:
        answer = client.post("/v1/models/cancelled/adapt", files=adaptation_images(dataset))
        job_id = answer.json()["job_id"]
        until_running(client, job_id)
        asked = time.monotonic()
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
        job = wait_job(client, job_id, timeout=60)
        took = time.monotonic() - asked
    assert job["status"] == "cancelled" and "no version" in job["error"], job
    assert took < 10, took
    assert versions(pool_of_two, "cancelled") == ["v1"]


def test_two_workers_never_run_two_jobs_of_one_model_at_once(
    pool_of_two: dict, dataset: Path
) -> None:
    """A second job of one model queued behind the job slot's back (as a race between replicas
    could, were the slot to fail) while two workers wait: the queue's lock per model runs the
    two one after the other."""
    from patchshift.service.job_store import JobStore
    from patchshift.service.postgres_queue import PostgresQueue

    store = pool_of_two["store"]
    with pool_of_two["scorers"][0].client() as client:
        answer = client.post("/v1/models/raced/adapt", files=adaptation_images(dataset))
        assert answer.status_code == 202, answer.text
        jobs = JobStore.open(pool_of_two["url"])
        first = jobs.get(answer.json()["job_id"])
        twin_id = "twin" + first.id[4:]
        uploads = store / ".uploads"
        shutil.copytree(uploads / first.id, uploads / ".staging")
        (uploads / ".staging").rename(uploads / twin_id)
        queue = PostgresQueue(jobs.engine, None, None, runs_jobs=False, lease=LEASE)
        jobs.create("adapt", "raced", first.params, job_id=twin_id, enqueue=queue.enqueue)
        ends = [wait_job(client, job_id, timeout=300) for job_id in (first.id, twin_id)]
        jobs.close()
    assert [e["status"] for e in ends] == ["succeeded"] * 2, ends
    a, b = sorted(ends, key=lambda e: e["started"])
    assert b["started"] >= a["finished"], (a, b)  # never both running


def test_replicas_keep_serving_through_activations_adaptations_and_a_killed_scorer(
    store: Path, postgres_url: str, dataset: Path, capsys
) -> None:
    """3 threads score through every replica while 10 activations, an adaptation and 2
    rollbacks happen: no request fails; then one scorer is killed and the others go on."""
    image = [
        (
            "files",
            ("x.png", png_bytes(__import__("numpy").full((64, 64, 3), 120, "uint8")), "image/png"),
        )
    ]
    with pool(store, postgres_url, scorers=3, workers=2) as started:
        scorers = started["scorers"]
        failures, scored, stop = [], [0], threading.Event()

        def score(server: Server) -> None:
            with server.client(timeout=30) as client:
                while not stop.is_set():
                    answer = client.post("/v1/models/widget/score", files=image)
                    if answer.status_code != 200:
                        failures.append((server.port, answer.status_code, answer.text[:200]))
                    scored[0] += 1

        threads = [threading.Thread(target=score, args=(s,)) for s in scorers]
        for thread in threads:
            thread.start()
        try:
            with scorers[0].client() as admin:
                assert (
                    admin.put("/v1/models/widget/threshold", json={"threshold": 4.0}).status_code
                    == 200
                )
                for i in range(10):
                    version = ("v1", "v2")[i % 2]
                    path = f"/v1/models/widget/versions/{version}/activate"
                    assert scorers[i % 3].client().post(path).status_code == 200
                for _ in range(1):
                    answer = admin.post(
                        "/v1/models/widget/adapt",
                        files=adaptation_images(dataset, 24),
                        data={"activate": "true"},
                    )
                    assert answer.status_code == 202, answer.text
                    assert wait_job(admin, answer.json()["job_id"])["status"] == "succeeded"
                for version in ("v1", "v2"):  # rollbacks
                    path = f"/v1/models/widget/versions/{version}/activate"
                    assert admin.post(path).status_code == 200
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert failures == [] and scored[0] > 0, failures[:5]
        scorers[0].kill9()
        for server in scorers[1:]:
            with server.client() as client:
                assert client.post("/v1/models/widget/score", files=image).status_code == 200
        with capsys.disabled():
            print(f"\n{scored[0]} requests through 3 scorers, 0 failed; one killed, 2 serve on")


def test_a_restart_of_the_database_loses_no_job(
    store: Path, restartable_postgres, dataset: Path
) -> None:
    """PostgreSQL restarted (its own server, stopped and started) while one job runs and another
    waits: replicas and workers reconnect, the waiting job runs, the running one ends (finished,
    or failed naming why), nothing stays 'running'."""
    url, restart = restartable_postgres
    shutil.copytree(store / "widget", store / "gadget")
    with pool(store, url, scorers=1, workers=1) as started:
        with started["scorers"][0].client() as client:
            first = client.post("/v1/models/widget/adapt", files=adaptation_images(dataset, 96))
            second = client.post("/v1/models/gadget/adapt", files=adaptation_images(dataset, 24))
            ids = [first.json()["job_id"], second.json()["job_id"]]
            until_running(client, ids[0])
            restart()
            ends = []
            deadline = time.monotonic() + 300
            for job_id in ids:  # the replica answers 5xx while its database is away
                while True:
                    try:
                        ends.append(wait_job(client, job_id, timeout=300))
                        break
                    except (httpx.HTTPError, ValueError, KeyError):
                        assert time.monotonic() < deadline
                        time.sleep(0.5)
            assert client.get("/readyz").status_code == 200
        assert ends[0]["status"] == "succeeded" or ends[0]["error"], ends
        assert ends[1]["status"] == "succeeded", ends  # the queued job was not lost


def test_a_cancel_that_reaches_a_silent_worker_s_entry_after_the_sweep_read_it_still_wins(
    postgres_url: str, tmp_path: Path
) -> None:
    """The sweep read the dead worker's entry (no cancel asked), then the cancel landed: the
    requeue's transaction sees it on the locked entry and the job ends cancelled, not queued
    again."""
    from types import SimpleNamespace

    from sqlalchemy import text

    from patchshift.service.job_store import CANCELLED, RUNNING, JobStore
    from patchshift.service.postgres_queue import PostgresQueue
    from patchshift.service.prometheus import ServiceMetrics
    from patchshift.service.store import ModelStore

    jobs = JobStore.open(postgres_url)
    runner = SimpleNamespace(jobs=jobs, metrics=ServiceMetrics())
    queue = PostgresQueue(jobs.engine, runner, ModelStore(tmp_path), runs_jobs=False, lease=LEASE)
    job = jobs.create("adapt", "widget", {}, enqueue=queue.enqueue)
    assert jobs.start(job.id)
    with jobs.engine.begin() as connection:  # its worker had claimed the entry, then died
        connection.execute(
            text("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = :id"),
            {"id": job.queue_id},
        )
    running = jobs.get(job.id)
    assert running.status == RUNNING
    queue.abort(running)  # the cancel, after the sweep's read
    queue._recover(job.id, job.queue_id, cancel_asked=False)  # what that read decided
    ended = jobs.get(job.id)
    jobs.close()
    assert ended.status == CANCELLED, ended
    assert "cancelled by request" in ended.error and ended.queue_id == job.queue_id


def test_a_cancel_racing_the_sweep_always_ends_the_job_cancelled(
    postgres_url: str, tmp_path: Path
) -> None:
    """A person cancels a dead worker's job while the sweep decides for it, again and again: the
    job always ends cancelled (never queued again), whoever comes first."""
    from types import SimpleNamespace

    from sqlalchemy import text

    from patchshift.service.job_store import CANCELLED, JobStore
    from patchshift.service.prometheus import ServiceMetrics
    from patchshift.service.store import ModelStore
    from patchshift.service.worker import Worker

    jobs = JobStore.open(postgres_url)
    worker = Worker(
        jobs,
        tmp_path / "uploads",
        ServiceMetrics(),
        {},
        SimpleNamespace(store=ModelStore(tmp_path / "models")),
        runs_jobs=False,
        lease=LEASE,
    )
    ends = []
    for i in range(30):
        job = jobs.create("adapt", f"m{i}", {}, enqueue=worker.queue.enqueue)
        assert jobs.start(job.id)
        with jobs.engine.begin() as connection:
            connection.execute(
                text("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = :id"),
                {"id": job.queue_id},
            )
        start = threading.Barrier(2)

        def sweep(job=job, start=start) -> None:
            start.wait()
            worker.queue._recover(job.id, job.queue_id, cancel_asked=False)

        def cancel(job=job, start=start) -> None:
            start.wait()
            worker.cancel(job.id)

        racers = [threading.Thread(target=sweep), threading.Thread(target=cancel)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        ends.append(jobs.get(job.id).status)
    jobs.close()
    assert ends == [CANCELLED] * 30, ends
