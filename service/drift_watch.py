"""Feeds scored images to each model's drift monitor and runs the opt-in self-adaptation policy.

Policy (PATCHSHIFT_AUTO_ADAPT=1): images scored while the statistic is above its threshold are kept
(the buffer empties whenever it falls back); once drift has lasted auto_adapt_patience images and
auto_adapt_images are kept, they are handed to an adaptation job (never while another job of that
model is unfinished, and at most once per active version: again once a refused submission's slot
frees); the new version goes live only if the activation gate finds it better (activate=if-better).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from patchshift.core.adapt import get_adapter
from patchshift.core.engine.detector import Detector
from patchshift.service.http_errors import Conflict
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.requests import ACTIVATE_IF_BETTER
from patchshift.service.serving import ModelRegistry
from patchshift.service.settings import Settings
from patchshift.service.worker import Worker

log = logging.getLogger("patchshift.service")


class DriftWatch:
    def __init__(
        self, registry: ModelRegistry, worker: Worker, settings: Settings, metrics: ServiceMetrics
    ) -> None:
        self.registry = registry
        self.worker = worker
        self.settings = settings
        self.metrics = metrics
        self._attempted: set[tuple[str, str]] = set()
        # observe runs in request threads (never on the event loop: starting a job writes files);
        # one lock owns the policy state (streaks, kept images, attempts)
        self._lock = threading.Lock()

    def observe(
        self,
        name: str,
        model: Detector,
        descriptors: np.ndarray,
        anomalous: np.ndarray,
        files: list[tuple[str, bytes]],
    ) -> tuple[float | None, bool] | None:
        """The drift verdict (statistic, drifting) after these images; None when `model` is no
        longer active."""
        # the registry's activation lock keeps `model` active while its images enter the monitor (an
        # activation resets the monitor: the old version's images must not land in the new one's
        # window)
        with self.registry.holding_active(name, model) as slot, self._lock:
            if slot is None:
                return None  # scored by a version that is no longer active
            slot.monitor.add(descriptors, anomalous)
            statistic, drifting = slot.monitor.verdict()
            if statistic is not None:
                self.metrics.drift.labels(name).set(statistic)
            self.metrics.drifting.labels(name).set(int(drifting))
            self.metrics.anomalous_share.labels(name).set(slot.monitor.anomalous_share() or 0.0)
            pending = self._consider_adapting(name, model, slot, statistic, drifting, files)
        if (
            pending is not None
        ):  # outside the locks: submitting writes up to 64 files, and takes the worker's lock
            self._submit(name, model, *pending)
        return statistic, drifting

    def _consider_adapting(
        self,
        name: str,
        model: Detector,
        slot,
        statistic: float | None,
        drifting: bool,
        files: list[tuple[str, bytes]],
    ) -> tuple[dict, list] | None:
        """The adaptation job to submit now, as (params, images), if the policy calls for one."""
        if not self.settings.auto_adapt or not get_adapter(self.settings.auto_adapt_method).accepts(
            model
        ):
            return None  # drift is reported; a version the method cannot adapt waits for a person
        if not drifting:  # keep only images of the new condition
            slot.recent_images.clear()
            slot.drifting_streak = 0
            return None
        slot.recent_images.extend(files)
        slot.drifting_streak += len(files)
        key = (name, model.version or "")
        if (
            slot.drifting_streak < self.settings.auto_adapt_patience
            or key in self._attempted
            or self.worker.busy(name)
        ):
            return None
        if len(slot.recent_images) < (slot.recent_images.maxlen or 0):
            return None
        self._attempted.add(key)
        log.warning(
            "model %s: drift %.1f above %.1f for %d images; starting an adaptation job",
            name,
            statistic,
            slot.monitor.threshold,
            slot.drifting_streak,
        )
        params = {
            "source_version": model.version,
            "activate": ACTIVATE_IF_BETTER,
            "trigger": "drift",
            "config": {"method": self.settings.auto_adapt_method},
            "drift_at_trigger": statistic,
        }
        return params, list(slot.recent_images)

    def _submit(self, name: str, model: Detector, params: dict, images: list) -> None:
        try:
            job = self.worker.submit("adapt", name, params, images)
        except (
            Exception
        ) as exc:  # a job of this model was queued meanwhile (409), or the disk refused the images
            if not isinstance(exc, Conflict):
                log.error(
                    "model %s: the adaptation job could not be started (%s); it is tried again on "
                    "the next drifting images",
                    name,
                    exc,
                )
            with self._lock:  # try again once the slot frees
                self._attempted.discard((name, model.version or ""))
            return
        log.warning(
            "model %s: adaptation job %s started from %d drifting images", name, job.id, len(images)
        )
