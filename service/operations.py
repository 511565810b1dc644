"""What the model routes do, as plain functions over the store, the serving state, the lifecycle,
the drift watch and the line's history.

Routes validate the request and shape the answer; the lifecycle holds the rules of versions (one
job or change per model at a time, never undo a rollback), these functions describe and delegate.
"""

from __future__ import annotations

import numpy as np

from patchshift.core.artifact import Manifest
from patchshift.core.common.errors import ArtifactError, DatasetError
from patchshift.service.drift_watch import DriftWatch
from patchshift.service.history import Histories
from patchshift.service.http_errors import NotFound, redact_paths
from patchshift.service.lifecycle import Lifecycle
from patchshift.service.part_checks import CheckedPart, CheckedParts
from patchshift.service.prometheus import ServiceMetrics
from patchshift.service.schemas import (
    CalibrationOut,
    CheckedPartIn,
    CheckedPartOut,
    CheckedPartsOut,
    DriftOut,
    FalseAlarmCheckOut,
    ModelOut,
    ModelSummary,
    ObservedShare,
    UnreadableVersion,
    VersionOut,
)
from patchshift.service.scoring import checked_batches
from patchshift.service.serving import Serving
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore, check_name

SHOWN_CHECKS = 200  # the latest checks a summary lists


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
    checked: CheckedParts,
    name: str,
    version: str,
    files: list[tuple[str, bytes]],
    false_alarm_rate: float | None,
    from_checked_parts: bool = False,
) -> CalibrationOut:
    """A new version of `version` whose threshold comes from known-good parts, saved and not
    activated: the person who vouched for them activates it after reading how sure the threshold
    is. The parts are either uploaded images (`files`, every one checked before any is scored:
    checked_batches) or the parts checked good on the line for that version (their scores are
    already known: nothing is scored again)."""
    from patchshift.core.engine.recalibration import (
        CHECKED_ON_THE_LINE,
        UPLOADED,
        calibration_rate,
        recalibrated,
        recalibrated_from_scores,
    )

    require_model(store, name)
    version = check_name(version, "version")
    if from_checked_parts == bool(files):
        raise DatasetError(
            "give either images of known-good parts (files) or from_checked_parts=true (the parts "
            "checked good on the line for this version), not both and not neither"
        )
    model = serving.for_review(name, version)
    if from_checked_parts:
        scores = checked.good_scores(name, version, store.identity(name, version))
        what = f"part(s) checked good on the line for {name} {version}"
        rate = calibration_rate(model, scores.size, false_alarm_rate, what)
        derived, estimate = recalibrated_from_scores(model, scores, rate, CHECKED_ON_THE_LINE)
        count, source = int(scores.size), CHECKED_ON_THE_LINE
    else:
        rate = calibration_rate(model, len(files), false_alarm_rate)
        batches = checked_batches(files, model.config.image_size)
        derived, estimate = recalibrated(model, batches, rate)
        count, source = len(files), UPLOADED
    new_version = lifecycle.save_derived_version(name, version, derived, "calibrate a threshold")
    return CalibrationOut(
        model=name,
        version=new_version,
        parent=version,
        threshold=derived.threshold,
        previous_threshold=model.threshold,
        known_good_images=count,
        known_good_source=source,
        false_alarm_rate=rate,
        threshold_estimate=estimate.to_dict(),
    )


def record_checked_parts(
    store: ModelStore,
    checked: CheckedParts,
    metrics: ServiceMetrics,
    name: str,
    version: str,
    parts: list[CheckedPartIn],
) -> CheckedPartsOut:
    """Keep what a person found on parts `version` scored, and say what its verdicts do. The
    counter counts each part's first check (a correction replaces the stored check only)."""
    version, manifest, identity = stored_version(store, name, version)
    new = checked.record(name, version, identity, [(p.part, p.score, p.good) for p in parts])
    for score, good in new:
        found = "good" if good else "defective"
        verdict = "flagged" if score > manifest.threshold else "passed"
        metrics.part_checks.labels(name, version, found, verdict).inc()
    return summarised(checked, name, version, manifest, identity)


def checked_parts_summary(
    store: ModelStore, checked: CheckedParts, name: str, version: str
) -> CheckedPartsOut:
    return summarised(checked, name, *stored_version(store, name, version))


def stored_version(store: ModelStore, name: str, version: str) -> tuple[str, Manifest, str]:
    """The checked name of a stored version, its manifest and its identity (404 if absent)."""
    require_model(store, name)
    version = check_name(version, "version")
    return version, store.manifest(name, version), store.identity(name, version)


def summarised(
    checked: CheckedParts, name: str, version: str, manifest: Manifest, identity: str
) -> CheckedPartsOut:
    """The version's false alarms and recall on the parts a person checked, with exact intervals,
    and the threshold the good ones would give (core.engine.recalibration.known_good_threshold)."""
    from patchshift.core.engine.recalibration import (
        check_known_good_request,
        judged_false_alarms,
        known_good_threshold,
        observed_share,
    )
    from patchshift.core.evaluation.evaluate import asked_rate

    threshold, rate = manifest.threshold, asked_rate(manifest.config)
    parts = checked.of(name, version, identity)
    good = [p for p in parts if p.good]
    defective = [p for p in parts if not p.good]

    def measured(group: list[CheckedPart]) -> ObservedShare:
        flagged = sum(p.score > threshold for p in group)
        share, interval = observed_share(flagged, len(group))
        return ObservedShare(
            count=len(group),
            flagged=flagged,
            share=share,
            interval=list(interval) if interval else None,
        )

    false_alarms = measured(good)
    calibration = None
    if not 0 < rate < 1:
        note = (
            f"the version asks for a {rate:.0%} false-alarm rate: calibrate with a "
            "false_alarm_rate above 0"
        )
    else:
        try:
            check_known_good_request(len(good), rate, "part(s) checked good")
        except DatasetError as too_few:
            note = str(too_few)
        else:
            estimate = known_good_threshold(np.array([p.score for p in good]), rate)
            calibration = {"threshold": estimate.value, **estimate.to_dict()}
            note = f"calibrating from them would set {estimate.value:.4g}: {estimate.note}"
    return CheckedPartsOut(
        model=name,
        version=version,
        threshold=threshold,
        false_alarm_rate=rate,
        false_alarms=false_alarms,
        recall=measured(defective),
        false_alarm_check=FalseAlarmCheckOut(
            **vars(judged_false_alarms(false_alarms.flagged, false_alarms.count, rate))
        ),
        calibration=calibration,
        calibration_note=note,
        parts=[
            CheckedPartOut(
                part=p.part,
                score=p.score,
                good=p.good,
                flagged=p.score > threshold,
                checked_at=p.checked_at,
            )
            for p in parts[:SHOWN_CHECKS]
        ],
    )


def delete_version(
    store: ModelStore, lifecycle: Lifecycle, checked: CheckedParts, name: str, version: str
) -> None:
    require_model(store, name)
    lifecycle.delete_version(name, version)
    checked.forget(name, version)


def delete_model(store: ModelStore, lifecycle: Lifecycle, checked: CheckedParts, name: str) -> None:
    require_model(store, name)
    lifecycle.delete_model(name)  # the drift watch and the history forget it with the lifecycle
    checked.forget(name)  # once, here (not on every replica that notices the deletion)
