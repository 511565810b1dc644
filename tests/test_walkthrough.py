"""The README's walkthrough runs as written, on the sample product that ships with the repository:
the HTTP block against the real server (uvicorn on 127.0.0.1), the CLI block in a fresh folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from service_helpers import Server

ROOT = Path(__file__).resolve().parents[1]


def readme_block(name: str) -> str:
    """The bash block that follows `<!-- walkthrough: NAME -->` in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- walkthrough: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README.md has no walkthrough block {name!r}"
    return match.group(1)


def run_bash(block: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "2", **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr}"
    return done.stdout


def test_the_http_walkthrough_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("the README's walkthrough needs curl (Debian package curl)")
    server = Server(tmp_path / "models").start()
    try:
        out = run_bash(readme_block("http"), ROOT, {"API": server.url})
    finally:
        server.stop()
    answers = [json.loads(line) for line in out.splitlines() if line.strip()]
    fit, scored, shifted, adapted, review, threshold, rollback = answers
    assert fit["status"] == "succeeded" and fit["result_version"] == "v1"
    assert len(scored["results"]) == 20 and len(shifted["results"]) == 10
    assert adapted["status"] == "succeeded" and adapted["result_version"] == "v2"
    estimate = adapted["result"]["threshold_estimate"]
    assert estimate["note"] and "gate" in adapted["result"]
    assert review["version"] == "v2" and len(review["results"]) == 20
    assert threshold["active_version"] == "v3"
    assert rollback["active_version"] == "v1"


def test_the_cli_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "docs").symlink_to(ROOT / "docs")  # the sample, as seen from the repository root
    bin_dir = str(Path(sys.executable).parent)
    out = run_bash(readme_block("cli"), tmp_path, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert (tmp_path / "models/screws/v1/manifest.json").is_file()
    assert (tmp_path / "models/screws/v2/manifest.json").is_file()
    assert len(list((tmp_path / "heatmaps").glob("*_heatmap.png"))) == 10
    assert out.count("image AUROC") == 3
