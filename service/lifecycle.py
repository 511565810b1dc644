"""The one owner of every model's version lifecycle.

Three rules live here and nowhere else:
- the job slot: one unfinished job, or one change made outside a job (a threshold, a deletion), per
  model; a second gets 409 naming the first;
- activation: which version is active (the store's ACTIVE pointer) and which one serves (the
  serving state) move together, under one lock, and whoever follows the active version (the drift
  watch, the metrics) hears of it in the same step;
- a job never undoes an activation or a rollback made while it ran: it activates its version only
  if the version it started from is still the active one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import text

from patchshift.core.artifact import save_model
from patchshift.core.common.errors import ArtifactError
from patchshift.core.engine.detector import Detector, with_threshold
from patchshift.core.engine.patchcore import Provenance
from patchshift.service.activation_log import ANY, BY_REQUEST, THRESHOLD, ActivationLog
from patchshift.service.http_errors import Conflict, NotFound
from patchshift.service.job_store import JobStore
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.serving import Serving
from patchshift.service.store import ModelStore, check_name

log = logging.getLogger("patchshift.service")

ActivationListener = Callable[[str, Detector], None]


class Lifecycle:
    def __init__(
        self,
        store: ModelStore,
        jobs: JobStore,
        serving: Serving,
        metrics: ServiceMetrics,
        log: ActivationLog,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.log = log
        self.serving = serving
        self.metrics = metrics
        # called with (model name, the version now active) inside the activation
        self.listeners: list[ActivationListener] = []
        # called with a model's name once it is deleted (here or on another replica)
        self.forgetters: list[Callable[[str], None]] = [metrics.forget_model]
        self._slots = threading.Lock()  # the job slot of every model: check and claim as one
        self._activation = threading.RLock()  # the ACTIVE pointer and the served version

    # the job slot
    @contextmanager
    def job_slot(self, model: str, what: str) -> Iterator[None]:
        """Hold `model`'s job slot: refused (409) while it has an unfinished job; no job can be
        queued for it until the block ends. Queuing a job is done inside this block too."""
        with self._slots, self._shared_slot(model):
            busy = self.jobs.unfinished(model)
            if busy:
                raise Conflict(
                    f"model {model!r} has an unfinished job ({busy[0].kind}, {busy[0].status}); "
                    f"wait for it or cancel it, then {what}",
                    job_id=busy[0].id,
                )
            yield

    @contextmanager
    def _shared_slot(self, model: str) -> Iterator[None]:
        """The job slot across replicas: on PostgreSQL a session advisory lock per model, taken
        without waiting (held elsewhere: 409) and held while the slot is; SQLite serves one
        process, whose lock suffices."""
        engine = self.jobs.engine
        if engine.dialect.name != "postgresql":
            yield
            return
        key = {"key": f"patchshift job slot {model}"}
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            taken = connection.execute(
                text("SELECT pg_try_advisory_lock(hashtext(:key))"), key
            ).scalar()
            if not taken:
                raise Conflict(
                    f"a job or a change of model {model!r} is being started on another replica; "
                    "try again in a moment"
                )
            try:
                yield
            finally:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), key)
                except Exception as exc:  # the session is gone: its lock went with it
                    log.warning("model %s: releasing the job slot: %s", model, exc)

    def busy(self, model: str) -> bool:
        return bool(self.jobs.unfinished(model))

    # activation
    def load_all(self) -> None:
        """At start: serve the active version of every model in the store, as the replicas share
        it (the database), else as the store's pointer says (then shared from now on)."""
        shared = self.log.current()
        for name in self.store.models():
            version = (
                shared[name] if shared.get(name) in self.store.versions(name) else None
            ) or self.store.active(name)
            if version is None:
                continue
            try:
                model = self.serving.load(name, version)
            except ArtifactError as exc:
                log.error("model %s version %s cannot be loaded: %s", name, version, exc)
                self.serving.failed(name, str(exc))
                continue
            with self._activation:
                if name not in shared:
                    self.log.publish(name, version)
                if self.log.current().get(name) == version:  # else the follower catches up
                    self.store.set_active(name, version)  # the store's pointer follows
                    self._install(name, version, model)

    def follow(self, name: str, version: str | None) -> None:
        """Serve what another replica made active (`version`; None: the model was deleted), and
        bring the store's pointer in line with it. The replica that activated wrote the log."""
        if version is None:
            with self._activation:
                if name not in self.log.current() and name in self.serving.names():
                    self.serving.forget(name)
                    for forget in self.forgetters:
                        forget(name)
            return
        served = self.serving.active(name)
        if served is not None and served.version == version:
            return
        model = self.serving.load(name, version)  # outside the lock: loading takes seconds
        with self._activation:
            served = self.serving.active(name)
            if self.log.current().get(name) != version or (
                served is not None and served.version == version
            ):
                return  # moved on meanwhile, or installed by this replica itself
            if self.store.active(name) != version:
                self.store.set_active(name, version)
            self._install(name, version, model)
        if (age := self.log.age(name)) is not None:
            self.metrics.activation_lag.observe(max(age, 0.0))

    def activate(
        self, name: str, version: str, model: Detector | None = None, cause: str = BY_REQUEST
    ) -> Detector:
        """Make `version` the one that scores (a rollback or forward); load it unless given."""
        version = check_name(version, "version")
        model = model or self.serving.reviewed(name, version) or self.serving.load(name, version)
        with self._activation:
            self._activate(name, version, model, cause)
        return model

    def activate_unless_moved(
        self, name: str, expected: str | None, version: str, model: Detector, cause: str
    ) -> str | None:
        """Activate a job's new version if `expected` (the version active when the job was asked
        for) still is, on every replica; else why not."""
        with self._activation:
            done, current = self._activate(name, version, model, cause, expected)
        if done:
            return None
        return (
            f"the active version changed from {expected} to {current} while this job ran; "
            f"{version} is kept for review"
        )

    def _activate(
        self, name: str, version: str, model: Detector, cause: str, expected: object = ANY
    ) -> tuple[bool, str | None]:
        """The shared active version moves first (compare-and-set in the database, with its log
        entry), then the store's pointer and this replica's served version; (done, the version
        active before or instead)."""
        self.store.manifest(name, version)  # NotFound if it was deleted meanwhile
        done, current = self.log.claim(name, version, cause, expected)
        if done:
            self.store.set_active(name, version)
            self.metrics.activations.labels(cause).inc()
            self._install(name, version, model)
        return done, current

    def _install(self, name: str, version: str, model: Detector) -> Detector:
        self.serving.install(name, model)
        for listener in self.listeners:
            listener(name, model)
        self.metrics.set_active(name, version)
        log.info("model %s: version %s active", name, version)
        return model

    @contextmanager
    def holding_active(self, name: str, model: Detector) -> Iterator[bool]:
        """Whether `model` is `name`'s active version; while the block runs it stays so (an
        activation waits until the block ends)."""
        with self._activation:
            yield self.serving.active(name) is model

    # changes outside a job
    def set_threshold(self, name: str, threshold: float) -> str:
        """A new version identical to the active one but for its threshold, activated at once.

        It holds the model's job slot while it is written, so an adaptation cannot start meanwhile
        and later replace the operator's version; the version is written completely before ACTIVE
        moves, so a refused value leaves the store and the active version as they were."""
        with self.job_slot(name, "set the threshold"):
            source = self.serving.get(name)
            model = with_threshold(
                source,
                threshold,
                Provenance(
                    method="threshold-override",
                    parent=source.version,
                    threshold_source="given",
                    calibration_scores=list(source.provenance.calibration_scores),
                    n_train_images=source.provenance.n_train_images,
                    details={"previous_threshold": source.threshold},
                ),
            )
            version = self.store.allocate_version(name)
            save_model(model, self.store.version_dir(name, version))
            if self.activate_unless_moved(name, source.version, version, model, THRESHOLD):
                current = self.log.current().get(name)
                raise Conflict(
                    f"version {current} of model {name!r} was activated while the threshold was "
                    f"being set; {version} (threshold {threshold}) is kept but not active: set the "
                    "threshold again if it is still wanted"
                )
            return version

    def save_derived_version(self, name: str, parent: str, model: Detector, what: str) -> str:
        """Write `model`, made from `parent` outside any job, as the model's next version (not
        activated). Under the job slot, as a job writes its version: a deletion of the model or of
        the parent, or another writer's version, cannot interleave; both must still exist."""
        with self.job_slot(name, what):
            if not self.store.exists(name) or not self.store.version_dir(name, parent).is_dir():
                raise NotFound(f"version {parent} of model {name!r} was deleted meanwhile")
            version = self.store.allocate_version(name)
            save_model(model, self.store.version_dir(name, version))
            return version

    def delete_version(self, name: str, version: str) -> None:
        """Delete a stored version, never the active one; refused (409) while the model has an
        unfinished job (it may have started from this version)."""
        version = check_name(version, "version")
        with self.job_slot(name, "delete a version"), self._activation:
            if self.log.current().get(name) == version:  # active on every replica, file or not
                raise Conflict(
                    f"version {version} is the active version of {name!r}; activate another "
                    "version first"
                )
            self.store.delete_version(name, version)
        self.serving.evict(name, version)

    def delete_model(self, name: str) -> None:
        """Delete a model and every version; refused (409) while it has an unfinished job."""
        with self.job_slot(name, "delete it"), self._activation:
            self.log.forget(name)  # first: a store left behind is republished at the next start
            self.serving.forget(name)
            self.store.delete_model(name)
            self.log.notify(name)  # the other replicas forget it once its files are gone
            for forget in self.forgetters:
                forget(name)
