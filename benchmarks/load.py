"""HTTP load benchmark: concurrent clients posting batches of images to the real server on loopback.

    python -m benchmarks.load [--dataset bsd] [--clients 4] [--duration 60] [--batch 8]

Scenarios: scores only, scores with heatmap PNGs, and scores while an adaptation job runs. The
baseline is in-process scoring of the same files in this process (decode + score, and + heatmap
PNGs, batches of --batch and of 32), the best of which is the "in-process" throughput the HTTP
numbers are compared with. Writes benchmarks/results/load-<dataset>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .helpers import DATASETS, DEFAULT_DATA_ROOT, RESULTS, machine, markdown


def in_process(
    model_dir: Path, files: list[tuple[str, bytes]], batch: int, heatmaps: bool, seconds: float
) -> float:
    """Images per second of decode + score (+ heatmap PNGs) in one process, as the CLI does it
    (batches of `batch`, the next batch decoding while this one is scored)."""
    from patchshift.core.artifact import load_model
    from patchshift.core.common.images import iter_batches, open_image
    from patchshift.core.engine.visualize import heatmap_png

    model = load_model(model_dir)
    stream = [data for _, data in files] * max(1, int(seconds * 50 / len(files)))
    done, started = 0, time.perf_counter()
    for tensor, _, offset in iter_batches(stream, model.config.image_size, batch):
        result = model.score(tensor)
        if heatmaps:
            for k in range(len(tensor)):
                heatmap_png(
                    np.asarray(open_image(stream[offset + k])),
                    result.anomaly_maps[k].numpy(),
                    model.threshold,
                )
        done += len(tensor)
        if time.perf_counter() - started >= seconds:
            break
    return done / (time.perf_counter() - started)


def drive(
    url: str | list[str],
    name: str,
    files: list[tuple[str, bytes]],
    clients: int,
    batch: int,
    seconds: float,
    heatmaps: bool,
) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    urls = [url] if isinstance(url, str) else url  # several replicas: requests take turns

    def client(offset: int) -> None:
        i = offset * batch
        with contextlib.ExitStack() as stack:
            sessions = [stack.enter_context(httpx.Client(base_url=u, timeout=120)) for u in urls]
            while time.perf_counter() < deadline:
                chunk = [files[(i + k) % len(files)] for k in range(batch)]
                http = sessions[(i // batch) % len(sessions)]
                i += batch * clients
                sent = time.perf_counter()
                try:
                    response = http.post(
                        f"/v1/models/{name}/score",
                        files=[("files", c) for c in chunk],
                        data={"heatmap": "png" if heatmaps else "none"},
                    )
                    ok = response.status_code == 200
                    problem = None if ok else f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                with lock:
                    if problem is None:
                        latencies.append(time.perf_counter() - sent)
                    else:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": len(latencies),
        "images_per_s": len(latencies) * batch / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main(argv: list[str] | None = None) -> None:
    import httpx

    from patchshift.core.evaluation.data import labelled_samples

    from .protocol import get_model

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--dataset", default="bsd")
    parser.add_argument("--clients", nargs="*", type=int, default=[4])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--files", type=int, default=64, help="distinct test images cycled through")
    parser.add_argument("--model-cache", default=str(RESULTS / "models"))
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)

    root = Path(args.data_root) / args.dataset
    source = get_model(
        args.dataset, root, Path(args.model_cache), "auto", DATASETS.get(args.dataset, {})
    )
    samples = labelled_samples(root)[:: max(1, len(labelled_samples(root)) // args.files)][
        : args.files
    ]
    files = [(s.path.name, s.path.read_bytes()) for s in samples]
    store = Path(tempfile.mkdtemp(prefix="patchshift-load-"))
    shutil.copytree(source.bank_path.parent, store / args.dataset / "v1", copy_function=os.link)

    baseline = {}
    for heat in (False, True):
        for batch in sorted({args.batch, 32}):
            baseline[(heat, batch)] = in_process(
                store / args.dataset / "v1", files, batch, heat, min(args.duration, 30)
            )
            print(
                f"in-process, batch {batch}, heatmaps {heat}: {baseline[(heat, batch)]:.1f} "
                "images/s",
                flush=True,
            )

    port = free_port()
    log = open(store / "server.log", "ab")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchshift.service.cli",
            "serve",
            "--port",
            str(port),
            "--models-dir",
            str(store),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_ready(url, server)
        for clients in args.clients:
            for heat in (False, True):
                row = drive(url, args.dataset, files, clients, args.batch, args.duration, heat)
                rows.append({"scenario": "score + heatmaps" if heat else "score", **row})
                print(rows[-1], flush=True)
        with httpx.Client(base_url=url, timeout=120) as http:
            job = http.post(
                f"/v1/models/{args.dataset}/adapt",
                files=[("files", f) for f in files[:32]],
                data={"method": "roda", "epochs": "1000", "activate": "false"},
            ).json()["job_id"]
            while http.get(f"/v1/jobs/{job}").json()["status"] == "queued":
                time.sleep(0.2)
            row = drive(
                url, args.dataset, files, max(args.clients), args.batch, args.duration, False
            )
            status = http.get(f"/v1/jobs/{job}").json()["status"]
            http.delete(f"/v1/jobs/{job}")
        rows.append({"scenario": f"score during adaptation (job {status})", **row})
        print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(store, ignore_errors=True)

    best = {heat: max(v for (h, _), v in baseline.items() if h == heat) for heat in (False, True)}
    for row in rows:
        row["vs_in_process"] = row["images_per_s"] / best["heatmaps" in row["scenario"]]
    result = {
        "dataset": args.dataset,
        "batch": args.batch,
        "duration_s": args.duration,
        "machine": machine(),
        "in_process": {
            f"batch {b}{' + heatmaps' if h else ''}": v for (h, b), v in baseline.items()
        },
        "rows": rows,
    }
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / f"load-{args.dataset}.json").write_text(json.dumps(result, indent=2))
    print(
        f"\n{args.dataset}: {len(files)} images cycled, {args.batch} per request, "
        f"{args.duration:.0f} s per row ({result['machine']})"
    )
    print(
        "in-process images/s: "
        + ", ".join(f"{k}: {v:.1f}" for k, v in result["in_process"].items())
    )
    print(
        markdown(
            rows,
            [
                ("scenario", "scenario", ""),
                ("clients", "clients", "d"),
                ("images_per_s", "images/s", ".1f"),
                ("vs_in_process", "vs in-process", ".0%"),
                ("p50_ms", "p50 ms", ".0f"),
                ("p95_ms", "p95 ms", ".0f"),
                ("p99_ms", "p99 ms", ".0f"),
                ("errors", "errors", "d"),
            ],
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str, server: subprocess.Popen, timeout: float = 120, probe: str = "/readyz"
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready")


if __name__ == "__main__":
    main()
