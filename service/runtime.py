"""What a serving replica and a worker process share, built once from the settings: the model
store, the database and its job records, the versions being served and their lifecycle, the job
queue and the follower of the shared active versions. Nothing here knows HTTP."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from patchshift.core.common.device import resolve_device
from patchshift.service.activation_log import ActivationLog
from patchshift.service.database import connect, migrate
from patchshift.service.follower import Follower
from patchshift.service.job_store import JobStore, move_legacy_database
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.serving import Serving
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore
from patchshift.service.tasks import make_tasks
from patchshift.service.worker import Worker

log = logging.getLogger("patchshift.service")
# a write untouched this long on a shared store is a crashed process's leftover
SHARED_LEFTOVER_SECONDS = 3600.0


@dataclass
class Runtime:
    settings: Settings
    metrics: ServiceMetrics
    device: torch.device
    store: ModelStore
    jobs: JobStore
    serving: Serving
    lifecycle: Lifecycle
    worker: Worker
    follower: Follower

    @classmethod
    def build(cls, settings: Settings, metrics: ServiceMetrics) -> Runtime:
        device = resolve_device(settings.device)
        metrics.device.labels(device.type).set(1)
        store = ModelStore(settings.models_dir)
        if (
            settings.database is None
            and settings.database_url is None
            and (moved := move_legacy_database(settings.models_dir, settings.database_path))
        ):
            log.warning(
                "moved the job database from %s to %s (a model name could collide with it)",
                moved,
                settings.database_path,
            )
        database = connect(settings.database_address)
        if settings.run_jobs:
            # a store shared by several processes (PostgreSQL) may hold another's write in progress
            shared = database.dialect.name == "postgresql"
            for leftover in store.clean_leftovers(
                older_than=SHARED_LEFTOVER_SECONDS if shared else 0
            ):
                log.warning("removed an unfinished write left by an earlier crash: %s", leftover)
        migrate(database)
        jobs = JobStore(database)
        serving = Serving(store, metrics, device)
        lifecycle = Lifecycle(store, jobs, serving, metrics, ActivationLog(database))
        worker = Worker(
            jobs,
            settings.uploads_dir,
            metrics,
            make_tasks(store, serving, lifecycle, device, settings),
            lifecycle,
            runs_jobs=settings.run_jobs,
            lease=settings.worker_lease,
        )
        follower = Follower(lifecycle, database, settings.follow_interval)
        return cls(settings, metrics, device, store, jobs, serving, lifecycle, worker, follower)

    def start(self, run_jobs_here: bool = True) -> None:
        """Serve the active versions and follow them; run jobs on a background thread unless the
        caller runs the queue itself (`patchshift worker`)."""
        self.lifecycle.load_all()
        self.follower.start()
        if run_jobs_here:
            self.worker.start()

    def stop(self) -> None:
        self.follower.stop()
        self.worker.stop()
        self.jobs.close()
