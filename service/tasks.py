"""What fit and adaptation jobs do: call core, write a new version into the store, maybe activate
it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from patchshift.core.adapt import adapt, get_adapter
from patchshift.core.artifact import save_model
from patchshift.core.common.errors import ArtifactError, ConfigError
from patchshift.core.common.images import load_target
from patchshift.core.common.progress import check_cancel
from patchshift.core.engine.detector import Detector
from patchshift.core.engine.drift import drift_statistic
from patchshift.core.engine.patchcore import PatchCoreModel, fit
from patchshift.service.activation_log import ADAPTATION, FIT
from patchshift.service.job_runner import JobInputs, LeaseLost, stage_progress
from patchshift.service.job_store import RUNNING, Job
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.requests import (
    ACTIVATE_ALWAYS,
    ACTIVATE_IF_BETTER,
    ACTIVATE_NEVER,
    adaptation_config,
    check_adaptation_images,
    fit_config,
)
from patchshift.service.serving import Serving
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore

log = logging.getLogger("patchshift.service")

_LEGACY_POLICIES = {
    "yes": ACTIVATE_ALWAYS,
    "no": ACTIVATE_NEVER,
    "if-drift-reduced": ACTIVATE_IF_BETTER,
}


def activation_policy(params: dict, default: str = ACTIVATE_ALWAYS) -> str:
    """The job's activation policy; jobs queued by an older release used yes/no/if-drift-reduced."""
    value = params.get("activate", default)
    return _LEGACY_POLICIES.get(value, value)


def make_tasks(
    store: ModelStore,
    serving: Serving,
    lifecycle: Lifecycle,
    device: torch.device,
    settings: Settings,
):
    def write_version(job: Job, model: Detector) -> str:
        """Write the job's one version: claimed in the job record first and the claim checked
        again once written (before any activation), so a run that lost its lease leaves nothing
        and a job run again after a crash never leaves two versions."""
        version = store.allocate_version(job.model)
        if not lifecycle.jobs.claim_version(job.id, job.attempts, version):
            now = lifecycle.jobs.get(job.id)
            if now is not None and (now.status, now.attempts) == (RUNNING, job.attempts):
                raise ArtifactError(  # still this run's job: an earlier run's version is named
                    f"the job already names version {now.result_version}, written by an earlier "
                    "run; this run writes no second one"
                )
            raise LeaseLost(
                "this run lost its lease (its worker missed heartbeats and the job went to "
                "another run); it writes no version"
            )
        try:
            save_model(model, store.version_dir(job.model, version))
        except BaseException:
            lifecycle.jobs.release_version(job.id, job.attempts, version)
            raise
        if not lifecycle.jobs.holds(job.id, job.attempts, version):  # paused while writing
            store.delete_version(job.model, version)
            raise LeaseLost(
                f"this run lost its lease while writing version {version} (its worker missed "
                "heartbeats and the job went to another run); the version was removed"
            )
        return version

    def run_fit(
        job: Job,
        inputs: JobInputs,
        report: Callable[[float, str], None],
        cancelled: Callable[[], bool],
    ):
        config = fit_config(job.params["config"])
        images = inputs.images
        model = fit(
            images, config, device=device, progress=stage_progress(report), cancel=cancelled
        )
        check_cancel(cancelled)
        version = write_version(job, model)
        result = {
            "threshold": model.threshold,
            "bank_size": int(model.bank.shape[0]),
            "n_images": len(images),
        }
        # the active version when the fit was asked for (None: a new model, always activated)
        expected = job.params.get("active_version")
        activate = activation_policy(job.params) == ACTIVATE_ALWAYS or expected is None
        if expected is None:
            lifecycle.activate(job.model, version, model, FIT)
        elif activate and (
            reason := lifecycle.activate_unless_moved(job.model, expected, version, model, FIT)
        ):
            activate, result["not_activated"] = False, reason
        return version, {**result, "activated": activate}

    def run_adapt(
        job: Job,
        inputs: JobInputs,
        report: Callable[[float, str], None],
        cancelled: Callable[[], bool],
    ):
        source = serving.load(job.model, job.params["source_version"])
        options = dict(job.params["config"])
        adapter = get_adapter(options.pop("method"))
        label = f"version {source.version} of {job.model!r}"
        cfg = adaptation_config(adapter, source, label, with_server_files(options, settings))
        policy = activation_policy(job.params)
        # what a job stored is checked as a request is (a job queued before an upgrade included)
        check_adaptation_images(adapter, len(inputs.images), len(inputs.source_images), policy)
        adapted, summary = adapt(
            source,
            inputs.images,
            cfg,
            progress=stage_progress(report),
            cancel=cancelled,
            judge=policy == ACTIVATE_IF_BETTER,
            source_images=inputs.source_images or None,
        )
        check_cancel(cancelled)
        result = {
            "method": cfg.method,
            "n_images": summary.n_images,
            "steps": summary.steps,
            "seconds": round(summary.seconds, 2),
            "source_version": source.version,
            "threshold_before": source.threshold,
            "threshold_after": adapted.threshold,
            "own_bank": adapter.moves_memory,
            **public_details(summary.details),
        }
        # for people, not used to decide; only where both describe images the same way (PatchCore
        # channel statistics: a UDA encoder's embeddings are another space, and a retrained one)
        if (
            source.drift_reference is not None
            and isinstance(source, PatchCoreModel)
            and isinstance(adapted, PatchCoreModel)
        ):
            result.update(drift_before_after(source, adapted, inputs.images, cancelled))
        check_cancel(cancelled)
        activate = policy == ACTIVATE_ALWAYS
        if summary.gate is not None:
            result["gate"] = summary.gate.to_dict()
            activate = summary.gate.better
        version = write_version(job, adapted)
        report(1.0, "saved")
        if activate and (
            reason := lifecycle.activate_unless_moved(
                job.model, source.version, version, adapted, ADAPTATION
            )
        ):
            activate, result["not_activated"] = False, reason
        result["activated"] = activate
        return version, result

    return {"fit": run_fit, "adapt": run_adapt}


def with_server_files(options: dict, settings: Settings) -> dict:
    """A job's adaptation options plus the server's own files they call for: these are never stored
    with the job, whose params every read-scope key sees (answers show no server paths)."""
    if options.get("encoder") != "clip":
        return options
    if not settings.clip_checkpoint:
        raise ConfigError(
            "encoder=clip needs a local open_clip checkpoint on the server "
            "(PATCHSHIFT_CLIP_CHECKPOINT)"
        )
    return {
        **options,
        "clip_model": settings.clip_model,
        "clip_checkpoint": str(settings.clip_checkpoint),
    }


def public_details(details: dict) -> dict:
    """What an adapter reported that a person reads in the job result (not the echo of its
    config)."""
    return {
        key: value
        for key, value in details.items()
        if key not in ("adapt_config", "seconds", "gate")
    }


def drift_before_after(
    source: Detector, adapted: Detector, images: list, cancelled: Callable[[], bool]
) -> dict:
    """The target images' drift from the source's reference condition, seen through the source and,
    when adaptation changed the features (BatchNorm methods, matched input levels), through the new
    version; a version that moved only its memory sees the images as the source does, so it gets no
    `drift_after`."""
    target = load_target(
        images, source.config.image_size
    )  # both PatchCore versions of one model: one input size
    views = [source] if same_weights(source.extractor, adapted.extractor) else [source, adapted]
    values = []
    for model in views:
        descriptors = []
        for start in range(0, len(target), 16):
            check_cancel(cancelled)
            descriptors.append(model.score(target[start : start + 16]).descriptors.cpu().numpy())
        values.append(drift_statistic(source.drift_reference, np.concatenate(descriptors)))
    return dict(zip(("drift_before", "drift_after"), values, strict=False))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two extractors compute the same features (the same input levels, every parameter
    and buffer equal)."""
    if getattr(a, "levels", None) != getattr(b, "levels", None):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
