"""What fit and adaptation jobs do: call core, write a new version into the store, maybe activate it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch

from patchshift.core.adapt import AdaptConfig, GateVerdict, adapt, gate
from patchshift.core.adapt.target_memory import filter_settings
from patchshift.core.adapt.base import load_target
from patchshift.core.artifact import save_model
from patchshift.core.config import ModelConfig
from patchshift.core.drift import drift_statistic
from patchshift.core.patchcore import PatchCoreModel, Provenance, fit
from patchshift.core.progress import check_cancel
from patchshift.core.uda import UDAConfig
from patchshift.core.uda.config import inherited_settings
from patchshift.core.uda.train import fit_uda

from .jobs import Job
from .registry import ModelRegistry
from .store import ModelStore
from .worker import JobInputs, stage_progress

log = logging.getLogger("patchshift.service")

ACTIVATE_ALWAYS, ACTIVATE_NEVER, ACTIVATE_IF_BETTER = "true", "false", "if-better"
ACTIVATION_POLICIES = (ACTIVATE_ALWAYS, ACTIVATE_NEVER, ACTIVATE_IF_BETTER)
_LEGACY_POLICIES = {"yes": ACTIVATE_ALWAYS, "no": ACTIVATE_NEVER, "if-drift-reduced": ACTIVATE_IF_BETTER}


def activation_policy(params: dict, default: str = ACTIVATE_ALWAYS) -> str:
    """The job's activation policy; jobs queued by an older release used yes/no/if-drift-reduced."""
    value = params.get("activate", default)
    return _LEGACY_POLICIES.get(value, value)


def make_tasks(store: ModelStore, registry: ModelRegistry, device: torch.device):
    def run_fit(job: Job, inputs: JobInputs, report: Callable[[float, str], None], cancelled: Callable[[], bool]):
        config = ModelConfig.from_dict(job.params["config"])
        images = inputs.images
        model = fit(images, config, device=device, progress=stage_progress(report), cancel=cancelled)
        check_cancel(cancelled)
        version = store.allocate_version(job.model)
        save_model(model, store.version_dir(job.model, version))
        activate = activation_policy(job.params) == ACTIVATE_ALWAYS or registry.slot(job.model) is None
        if activate:
            registry.activate(job.model, version, model)
        return version, {"activated": activate, "threshold": model.threshold, "bank_size": int(model.bank.shape[0]), "n_images": len(images)}

    def run_adapt(job: Job, inputs: JobInputs, report: Callable[[float, str], None], cancelled: Callable[[], bool]):
        if job.params["config"].get("method") == "uda":
            return run_uda(job, inputs, report, cancelled)
        source = registry.load(job.model, job.params["source_version"])
        cfg = AdaptConfig(**job.params["config"])
        target = load_target(inputs.images, source.config.image_size)
        policy = activation_policy(job.params)
        adapted, summary = adapt(source, target, cfg, progress=stage_progress(report), cancel=cancelled,
                                 judge=policy == ACTIVATE_IF_BETTER)
        check_cancel(cancelled)
        result = {
            "method": cfg.method, "n_images": summary.n_images, "steps": summary.steps, "seconds": round(summary.seconds, 2),
            "source_version": source.version, "threshold_before": source.threshold, "threshold_after": adapted.threshold,
            "bank_rows": int(adapted.bank.shape[0]), "own_bank": adapted.bank is not source.bank,
        }
        check_cancel(cancelled)
        if source.drift_reference is not None:  # for people; not comparable enough across versions to decide on
            result["drift_before"], result["drift_after"] = drift_before_after(source, adapted, target)
        activate = policy == ACTIVATE_ALWAYS
        if summary.gate is not None:
            result["gate"] = summary.gate.to_dict()
            activate = summary.gate.better
        version = store.allocate_version(job.model)
        save_model(adapted, store.version_dir(job.model, version))
        report(1.0, "saved")
        if activate:
            registry.activate(job.model, version, adapted)
        result["activated"] = activate
        return version, result

    def run_uda(job: Job, inputs: JobInputs, report: Callable[[float, str], None], cancelled: Callable[[], bool]):
        """A global detector for the new domain; a target without a dominant cluster fails the job with the reason."""
        source = registry.load(job.model, job.params["source_version"])
        options = {k: v for k, v in job.params["config"].items() if k != "method"}
        cfg = UDAConfig(**{**inherited_settings(source.kind, source.config.to_dict()), **options})
        model, summary = fit_uda(inputs.source_images, inputs.images, cfg, device=device, progress=stage_progress(report), cancel=cancelled)
        check_cancel(cancelled)
        policy = activation_policy(job.params)
        verdict = None
        if policy == ACTIVATE_IF_BETTER and source.kind == "patchcore":
            after = load_target(inputs.images, cfg.image_size)
            scores, _ = model.score_batches(after[i : i + 16] for i in range(0, len(after), 16))
            verdict = gate(source, load_target(inputs.images, source.config.image_size), scores, filter_settings(AdaptConfig()), cancelled)
        elif policy == ACTIVATE_IF_BETTER:
            verdict = GateVerdict(False, None, None, f"no label-free check for a {source.kind} parent; activate the new version by hand")
        model.provenance.parent = source.version
        version = store.allocate_version(job.model)
        save_model(model, store.version_dir(job.model, version))
        report(1.0, "saved")
        activate = policy == ACTIVATE_ALWAYS or (verdict is not None and verdict.better)
        if activate:
            registry.activate(job.model, version, model)
        return version, {**({"gate": verdict.to_dict()} if verdict else {}),
            "method": "uda", "n_images": len(inputs.images), "n_source_images": len(inputs.source_images), "steps": summary.steps,
            "seconds": round(summary.seconds, 2), "source_version": source.version, "threshold_before": source.threshold,
            "threshold_after": model.threshold, "cluster_sizes": summary.cluster_sizes, "clustering": summary.message,
            "activated": activate,
        }

    return {"fit": run_fit, "adapt": run_adapt}


def drift_before_after(source: PatchCoreModel, adapted: PatchCoreModel, target: torch.Tensor) -> tuple[float, float]:
    """The target images' drift from the source's reference condition, before and after adapting."""
    step = source.config.batch_size
    values = []
    for model in (source, adapted):
        _, _, descriptors = model.score_stream(target[i : i + step] for i in range(0, len(target), step))
        values.append(drift_statistic(source.drift_reference, descriptors))
    return values[0], values[1]


def override_threshold(store: ModelStore, registry: ModelRegistry, name: str, threshold: float) -> str:
    """A new version identical to the active one but for its threshold; activated at once.

    The version is validated and written completely before ACTIVE moves, so a refused value
    leaves the store and the active version as they were."""
    source = registry.get(name)
    model = copy.copy(source)  # shares the (read-only) networks and bank; any model kind
    model.threshold = float(threshold)
    model.version = None
    model.provenance = Provenance(
        method="threshold-override", parent=source.version, threshold_source="given",
        calibration_scores=list(source.provenance.calibration_scores), n_train_images=source.provenance.n_train_images,
        details={"previous_threshold": source.threshold},
    )
    version = store.allocate_version(name)
    save_model(model, store.version_dir(name, version))
    registry.activate(name, version, model)
    return version
