"""Shared by the benchmark scripts: dataset settings, machine description, tables, memory probe."""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import torch

# Per dataset: the input size that keeps its aspect and defects readable (see README).
DATASETS = {
    "bsd": {"image_size": "576x224"},
    "deeppcb": {"image_size": "512"},
}

# Generated products (benchmarks/generated.py), to check that defaults hold beyond the real
# datasets.
GENERATED = {"tiles": {"image_size": "256"}}
# ELPV solar cells exported in the MVTec AD layout (benchmarks/elpv.py): 300 x 300 cells.
EXPORTED = {"elpv-mono": {"image_size": "256"}, "elpv-poly": {"image_size": "256"}}


def dataset_settings(name: str) -> dict:
    """The model settings a benchmark uses for a dataset (real or generated); {} for others."""
    return dict({**DATASETS, **GENERATED, **EXPORTED}.get(name, {}))


def model_settings(name: str, image_size: str | None) -> dict:
    """dataset_settings(name), with the input size a benchmark's `--image-size` overrides (None: the
    dataset's)."""
    return {**dataset_settings(name), **({"image_size": image_size} if image_size else {})}


RESULTS = Path(__file__).resolve().parent / "results"  # the checkout's, whatever the cwd
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {torch.get_num_threads()} CPU threads"
    threads = torch.get_num_threads()
    return f"CPU only, {os.cpu_count()} cores, {threads} torch threads ({platform.machine()})"


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Rows as a markdown table; columns are (key, title, format spec)."""
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| "
        + " | ".join(
            format(r[key], fmt)
            if fmt and r.get(key) is not None
            else "–"
            if key in r and r[key] is None
            else str(r.get(key, ""))
            for key, _, fmt in columns
        )
        + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body])


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples this process's resident memory every 20 ms; `.peak_gib` is the rise over the
    start."""

    def __init__(self) -> None:
        self.start = resident_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def peak_gib(self) -> float:
        return (self.peak - self.start) / 2**30


class StageClock:
    """A progress callback (core.common.progress) that notes when each stage last reported, so a
    fit's seconds split by stage: each stage runs from the previous stage's end to its own last
    report."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.last[stage] = time.perf_counter()

    def seconds(self) -> dict[str, float]:
        out, previous = {}, self.started
        for stage, end in sorted(self.last.items(), key=lambda item: item[1]):
            out[stage] = end - previous
            previous = end
        return out


@torch.inference_mode()
def extract_features(
    extractor: torch.nn.Module, paths: list, size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """(N, h, w, D) patch features of image files, on the CPU (batches of 16)."""
    from patchshift.core.common.images import iter_batches

    return torch.cat(
        [extractor(batch.to(device)).cpu() for batch, _, _ in iter_batches(paths, size, 16)]
    )
