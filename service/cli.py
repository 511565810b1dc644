"""The `patchshift` command: fit, score, adapt, eval, calibrate, serve, worker.

Every user error is one line on stderr and exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("patchshift")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from patchshift.core.engine.model_config import FIT_OPTIONS, ModelConfig
    from patchshift.core.engine.threshold import THRESHOLD_BOUNDS
    from patchshift.service.option_fields import add_flags, bounded_type

    parser.add_argument(
        "--backbone",
        default=ModelConfig.backbone,
        help="timm architecture name; tf_efficientnet_lite0/1/2 "
        "need no --weights when their package is installed (lite0 and lite1 are dependencies)",
    )
    parser.add_argument(
        "--weights", default=None, help="local weights file (required for non-bundled backbones)"
    )
    parser.add_argument(
        "--image-size",
        default="256",
        help="model input size: N or WIDTHxHEIGHT, e.g. 576x224 (sides 32..2048)",
    )
    add_flags(
        parser,
        ModelConfig,
        FIT_OPTIONS,
        flags={"reweight_neighbours": ("--reweight", "--reweight-neighbours")},
    )
    parser.add_argument(
        "--threshold",
        type=bounded_type("threshold", float, THRESHOLD_BOUNDS),
        default=None,
        help=f"fixed threshold instead of the calibrated one ({THRESHOLD_BOUNDS.describe()})",
    )


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, like every other error, and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_service_options(p: argparse.ArgumentParser) -> None:
    """What `serve` and `worker` share: where the store and the database are."""
    p.add_argument("--models-dir", default=None, help="model store (default ./models)")
    p.add_argument(
        "--database",
        default=None,
        help="SQLite database file (default MODELS_DIR/.state/jobs.sqlite)",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="the service's database as a URL, e.g. postgresql+psycopg://USER@HOST:5432/DB "
        "(PATCHSHIFT_DATABASE_URL; default: the SQLite file)",
    )
    p.add_argument(
        "--clip-checkpoint",
        default=None,
        help="local open_clip weights for uda-global jobs with encoder=clip",
    )
    p.add_argument(
        "--clip-model", default=None, help="architecture of --clip-checkpoint (default ViT-B-32)"
    )
    p.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="patchshift",
        description="Visual inspection that adapts to camera and lighting shifts.",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--batch-size", type=_batch_size_type(), default=16, help="images per forward pass (1..256)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--no-progress", action="store_true", help="never show progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="learn a model from normal images")
    p.add_argument(
        "--data",
        required=True,
        help="MVTec-layout ROOT (uses ROOT/train/good) or a folder of normal images",
    )
    p.add_argument("--out", required=True, help="model directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    _add_model_options(p)

    p = sub.add_parser("score", help="score images: score, threshold, verdict (and heatmaps)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument(
        "--heatmaps", default=None, metavar="OUT_DIR", help="write heatmap overlay PNGs here"
    )
    p.add_argument(
        "--heatmap-legend", action="store_true", help="add a colour legend under each overlay"
    )
    p.add_argument("--json", default=None, metavar="OUT.json", help="write results as JSON")
    p.add_argument("images", nargs="+", help="image files or folders")

    from patchshift.core.adapt import METHODS, RECOMMENDED, AdaptConfig
    from patchshift.core.adapt.adapt_config import ADAPT_OPTIONS
    from patchshift.core.uda import UDAConfig
    from patchshift.service.option_fields import add_flags

    p = sub.add_parser(
        "adapt", help="adapt a model to a new camera or lighting from unlabeled images"
    )
    p.add_argument("--model", required=True, help="source model directory")
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        help="unlabeled images (files or folders) of the new condition",
    )
    p.add_argument(
        "--out",
        required=True,
        help="new model directory (a complete model; its parent is the source)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--method",
        default=RECOMMENDED,
        choices=METHODS,
        metavar="METHOD",
        help=f"one of {', '.join(METHODS)} (default: {RECOMMENDED}, the recommended one)",
    )
    p.add_argument(
        "--source-images",
        nargs="+",
        default=None,
        help="uda-global only: normal images of the source domain",
    )
    add_flags(p, AdaptConfig, ("clusters",))  # uda and uda-global
    add_flags(p, AdaptConfig, ("min_majority", "min_separation"))  # uda
    p.add_argument(
        "--image-size", default=None, help="uda-global only: encoder input size (default 224)"
    )
    add_flags(p, UDAConfig, ("encoder",))  # uda-global only
    p.add_argument(
        "--clip-checkpoint",
        default=None,
        help="uda-global --encoder clip: local open_clip weights file",
    )
    p.add_argument(
        "--clip-model",
        default=None,
        help="uda-global --encoder clip: its architecture, e.g. ViT-B-32 (default), or a JSON "
        "config",
    )
    add_flags(p, AdaptConfig, ADAPT_OPTIONS)
    p.add_argument(
        "--no-augment", action="store_true", help="plain copies instead of rotated/flipped views"
    )

    p = sub.add_parser(
        "serve", help="run the HTTP service (settings also from PATCHSHIFT_* environment variables)"
    )
    p.add_argument(
        "--host", default=None, help="bind address (default 127.0.0.1; 0.0.0.0 in containers)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    _add_service_options(p)
    p.add_argument(
        "--api-key",
        default=None,
        help="admin API key (prefer PATCHSHIFT_ADMIN_KEY: arguments show in ps)",
    )
    p.add_argument(
        "--read-key", default=None, help="read-scope API key (prefer PATCHSHIFT_READ_KEY)"
    )
    p.add_argument(
        "--auto-adapt",
        action="store_true",
        default=None,
        help="adapt by itself when drift persists",
    )

    p = sub.add_parser(
        "worker",
        help="run fit and adaptation jobs from the shared queue (PostgreSQL; any number of "
        "processes, on any machine that reaches the database and the model store)",
    )
    p.add_argument(
        "--host", default=None, help="bind address of the /metrics endpoint (default 127.0.0.1)"
    )
    p.add_argument(
        "--port", type=int, default=None, help="port of the /metrics endpoint (default 8000)"
    )
    _add_service_options(p)

    p = sub.add_parser(
        "eval", help="measure AUROC, pixel AUROC, AUPRO and F1 on a labelled MVTec-layout set"
    )
    p.add_argument("--model", required=True)
    p.add_argument(
        "--data", required=True, help="MVTec-layout ROOT (uses ROOT/test and ROOT/ground_truth)"
    )
    p.add_argument(
        "--corruption", default=None, help="gaussian_noise, defocus_blur, brightness or contrast"
    )
    p.add_argument("--severity", type=int, default=5, help="corruption severity 1-5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="OUT.json")
    from patchshift.core.engine.model_config import ModelConfig

    p = sub.add_parser(
        "calibrate",
        help="a new version whose threshold comes from images a person knows are good, of the "
        "condition the model meets",
    )
    p.add_argument("--model", required=True, help="model directory (e.g. an adapted version)")
    p.add_argument(
        "--images", required=True, nargs="+", help="known-good images (files or folders)"
    )
    p.add_argument("--out", required=True, help="new model directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    add_flags(p, ModelConfig, ("false_alarm_rate",))

    for command in sub.choices.values():
        command.set_defaults(
            parser=command
        )  # so a setting out of range is reported as this command's usage error
    return parser


def _normal_images(root: str) -> list[Path]:
    from patchshift.core.common.errors import DatasetError
    from patchshift.core.common.images import list_images
    from patchshift.core.evaluation.data import train_images

    if (Path(root) / "train" / "good").is_dir():
        return train_images(root)
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: no such folder")
    images = list_images([root])
    if not images:
        raise DatasetError(f"{root} holds no images and no train/good folder")
    return images


def _images(arguments: list[str]) -> list[Path]:
    from patchshift.core.common.errors import InvalidImageError
    from patchshift.core.common.images import list_images

    paths = list_images(arguments)
    if not paths:
        raise InvalidImageError("no images found in " + ", ".join(arguments))
    return paths


def cmd_fit(args: argparse.Namespace, progress) -> int:
    from patchshift.core.artifact import save_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.engine.model_config import FIT_OPTIONS
    from patchshift.core.engine.patchcore import fit
    from patchshift.service.option_fields import given
    from patchshift.service.requests import check_fit_images, fit_config

    if Path(args.out).exists() and not args.overwrite:
        raise ArtifactError(f"{args.out} already exists; pass --overwrite to replace it")
    values = {
        "backbone": args.backbone,
        "weights": str(Path(args.weights).resolve()) if args.weights else None,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        **given(args, FIT_OPTIONS),
    }
    with usage_errors(args):
        config = fit_config(values, fixed_threshold=args.threshold is not None)
    images = _normal_images(args.data)
    check_fit_images(len(images))
    model = fit(images, config, device=args.device, threshold=args.threshold, progress=progress)
    save_model(model, args.out, overwrite=args.overwrite)
    print(
        f"fitted {args.out}: {len(images)} images, bank {model.bank.shape[0]} x "
        f"{model.bank.shape[1]}, "
        f"threshold {model.threshold:.4f}"
    )
    return 0


def cmd_score(args: argparse.Namespace, progress) -> int:
    import numpy as np

    from patchshift.core.artifact import load_model
    from patchshift.core.common.fileio import atomic_write_bytes
    from patchshift.core.common.images import iter_batches, open_image
    from patchshift.core.engine.visualize import heatmap_png

    model = load_model(args.model, device=args.device)
    paths = _images(args.images)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir is not None and not model.gives_heatmaps:
        from patchshift.core.common.errors import ConfigError

        raise ConfigError(
            f"{args.model} is a {model.kind} model, a global detector: it gives scores but no "
            "heatmaps"
        )
    used_names: set[str] = set()
    results = []
    for batch, sizes, start in iter_batches(paths, model.config.image_size, args.batch_size):  # noqa: B007
        scored = model.score(batch)
        for i, score in enumerate(scored.scores.cpu().numpy()):
            path = paths[start + i]
            entry = {
                "file": str(path),
                "score": float(score),
                "threshold": model.threshold,
                "anomalous": bool(score > model.threshold),
            }
            if heat_dir is not None:
                picture = heatmap_png(
                    np.asarray(open_image(path)),
                    scored.anomaly_maps[i].cpu().numpy(),
                    model.threshold,
                    args.heatmap_legend,
                )
                name = f"{path.stem}_heatmap.png"
                n = 2
                while name in used_names:
                    name, n = f"{path.stem}_{n}_heatmap.png", n + 1
                used_names.add(name)
                atomic_write_bytes(heat_dir / name, picture)
                entry["heatmap"] = str(heat_dir / name)
            results.append(entry)
            print(
                f"{entry['file']}\t{entry['score']:.4f}\t{model.threshold:.4f}\t"
                f"{'ANOMALOUS' if entry['anomalous'] else 'ok'}"
            )
        progress("score", start + len(batch), len(paths))
    if args.json:
        document = {"model": str(args.model), "threshold": model.threshold, "results": results}
        atomic_write_bytes(args.json, json.dumps(document, indent=2).encode())
    return 0


def cmd_adapt(args: argparse.Namespace, progress) -> int:
    from patchshift.core.adapt import adapt, get_adapter
    from patchshift.core.adapt.adapt_config import ADAPT_OPTIONS
    from patchshift.core.adapt.uda_adapter import UDA_GLOBAL_OPTIONS, UDA_OPTIONS
    from patchshift.core.artifact import load_model, save_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.service.option_fields import given
    from patchshift.service.requests import adaptation_config, check_adaptation_images

    if Path(args.out).exists() and not args.overwrite:
        raise ArtifactError(f"{args.out} already exists; pass --overwrite to replace it")
    adapter = get_adapter(args.method)
    settings = given(args, dict.fromkeys((*ADAPT_OPTIONS, *UDA_OPTIONS, *UDA_GLOBAL_OPTIONS)))
    if args.no_augment:
        settings["augment"] = "none"
    model = load_model(args.model, device=args.device)
    with usage_errors(args):
        cfg = adaptation_config(adapter, model, str(args.model), settings)
    images = _images(args.images)
    source = _images(args.source_images) if args.source_images else None
    check_adaptation_images(adapter, len(images), len(source or ()))
    adapted, report = adapt(model, images, cfg, progress=progress, source_images=source)
    save_model(adapted, args.out, overwrite=args.overwrite)
    extra = "" if adapted.gives_heatmaps else " (a global detector: scores, no heatmaps)"
    print(
        f"adapted {args.model} -> {args.out} with {cfg.method}: {report.n_images} images, "
        f"{report.steps} steps, "
        f"{report.seconds:.1f} s; threshold {model.threshold:.4f} -> {adapted.threshold:.4f}{extra}"
        + (f"\n  {report.message}" if report.message else "")
        + (f"\n  levels: {report.details['levels']}" if "levels" in report.details else "")
        + (f"\n  filter: {report.details['filter']}" if "filter" in report.details else "")
        + (
            f"\n  threshold: {report.details['threshold_note']}"
            if "threshold_note" in report.details
            else ""
        )
        + (
            f"\n  threshold: {report.threshold.note}"
            if report.threshold is not None
            and report.threshold.note
            and report.threshold.note != report.details.get("threshold_note")
            else ""
        )
    )
    return 0


def cmd_eval(args: argparse.Namespace, progress) -> int:
    from patchshift.core.artifact import load_model
    from patchshift.core.common.fileio import atomic_write_bytes
    from patchshift.core.evaluation.data import labelled_samples
    from patchshift.core.evaluation.evaluate import asked_false_alarm_rate, evaluate

    model = load_model(args.model, device=args.device)
    samples = labelled_samples(args.data)
    result = evaluate(
        model,
        samples,
        args.corruption,
        args.severity if args.corruption else None,
        args.seed,
        progress,
    )
    shift = f" under {args.corruption} severity {args.severity}" if args.corruption else ""
    print(f"{args.data}{shift}: {result.n_images} images ({result.n_anomalous} anomalous)")
    print(
        f"  image AUROC {result.image_auroc:.4f}  F1 {result.f1:.4f}  at threshold "
        f"{result.threshold:.4f}: "
        f"false alarms {result.false_alarm_rate:.1%} of good images, recall {result.recall:.1%} "
        "of defective ones"
    )
    print(
        f"  oracle threshold {result.oracle_threshold:.4f} (at most "
        f"{asked_false_alarm_rate(model):.1%} of these good images flagged): "
        f"recall {result.oracle_recall:.1%}; the stored threshold catches "
        + (
            f"{result.recall / result.oracle_recall:.0%} of that"
            if result.oracle_recall > 0
            else "what it can"
        )
    )
    if result.pixel_auroc == result.pixel_auroc:
        print(f"  pixel AUROC {result.pixel_auroc:.4f}  AUPRO {result.aupro:.4f}")
    elif not model.gives_heatmaps:
        print(f"  pixel metrics: none ({model.kind} is a global detector)")
    else:
        print(
            f"  pixel metrics need a ground-truth mask for every defective image "
            f"({result.n_anomalous - result.n_masks} of {result.n_anomalous} have none); image "
            "metrics above"
        )
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result.to_dict(), indent=2).encode())
    return 0


def cmd_calibrate(args: argparse.Namespace, progress) -> int:
    from patchshift.core.artifact import load_model, save_model
    from patchshift.core.common.errors import ArtifactError
    from patchshift.core.common.images import iter_batches
    from patchshift.core.engine.recalibration import calibration_rate, recalibrated

    if Path(args.out).exists() and not args.overwrite:
        raise ArtifactError(f"{args.out} already exists; pass --overwrite to replace it")
    model = load_model(args.model, device=args.device)
    paths = _images(args.images)
    rate = calibration_rate(model, len(paths), args.false_alarm_rate)

    def batches():
        for batch, _, start in iter_batches(paths, model.config.image_size, args.batch_size):
            yield batch
            progress("score", start + len(batch), len(paths))

    derived, estimate = recalibrated(model, batches(), rate)
    save_model(derived, args.out, overwrite=args.overwrite)
    print(
        f"calibrated {args.model} -> {args.out} on {len(paths)} known-good images: threshold "
        f"{model.threshold:.4f} -> {derived.threshold:.4f}\n  threshold: {estimate.note}"
    )
    return 0


def _service_settings(args: argparse.Namespace, **extra):
    """The service's settings: the command's flags over PATCHSHIFT_* variables; one-line errors."""
    from pydantic import ValidationError

    from patchshift.core.common.errors import ConfigError
    from patchshift.service.settings import Settings

    overrides = {
        "host": args.host,
        "port": args.port,
        "models_dir": args.models_dir,
        "database": args.database,
        "database_url": args.database_url,
        "log_level": args.log_level,
        "clip_checkpoint": args.clip_checkpoint,
        "clip_model": args.clip_model,
        **extra,
    }
    if args.device != "auto":
        overrides["device"] = args.device
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from None
    logging.getLogger("patchshift").setLevel(settings.log_level.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(settings.log_level.upper())
    return settings


def cmd_serve(args: argparse.Namespace, progress) -> int:
    import uvicorn

    from patchshift.service.app import create_app
    from patchshift.service.auth import Keys

    settings = _service_settings(
        args, admin_key=args.api_key, read_key=args.read_key, auto_adapt=args.auto_adapt
    )
    Keys.from_settings(settings)  # a bad keys file is reported here, before the server starts
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace, progress) -> int:
    import asyncio
    import signal

    from prometheus_client import start_http_server

    from patchshift.core.common.errors import ConfigError
    from patchshift.service.prometheus import ServiceMetrics
    from patchshift.service.runtime import Runtime

    settings = _service_settings(args, run_jobs=True)
    if not settings.database_address.startswith("postgresql"):
        raise ConfigError(
            "a worker pool shares its queue through PostgreSQL: set PATCHSHIFT_DATABASE_URL "
            "(or --database-url); on SQLite, `patchshift serve` runs the jobs itself"
        )
    metrics = ServiceMetrics()
    runtime = Runtime.build(settings, metrics)
    runtime.start(run_jobs_here=False)
    queue = runtime.worker.queue

    async def serve_metrics_once_ready() -> None:
        """/metrics answers once the worker listens for jobs: it doubles as readiness."""
        while not queue.ready():
            await asyncio.sleep(0.1)
        start_http_server(settings.port, addr=settings.host, registry=metrics.registry)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, queue.stop_soon)
        announce = asyncio.create_task(serve_metrics_once_ready())
        await queue.run()
        announce.cancel()

    logging.getLogger("patchshift.service").info(
        "worker: jobs from %s, models in %s, metrics on %s:%d",
        runtime.jobs.engine.url.render_as_string(hide_password=True),
        settings.models_dir,
        settings.host,
        settings.port,
    )
    try:
        asyncio.run(run())
    finally:
        runtime.stop()
    return 0


@contextmanager
def usage_errors(args: argparse.Namespace) -> Iterator[None]:
    """A setting out of its range is a usage error (exit 2), like a malformed flag."""
    from patchshift.core.common.errors import ConfigError

    try:
        yield
    except ConfigError as exc:
        args.parser.error(str(exc))


def _batch_size_type():
    from patchshift.core.common.options import options_of
    from patchshift.core.engine.model_config import ModelConfig
    from patchshift.service.option_fields import bounded_type

    return bounded_type("batch_size", int, options_of(ModelConfig)["batch_size"][1])


COMMANDS = {
    "serve": cmd_serve,
    "worker": cmd_worker,
    "fit": cmd_fit,
    "score": cmd_score,
    "adapt": cmd_adapt,
    "eval": cmd_eval,
    "calibrate": cmd_calibrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    long_running = args.command in ("serve", "worker")  # their logs are read afterwards
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=("%(asctime)s " if long_running else "") + "%(levelname)s %(name)s: %(message)s",
    )
    from patchshift.core.common.errors import PatchshiftError
    from patchshift.service.progress_bars import ProgressBars

    progress = ProgressBars(disable=True if args.no_progress else None)
    try:
        return COMMANDS[args.command](args, progress)
    except PatchshiftError as exc:
        progress.close()
        print(f"patchshift {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print(f"patchshift {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        progress.close()


if __name__ == "__main__":
    sys.exit(main())
