"""The real server under concurrent load of every kind at once, for a bounded time: scoring (with
and without heatmaps, clean and darkened images so the drift window moves and auto-adapt starts),
model reads (the drift verdict), activations back and forth, threshold changes and adaptation jobs.
Every answer must be one the API documents for that situation, and the log must hold no traceback.
Run it repeatedly with `for i in $(seq 10); do pytest -q tests/test_stress.py || break; done`."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from service_helpers import Server, darkened, files_field, named_bytes, wait_job

SECONDS = 12


def test_concurrent_scoring_reads_activations_thresholds_and_adaptations(
    tmp_path: Path, saved_model: Path, dataset: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    env = {
        "PATCHSHIFT_AUTO_ADAPT": "true",
        "PATCHSHIFT_DRIFT_WINDOW": "8",
        "PATCHSHIFT_AUTO_ADAPT_IMAGES": "8",
        "PATCHSHIFT_AUTO_ADAPT_PATIENCE": "8",
        "PATCHSHIFT_AUTO_ADAPT_METHOD": "bn-stats",
    }
    server = Server(models, env=env).start()
    clean = named_bytes(sorted((dataset / "train/good").glob("*.png")))[:8]
    dark = darkened(clean)
    unexpected: list[str] = []
    counts: dict[str, int] = {}
    stop = time.monotonic() + SECONDS

    def loop(name: str, call, allowed: set[int]) -> None:
        with server.client(timeout=60) as client:
            i = 0
            while time.monotonic() < stop:
                response = call(client, i)
                i += 1
                counts[name] = counts.get(name, 0) + 1
                if response.status_code not in allowed:
                    unexpected.append(f"{name}: {response.status_code} {response.text[:300]}")

    def score(client, i):
        images = (clean if i % 2 else dark)[i % 4 : i % 4 + 2]
        return client.post(
            "/v1/models/widget/score",
            files=files_field(images),
            data={"heatmap": "png" if i % 3 == 0 else "none"},
        )

    def activate(client, i):
        versions = [v["version"] for v in client.get("/v1/models/widget").json()["versions"]]
        return client.post(f"/v1/models/widget/versions/{versions[i % len(versions)]}/activate")

    def adapt(client, i):
        response = client.post(
            "/v1/models/widget/adapt",
            files=files_field(dark[:6]),
            data={"method": "bn-stats", "activate": "false"},
        )
        if response.status_code == 202:
            job = wait_job(client, response.json()["job_id"], timeout=SECONDS + 60)
            if job["status"] != "succeeded":
                unexpected.append(f"adaptation job {job['status']}: {job.get('error')}")
        return response

    with server.client() as client:  # a second version, so activations have somewhere to go
        assert client.put("/v1/models/widget/threshold", json={"threshold": 5.0}).status_code == 200
    workers = [
        threading.Thread(target=loop, args=(f"score{k}", score, {200})) for k in range(3)
    ] + [
        threading.Thread(
            target=loop, args=("read", lambda c, i: c.get("/v1/models/widget"), {200})
        ),
        threading.Thread(target=loop, args=("activate", activate, {200})),
        # 409: the model has an unfinished job (an adaptation, or one auto-adapt started)
        threading.Thread(
            target=loop,
            args=(
                "threshold",
                lambda c, i: c.put("/v1/models/widget/threshold", json={"threshold": 4.0 + i % 3}),
                {200, 409},
            ),
        ),
        threading.Thread(target=loop, args=("adapt", adapt, {202, 409})),
    ]
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(SECONDS + 120)
        with server.client() as client:
            for job in client.get("/v1/jobs").json():
                if job["status"] in ("queued", "running"):
                    wait_job(client, job["id"], timeout=120)
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()
    log = server.log.read_text()
    assert not unexpected, unexpected[:5]
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
    assert all(
        counts.get(name, 0) > 0 for name in ("score0", "read", "activate", "threshold", "adapt")
    ), counts
