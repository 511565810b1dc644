"""Scoring over HTTP: decode uploads, micro-batch concurrent requests onto the model, build results.

Concurrent requests for the same model version are concatenated into one batch (up to
max_batch_images, waiting at most batch_wait_ms for company) and scored by one inference thread,
so the device sees large batches while each request still gets exactly its own results.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from patchshift.core.common.errors import InvalidImageError
from patchshift.core.common.images import decode_for_model, to_tensor
from patchshift.core.engine.detector import Detector
from patchshift.core.engine.visualize import heatmap_png
from patchshift.service.http_errors import BadImages
from patchshift.service.prometheus import ServiceMetrics


@dataclass
class Decoded:
    names: list[str]
    photos: list[np.ndarray]  # RGB previews (longer side <= heatmap_max_side) for heatmap overlays
    batch: torch.Tensor  # (N, 3, H, W) at the model input size


@dataclass
class Scored:
    scores: np.ndarray
    maps: np.ndarray | None  # None for a global detector (UDA)
    descriptors: np.ndarray


def decode_uploads(
    files: list[tuple[str, bytes]], size: tuple[int, int], preview_side: int | None
) -> Decoded:
    """Every file decoded, or one 422 that names every bad file (nothing is scored then).

    With `preview_side`, a preview of each photo is kept for its overlay, scaled down to that
    longer side: memory stays bounded whatever the uploads' sizes (one full image at a time)."""
    arrays, photos, problems = [], [], []
    for name, data in files:
        try:
            array, _, preview = decode_for_model(data, size, name, preview_side)
        except InvalidImageError as exc:
            problems.append({"file": name, "message": str(exc)})
            continue
        arrays.append(array)
        if preview is not None:
            photos.append(preview)
    if problems:
        raise bad_images(problems)
    return Decoded([n for n, _ in files], photos, to_tensor(arrays))


def bad_images(problems: list[dict]) -> BadImages:
    """One 422 naming every bad file ({"file", "message"} each), the first in its message."""
    summary = problems[0]["message"] + (
        f" (and {len(problems) - 1} more bad file(s))" if len(problems) > 1 else ""
    )
    return BadImages(summary, file=problems[0]["file"], files=problems)


def checked_batches(
    files: list[tuple[str, bytes]], size: tuple[int, int], chunk: int = 16
) -> Iterator[torch.Tensor]:
    """Every file checked first (one 422 naming each bad one, before anything is scored); then
    (B, 3, H, W) batches of `chunk` files, decoded one batch at a time: memory stays bounded at any
    count of uploads."""
    problems = []
    for name, data in files:
        try:
            decode_for_model(data, size, name, None)
        except InvalidImageError as exc:
            problems.append({"file": name, "message": str(exc)})
    if problems:
        raise bad_images(problems)
    return (
        decode_uploads(files[i : i + chunk], size, None).batch for i in range(0, len(files), chunk)
    )


class MicroBatcher:
    def __init__(self, max_images: int, wait_s: float, metrics: ServiceMetrics) -> None:
        self.max_images = max_images
        self.wait_s = wait_s
        self.metrics = metrics
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="patchshift-score")
        self._waiting = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="patchshift-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def score(self, model: Detector, batch: torch.Tensor) -> Scored:
        future = asyncio.get_running_loop().create_future()
        self._waiting += len(batch)
        self.metrics.score_queue_depth.set(self._waiting)
        await self._queue.put((model, batch, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            count = len(items[0][1])
            deadline = loop.time() + self.wait_s
            while count < self.max_images:
                try:
                    remaining = deadline - loop.time()
                    item = (
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                items.append(item)
                count += len(item[1])
            groups: dict[int, list] = {}
            for item in items:  # one batch per model version
                groups.setdefault(id(item[0]), []).append(item)
            for group in groups.values():
                await self._run(loop, group)

    async def _run(self, loop: asyncio.AbstractEventLoop, group: list) -> None:
        model = group[0][0]
        batch = torch.cat([b for _, b, _ in group]) if len(group) > 1 else group[0][1]
        self._waiting -= len(batch)
        self.metrics.score_queue_depth.set(self._waiting)
        self.metrics.batch_size.observe(len(batch))
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, _score, model, batch)
        except Exception as exc:  # handed to each waiting request; the loop lives on
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        start = 0
        for _, part, future in group:
            end = start + len(part)
            if not future.done():
                maps = result.maps[start:end] if result.maps is not None else None
                future.set_result(
                    Scored(result.scores[start:end], maps, result.descriptors[start:end])
                )
            start = end


def _score(model: Detector, batch: torch.Tensor) -> Scored:
    result = model.score(batch)
    maps = result.anomaly_maps.cpu().numpy() if result.anomaly_maps is not None else None
    return Scored(result.scores.cpu().numpy(), maps, result.descriptors.cpu().numpy())


def recent_as_decoded(images) -> Decoded:
    """The line's kept images (history.RecentImage) as one batch; each is its own overlay photo."""
    pixels = [r.pixels for r in images]
    return Decoded([r.filename for r in images], pixels, to_tensor(pixels))


def build_results(
    model: Detector, decoded: Decoded, scored: Scored, heatmaps: bool, legend: bool = False
) -> list[dict]:
    results = []
    for i, name in enumerate(decoded.names):
        score = float(scored.scores[i])
        entry = {
            "filename": name,
            "score": score,
            "threshold": model.threshold,
            "anomalous": bool(score > model.threshold),
        }
        if heatmaps:
            entry["heatmap_png"] = base64.b64encode(
                heatmap_png(decoded.photos[i], scored.maps[i], model.threshold, legend)
            ).decode()
        results.append(entry)
    return results
