"""The drift watch (service/drift_watch.py): observation off the event loop, the auto-adaptation
policy."""

from __future__ import annotations

import numpy as np
from service_helpers import (
    files_field,
    png_bytes,
)

ADMIN = "admin-key-for-tests"


def test_drift_observation_runs_off_the_event_loop(client, monkeypatch) -> None:
    """Starting a self-adaptation writes up to 64 files: that must never stall every request."""
    import asyncio

    from patchshift.service.drift_watch import DriftWatch

    seen: list[bool] = []
    original = DriftWatch.observe

    def recording(self, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DriftWatch, "observe", recording)
    image = png_bytes(np.full((96, 96, 3), 128, np.uint8))
    assert (
        client.post("/v1/models/widget/score", files=files_field([("a.png", image)])).status_code
        == 200
    )
    assert seen == [False]


def test_a_refused_auto_adaptation_is_tried_again_once_the_slot_frees(client, monkeypatch) -> None:
    from patchshift.service.http_errors import Conflict

    state = client.app.state
    model = state.serving.get("widget")
    key = ("widget", model.version)
    state.drift._attempted.add(key)

    def busy(*args, **kwargs):
        raise Conflict("model widget has an unfinished job")

    monkeypatch.setattr(state.worker, "submit", busy)
    state.drift._submit("widget", model, {}, [])
    assert key not in state.drift._attempted
