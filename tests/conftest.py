"""Shared fixtures: small generated images in the MVTec AD layout and a fitted tiny model."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 96  # generated images are SIZE x SIZE; the tiny model uses the same input size


def normal_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A regular woven texture (diagonal gratings) with a little sensor noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    texture = (
        0.5
        + 0.2 * np.sin(2 * np.pi * (x + y) / 12 + phase[0])
        + 0.2 * np.sin(2 * np.pi * (x - y) / 12 + phase[1])
    )
    rgb = np.stack([texture, texture * 0.9, texture * 0.8], axis=-1)
    rgb += rng.normal(0, 0.02, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def plant_defect(
    image: np.ndarray, rng: np.random.Generator, side: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Paint a dark scratch-like square blob; returns (image, boolean mask)."""
    size = image.shape[0]
    top, left = rng.integers(side, size - 2 * side, 2)
    out = image.copy()
    out[top : top + side, left : left + side] = (
        rng.uniform(0, 0.15, (side, side, 1)) * 255
    ).astype(np.uint8)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[top : top + side, left : left + side] = True
    return out, mask


def write_dataset(
    root: Path, n_train: int = 24, n_good: int = 6, n_defect: int = 6, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for folder in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(normal_image(rng)).save(root / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(normal_image(rng)).save(root / "test/good" / f"{i:03d}.png")
    for i in range(n_defect):
        image, mask = plant_defect(normal_image(rng), rng)
        Image.fromarray(image).save(root / "test/blob" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            root / "ground_truth/blob" / f"{i:03d}_mask.png"
        )
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "widget")


@pytest.fixture(scope="session")
def tiny_config():
    from patchshift.core.engine.model_config import ModelConfig

    # The former border average: on 96-px images a third to a half of the feature cells are border
    # cells, and zero borders (the default for real inputs, docs/design-history.md, "Borders")
    # change the mechanisms these fixtures were built to show. The defaults are tested at 256 px in
    # tests/test_patchcore.py (a planted defect found; the k-fold false-alarm rate on fresh
    # normals). Lite0, the default before Lite1: the cheapest bundled backbone keeps these fixtures
    # fast.
    return ModelConfig(
        backbone="tf_efficientnet_lite0",
        image_size=(SIZE, SIZE),
        feature_dim=64,
        coreset_ratio=0.25,
        batch_size=8,
        holdout_fraction=0.2,
        neighbourhood_border="inside",
    )


@pytest.fixture(scope="session")
def fitted(dataset: Path, tiny_config):
    from patchshift.core.engine.patchcore import fit
    from patchshift.core.evaluation.data import train_images

    return fit(train_images(dataset), tiny_config, device="cpu")


@pytest.fixture(scope="session")
def saved_model(fitted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from patchshift.core.artifact import save_model

    return save_model(fitted, tmp_path_factory.mktemp("models") / "widget-v1")


def texture_defect(image: np.ndarray, rng: np.random.Generator, side: int = 20) -> np.ndarray:
    """Replace a square by a finer vertical grating: same brightness, different structure."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    grating = 0.5 + 0.35 * np.sin(2 * np.pi * x / 5)
    top, left = rng.integers(8, image.shape[0] - side - 8, 2)
    out = image.copy()
    out[top : top + side, left : left + side] = (
        np.stack([grating, grating * 0.9, grating * 0.8], -1) * 255
    ).astype(np.uint8)
    return out


@pytest.fixture()
def store(tmp_path: Path, saved_model: Path) -> Path:
    """A model store holding one model, widget, with its fitted version v1."""
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    return models


POSTGRES = os.environ.get("PATCHSHIFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the server at PATCHSHIFT_TEST_POSTGRES, dropped afterwards
    (skipped where none answers, unless PATCHSHIFT_REQUIRE_POSTGRES=1, as in CI)."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("PATCHSHIFT_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {exc}")
    name = f"patchshift_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path):
    """The service's database on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.sqlite'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture()
def restartable_postgres():
    """A PostgreSQL server of the test's own (Debian's binaries, trust auth, loopback), and a
    function that restarts it; as root the server runs as the postgres user."""
    import subprocess
    import tempfile

    import psycopg

    bindir = Path("/usr/lib/postgresql/15/bin")
    if not (bindir / "initdb").exists():
        if os.environ.get("PATCHSHIFT_REQUIRE_POSTGRES") == "1":
            raise RuntimeError("PostgreSQL 15's server binaries are missing")
        pytest.skip("no PostgreSQL 15 server binaries to start a server of the test's own")
    folder = Path(tempfile.mkdtemp(prefix="patchshift-pg-"))
    folder.chmod(0o755)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "server.log"

    def ctl(*args: str) -> None:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", *args],
            check=True,
            capture_output=True,
        )

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    ctl("-o", options, "start")
    try:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True
        ) as admin:
            admin.execute("CREATE DATABASE patchshift")
        yield (
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/patchshift",
            lambda: ctl("-o", options, "-m", "fast", "restart"),
        )
    finally:
        ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def postgres_url():
    """A fresh PostgreSQL database only (what is shared between processes)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture()
def client(store: Path, database_url: str):
    """The app in process over `store` (at most 4 files per score request), on each database."""
    from fastapi.testclient import TestClient

    from patchshift.service.app import create_app
    from patchshift.service.settings import Settings

    settings = Settings(models_dir=store, device="cpu", max_files=4, database_url=database_url)
    app = create_app(settings)
    with TestClient(app) as test_client:
        yield test_client


def save_tiny_uda(path: Path):
    """A small UDA version (a global detector fitted on 8 normal images at 64 px), saved at
    `path`."""
    import torch

    from patchshift.core.artifact import save_model
    from patchshift.core.uda import UDAConfig
    from patchshift.core.uda.train import fit_uda

    rng = np.random.default_rng(0)
    source = (
        torch.stack(
            [torch.from_numpy(normal_image(rng)).permute(2, 0, 1) for _ in range(8)]
        ).float()
        / 255
    )
    uda, _ = fit_uda(
        source[..., :64, :64],
        None,
        UDAConfig(image_size=64, epochs=1, batch_size=4, embedding_dim=16),
        device="cpu",
    )
    save_model(uda, path)
    return uda
