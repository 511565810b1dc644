"""The worker pool's queue on PostgreSQL, through procrastinate (docs/architecture.md says why).

A job's record (service/job_store.py) and its queue entry are written in one transaction, by any
replica. Whoever runs jobs (`patchshift worker` processes, and `patchshift serve` unless
PATCHSHIFT_RUN_JOBS=0) claims entries one at a time; procrastinate's lock per model keeps two
workers off one model, on top of the one-unfinished-job rule. Each worker sends a heartbeat every
quarter lease; every worker also sweeps for jobs whose worker went silent for a whole lease: such a
job runs again once (never when its version was already written) or fails with the reason.
Cancellation of a running job is procrastinate's abort, which reaches the running worker by
LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import procrastinate
from procrastinate import worker as procrastinate_worker
from procrastinate.jobs import Status
from sqlalchemy import Connection, Engine

from patchshift.service.database import libpq_url
from patchshift.service.job_runner import JobRunner
from patchshift.service.job_store import CANCELLED, FAILED, QUEUED, UNFINISHED, Job
from patchshift.service.store import ModelStore

log = logging.getLogger("patchshift.service")

TASK = "patchshift.run_job"
QUEUE = "patchshift"
MAX_STALLS = 1  # a job whose worker died runs once more; a second death fails it
# uploads stored by a submission that died before recording its job (the record follows the
# uploads within milliseconds when all goes well)
ORPHAN_UPLOADS_SECONDS = 3600
RECONNECT_SECONDS = 1.0
STOP_SECONDS = 30.0


class Interrupted(Exception):
    """The process stopped during the job, which went back to the queue."""


class CancelAsked(Exception):
    """A cancel reached a silent worker's queue entry: its job is not run again."""


class PostgresQueue:
    shared = True  # every replica queues, every worker runs

    def __init__(
        self,
        engine: Engine,
        runner: JobRunner,
        store: ModelStore,
        runs_jobs: bool,
        lease: float,
    ) -> None:
        self.engine = engine
        self.runner = runner
        self.store = store
        self.runs_jobs = runs_jobs
        self.lease = lease
        self.conninfo = libpq_url(engine)
        # queues and cancels on the service's own connections: never opened, no pool of its own
        self._writer = self._app()
        self._stopping = threading.Event()
        self._worker: procrastinate_worker.Worker | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _app(self) -> procrastinate.App:
        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=self.conninfo, kwargs={"connect_timeout": 5}
            )
        )
        app.task(
            name=TASK,
            queue=QUEUE,
            pass_context=True,
            retry=procrastinate.RetryStrategy(max_attempts=1000, retry_exceptions={Interrupted}),
        )(self._run_job)
        return app

    # queueing (any replica)
    def enqueue(self, connection: Connection, job: Job) -> int:
        """The job's queue entry, in the transaction that records the job."""
        return (
            self._writer.tasks[TASK]
            .configure(lock=f"model:{job.model}", connection=_driver(connection))
            .defer(job_id=job.id)
        )

    def queued(self, job: Job) -> None:
        """Nothing to do: the entry's commit notifies the workers."""

    def withdraw(self, job: Job) -> None:
        if job.queue_id is not None:
            with self._connection() as connection:
                self._writer.job_manager.cancel_job_by_id(job.queue_id, connection=connection)

    def can_abort(self, job: Job) -> bool:
        return job.queue_id is not None

    def abort(self, job: Job) -> None:
        """Ask the worker running `job` to stop; it hears it by notification and stops at its next
        step."""
        with self._connection() as connection:
            self._writer.job_manager.cancel_job_by_id(
                job.queue_id, abort=True, connection=connection
            )

    @contextmanager
    def _connection(self) -> Iterator:
        with self.engine.begin() as connection:
            yield _driver(connection)

    # running (a worker)
    def start(self) -> None:
        """Run a worker on a background thread (inside `patchshift serve`)."""
        if not self.runs_jobs:
            return
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.run()), name="patchshift-worker", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming jobs; a running job goes back to the queue for another worker (waited
        for STOP_SECONDS at least: a job notices at its next step)."""
        self._stopping.set()  # the worker's own loop hears it (_stop_when_asked)
        if self._thread is not None:
            # a running job is waited for longer: it goes back to the queue at its next step
            self._thread.join(STOP_SECONDS if self.runner.current else timeout)

    def stop_soon(self) -> None:
        """Stop without waiting (a signal handler)."""
        self._stopping.set()

    def alive(self) -> bool:
        if not self.runs_jobs:
            return True
        return self._thread is not None and self._thread.is_alive()

    def ready(self) -> bool:
        """Whether the worker has registered with the queue and claims jobs."""
        return self._ready.is_set()

    async def run(self) -> None:
        """Claim and run jobs until stop(), reconnecting after the database went away; sweep for
        jobs of silent workers meanwhile."""
        while not self._stopping.is_set():
            try:
                await self._run_until_stopped()
            except Exception as exc:  # a restart of PostgreSQL, a network cut
                log.warning("the job worker lost the database (%s); reconnecting", exc)
                await asyncio.sleep(RECONNECT_SECONDS)

    async def _run_until_stopped(self) -> None:
        app = self._app()
        async with app.open_async():
            self._worker = procrastinate_worker.Worker(
                app,
                queues=[QUEUE],
                name=f"patchshift@{socket.gethostname()}:{os.getpid()}",
                concurrency=1,
                install_signal_handlers=False,
                update_heartbeat_interval=self.lease / 4,
                stalled_worker_timeout=self.lease,
                abort_job_polling_interval=min(self.lease / 4, 5.0),
                fetch_job_polling_interval=min(self.lease / 4, 5.0),
            )
            if self._stopping.is_set():
                return
            helpers = [
                asyncio.create_task(self._sweep_forever(app, self._worker)),
                asyncio.create_task(self._stop_when_asked(self._worker)),
            ]
            try:
                await self._worker.run()
            finally:
                self._ready.clear()
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)

    async def _stop_when_asked(self, worker: procrastinate_worker.Worker) -> None:
        """Relay stop() to the worker from its own loop (a stop asked before the worker started
        running would otherwise be reset by it)."""
        while True:
            if self._stopping.is_set():
                worker.stop()  # again until it ends: run() clears a stop asked before it
            await asyncio.sleep(0.1)

    def _run_job(self, context: procrastinate.JobContext, job_id: str) -> None:
        # a cancel asked by a person wins over a shutdown: the job ends cancelled, not requeued
        finished = self.runner.run(
            job_id,
            cancelled=lambda: context.should_abort() or self._stopping.is_set(),
            stopping=lambda: self._stopping.is_set() and not context.should_abort(),
            queue_id=context.job.id,
        )
        if not finished:
            if self._worker is not None:
                self._worker.stop()  # before it claims the job again
            raise Interrupted(f"job {job_id} was interrupted by a shutdown; queued again")

    # the sweep
    async def _sweep_forever(
        self, app: procrastinate.App, worker: procrastinate_worker.Worker
    ) -> None:
        while worker.worker_id is None:  # registered: from now on it claims jobs
            await asyncio.sleep(0.05)
        self._ready.set()
        while True:
            try:
                await self.sweep(app)
            except Exception as exc:  # the database went away: the next sweep tries again
                log.warning("sweeping for jobs of stopped workers: %s", exc)
            await asyncio.sleep(self.lease / 4)

    async def sweep(self, app: procrastinate.App) -> None:
        """Queue entries whose worker missed its heartbeats for a lease are ended; their job gets
        a new entry (run again, once) or fails. Then records whose entry ended without them."""
        stalled = await app.job_manager.get_stalled_jobs(
            task_name=TASK, seconds_since_heartbeat=self.lease
        )
        for entry in stalled:
            # the stalled-jobs query leaves out whether a cancel was asked: read the entry again
            again = list(await app.job_manager.list_jobs_async(id=entry.id))
            cancel_asked = bool(again and again[0].abort_requested)
            await asyncio.to_thread(
                self._recover, entry.task_kwargs.get("job_id", ""), entry.id, cancel_asked
            )
            try:
                await app.job_manager.finish_job(entry, Status.FAILED, delete_job=False)
            except Exception as exc:  # another worker's sweep ended it first
                log.debug("queue entry %s: %s", entry.id, exc)
        await self._reconcile(app)
        await asyncio.to_thread(self._tidy)

    def _recover(self, job_id: str, entry_id: int, cancel_asked: bool = False) -> None:
        """Decide for the job of a silent worker's queue entry. Every change is conditional on
        the record still pointing at that entry, so a sweep acting on an old reading, or a second
        sweep, changes nothing. A cancel asked before the worker went silent ends the job
        cancelled: it is never run again."""
        job = self._still_unfinished(job_id, entry_id)
        if job is None:
            return
        silent = f"its worker stopped answering (no heartbeat for {self.lease:g} s)"
        if cancel_asked:
            self._end(
                job,
                entry_id,
                CANCELLED,
                f"cancelled by request; {silent} before it stopped, and it is not run again"
                + (
                    f"; version {job.result_version} was written and not activated by the job"
                    if self._written(job)
                    else "; no version was written"
                ),
            )
        elif self._written(job):
            self._fail(
                job,
                entry_id,
                f"{silent} after writing version {job.result_version}; the job is not run "
                "again (it would write a second version): activate that version by hand if "
                "you want it",
            )
        elif job.stalls >= MAX_STALLS:
            self._fail(job, entry_id, f"{silent}, for the second time; no version was written")
        else:
            try:
                requeued = self.runner.jobs.requeue(
                    job,
                    f"{silent}; queued to run again",
                    stalled=True,
                    clear_version=True,
                    enqueue=self._enqueue_unless_cancelled(entry_id),
                )
            except CancelAsked:
                self._recover(job_id, entry_id, cancel_asked=True)
                return
            if requeued:
                log.warning(
                    "job %s (%s of %s): %s; running it again", job.id, job.kind, job.model, silent
                )

    def _enqueue_unless_cancelled(self, entry_id: int):
        """The requeue's new entry, written only if no cancel reached the old one: its row is
        locked in the requeue's transaction, so a cancel lands either before (seen here: the
        transaction rolls back) or after the commit (then cancel() finds the job queued again)."""

        def enqueue(connection: Connection, job: Job) -> int:
            asked = connection.exec_driver_sql(
                "SELECT abort_requested FROM procrastinate_jobs WHERE id = %(id)s FOR UPDATE",
                {"id": entry_id},
            ).scalar()
            if asked:
                raise CancelAsked(job.id)
            return self.enqueue(connection, job)

        return enqueue

    async def _reconcile(self, app: procrastinate.App) -> None:
        """A record still unfinished whose queue entry has ended (its run could not record its
        end, the database being away too long; an entry failed by a retry after an abort): a queued
        one gets a new entry, a running one fails with the reason. Nothing stays unfinished."""
        for job in await asyncio.to_thread(self.runner.jobs.unfinished):
            if job.queue_id is None:
                continue
            entries = list(await app.job_manager.list_jobs_async(id=job.queue_id))
            if entries and entries[0].status in (Status.TODO.value, Status.DOING.value):
                continue
            await asyncio.to_thread(self._end_orphan, job.id, job.queue_id)

    def _end_orphan(self, job_id: str, entry_id: int) -> None:
        job = self._still_unfinished(job_id, entry_id)  # it may have ended since the list was read
        if job is None:
            return
        self._fail(
            job,
            entry_id,
            "the worker running it lost the database and could not record the job's end"
            + (
                f"; version {job.result_version} was written and not activated by the job"
                if self._written(job)
                else "; no version was written"
            ),
        )

    def _still_unfinished(self, job_id: str, entry_id: int) -> Job | None:
        """The running job of queue entry `entry_id`, read again; a queued one (its worker died
        between claiming the entry and starting it) gets a new entry instead. None: nothing to
        decide (ended, or already given another entry)."""
        jobs = self.runner.jobs
        job = jobs.get(job_id)
        if job is None or job.status not in UNFINISHED or job.queue_id != entry_id:
            return None
        if job.status == QUEUED:
            jobs.requeue(job, job.stage or "queued", enqueue=self.enqueue)
            return None
        return job

    def _written(self, job: Job) -> bool:
        """Whether the version the job's run claimed was written whole."""
        return bool(job.result_version) and job.result_version in self.store.versions(job.model)

    def _fail(self, job: Job, entry_id: int, error: str) -> None:
        self._end(job, entry_id, FAILED, error)

    def _end(self, job: Job, entry_id: int, status: str, error: str) -> None:
        if self.runner.jobs.finish(
            job.id, status, error=error, attempt=job.attempts, queue_id=entry_id
        ):
            say = log.error if status == FAILED else log.warning
            say("job %s (%s of %s) %s: %s", job.id, job.kind, job.model, status, error)
            self.runner.metrics.jobs.labels(job.kind, status).inc()

    def _tidy(self) -> None:
        """Remove the uploads of ended jobs (a worker that died left them); keep the queue depth
        gauge current."""
        uploads = self.runner.uploads
        if uploads.is_dir():
            for folder in uploads.iterdir():
                if folder.name.startswith("."):
                    continue
                job = self.runner.jobs.get(folder.name)
                if (job is not None and job.status not in UNFINISHED) or (
                    job is None and time.time() - folder.stat().st_mtime > ORPHAN_UPLOADS_SECONDS
                ):  # ended, or a submission that died before its record
                    shutil.rmtree(folder, ignore_errors=True)
        self.runner.update_depth()


def _driver(connection: Connection):
    """The psycopg connection under a SQLAlchemy one (procrastinate writes on it)."""
    return connection.connection.driver_connection
