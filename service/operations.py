"""What the model routes do, as plain functions over the store, the registry and the worker.

Routes validate the request and shape the answer; these functions hold the rules (a model must
exist, one job or threshold change per model at a time, ...) so they read the same from any caller.
"""

from __future__ import annotations

from patchshift.core.common.errors import ArtifactError
from patchshift.service.http_errors import NotFound, redact_paths
from patchshift.service.schemas import (
    DriftOut,
    ModelOut,
    ModelSummary,
    UnreadableVersion,
    VersionOut,
)
from patchshift.service.serving import ModelRegistry
from patchshift.service.settings import Settings
from patchshift.service.store import ModelStore, check_name
from patchshift.service.tasks import override_threshold
from patchshift.service.worker import Worker


def require_model(store: ModelStore, name: str) -> str:
    """`name`, if the store has such a model (else 404)."""
    check_name(name)
    if not store.exists(name):
        raise NotFound(f"no model named {name!r}")
    return name


def list_models(store: ModelStore, registry: ModelRegistry) -> list[ModelSummary]:
    out = []
    for name in store.models():
        slot = registry.slot(name)
        out.append(
            ModelSummary(
                name=name,
                active_version=store.active(name),
                loaded=bool(slot and slot.model),
                versions=len(store.versions(name)),
            )
        )
    return out


def describe_model(
    store: ModelStore, registry: ModelRegistry, settings: Settings, name: str
) -> ModelOut:
    """Every version (unreadable ones with the reason), the active one, and the drift verdict."""
    slot = registry.slot(name)
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
    if slot is not None and slot.model is not None:
        monitor = slot.monitor
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
        loaded=slot is not None and slot.model is not None,
        load_error=slot.load_error if slot else None,
        versions=versions,
        unreadable_versions=unreadable,
        drift=drift,
        images_scored=slot.history.images_scored if slot else 0,
    )


def activate_version(store: ModelStore, registry: ModelRegistry, name: str, version: str) -> None:
    require_model(store, name)
    registry.activate(name, check_name(version, "version"))


def set_threshold(
    store: ModelStore, registry: ModelRegistry, worker: Worker, name: str, threshold: float
) -> str:
    """A new version with `threshold`, activated; it holds the model's job slot while it is written,
    so an adaptation cannot start meanwhile and later replace the operator's version."""
    require_model(store, name)
    with worker.exclusive(name, "set the threshold"):
        return override_threshold(store, registry, name, threshold)


def delete_version(
    store: ModelStore, registry: ModelRegistry, worker: Worker, name: str, version: str
) -> None:
    """Refused (409) while the model has an unfinished job (it may have started from this
    version)."""
    require_model(store, name)
    with worker.exclusive(name, "delete a version"):
        registry.delete_version(name, check_name(version, "version"))


def delete_model(store: ModelStore, registry: ModelRegistry, worker: Worker, name: str) -> None:
    require_model(store, name)
    with worker.exclusive(name, "delete it"):
        registry.forget(name)
        store.delete_model(name)
