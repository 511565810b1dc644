"""What the model routes do, as plain functions over the store, the serving state, the lifecycle,
the drift watch and the line's history.

Routes validate the request and shape the answer; the lifecycle holds the rules of versions (one
job or change per model at a time, never undo a rollback), these functions describe and delegate.
"""

from __future__ import annotations

from patchshift.core.common.errors import ArtifactError
from patchshift.service.drift_watch import DriftWatch
from patchshift.service.history import Histories
from patchshift.service.http_errors import NotFound, redact_paths
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.schemas import (
    CalibrationOut,
    DriftOut,
    ModelOut,
    ModelSummary,
    UnreadableVersion,
    VersionOut,
)
from patchshift.service.scoring import checked_batches
from patchshift.service.serving import Serving
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore, check_name


def require_model(store: ModelStore, name: str) -> str:
    """`name`, if the store has such a model (else 404)."""
    check_name(name)
    if not store.exists(name):
        raise NotFound(f"no model named {name!r}")
    return name


def list_models(store: ModelStore, serving: Serving) -> list[ModelSummary]:
    out = []
    for name in store.models():
        out.append(
            ModelSummary(
                name=name,
                active_version=store.active(name),
                loaded=serving.active(name) is not None,
                versions=len(store.versions(name)),
            )
        )
    return out


def describe_model(
    store: ModelStore,
    serving: Serving,
    drift_watch: DriftWatch,
    histories: Histories,
    settings: Settings,
    name: str,
) -> ModelOut:
    """Every version (unreadable ones with the reason), the active one, and the drift verdict."""
    loaded = serving.active(name) is not None
    monitor = drift_watch.monitor(name)
    line = histories.get(name)
    active = store.active(name)
    versions, unreadable = [], []
    for version in store.versions(name):
        try:
            m = store.manifest(name, version)
        except ArtifactError as exc:
            unreadable.append(UnreadableVersion(version=version, error=redact_paths(str(exc))))
            continue
        versions.append(
            VersionOut(
                version=version,
                kind=m.kind,
                active=version == active,
                parent=m.parent,
                method=m.method,
                created=m.created,
                threshold=m.threshold,
                threshold_source=m.threshold_source,
                backbone=m.backbone,
                image_size=m.image_size,
                bank_size=getattr(m, "bank_size", None),
                details={k: v for k, v in m.details.items() if k != "losses"},
            )
        )
    drift = None
    if loaded and monitor is not None:
        statistic, drifting = monitor.verdict()
        drift = DriftOut(
            statistic=statistic,
            threshold=monitor.threshold,
            window=monitor.window,
            recent_images=monitor.n_recent,
            drifting=drifting,
            recent_anomalous_share=monitor.anomalous_share(),
            auto_adapt=settings.auto_adapt,
        )
    return ModelOut(
        name=name,
        active_version=active,
        loaded=loaded,
        load_error=serving.load_error(name),
        versions=versions,
        unreadable_versions=unreadable,
        drift=drift,
        images_scored=line.images_scored if line is not None else 0,
    )


def activate_version(store: ModelStore, lifecycle: Lifecycle, name: str, version: str) -> None:
    require_model(store, name)
    lifecycle.activate(name, version)


def set_threshold(store: ModelStore, lifecycle: Lifecycle, name: str, threshold: float) -> str:
    require_model(store, name)
    return lifecycle.set_threshold(name, threshold)


def calibrate_threshold(
    store: ModelStore,
    serving: Serving,
    lifecycle: Lifecycle,
    name: str,
    version: str,
    files: list[tuple[str, bytes]],
    false_alarm_rate: float | None,
) -> CalibrationOut:
    """A new version of `version` whose threshold comes from known-good images (`files`), saved and
    not activated: the person who vouched for the images activates it after reading how sure the
    threshold is. Every file is checked before any is scored (checked_batches)."""
    from patchshift.core.engine.recalibration import calibration_rate, recalibrated

    require_model(store, name)
    model = serving.for_review(name, check_name(version, "version"))
    rate = calibration_rate(model, len(files), false_alarm_rate)
    batches = checked_batches(files, model.config.image_size)
    derived, estimate = recalibrated(model, batches, rate)
    new_version = lifecycle.save_derived_version(name, version, derived, "calibrate a threshold")
    return CalibrationOut(
        model=name,
        version=new_version,
        parent=version,
        threshold=derived.threshold,
        previous_threshold=model.threshold,
        known_good_images=len(files),
        false_alarm_rate=rate,
        threshold_estimate=estimate.to_dict(),
    )


def delete_version(store: ModelStore, lifecycle: Lifecycle, name: str, version: str) -> None:
    require_model(store, name)
    lifecycle.delete_version(name, version)


def delete_model(store: ModelStore, lifecycle: Lifecycle, name: str) -> None:
    require_model(store, name)
    lifecycle.delete_model(name)  # the drift watch and the history forget it with the lifecycle
