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


def bash(block: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """The block started under `bash -euo pipefail`, on one thread of the two cores: the two
    walkthroughs run side by side."""
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, f"exit {process.returncode}\n{out[-3000:]}\n{err}"
    return out


def test_the_readme_walkthroughs_run_as_written(tmp_path: Path) -> None:
    """Both blocks at once: the CLI's in a fresh folder, the HTTP one against the real server."""
    if shutil.which("curl") is None:
        pytest.fail("the README's walkthrough needs curl (Debian package curl)")
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    (cli_dir / "docs").symlink_to(ROOT / "docs")  # the sample, as seen from the repository root
    bin_dir = str(Path(sys.executable).parent)
    cli = bash(readme_block("cli"), cli_dir, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    server = Server(tmp_path / "models", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        http_out = finished(bash(readme_block("http"), ROOT, {"API": server.url}))
    finally:
        server.stop()
        cli_out = finished(cli)

    answers = [json.loads(line) for line in http_out.splitlines() if line.strip()]
    fit, scored, shifted, adapted, review, threshold, rollback = answers
    assert fit["status"] == "succeeded" and fit["result_version"] == "v1"
    assert len(scored["results"]) == 20 and len(shifted["results"]) == 10
    assert adapted["status"] == "succeeded" and adapted["result_version"] == "v2"
    estimate = adapted["result"]["threshold_estimate"]
    assert estimate["note"] and "gate" in adapted["result"]
    assert review["version"] == "v2" and len(review["results"]) == 20
    assert threshold["active_version"] == "v3"
    assert rollback["active_version"] == "v1"

    assert (cli_dir / "models/screws/v1/manifest.json").is_file()
    assert (cli_dir / "models/screws/v2/manifest.json").is_file()
    assert len(list((cli_dir / "heatmaps").glob("*_heatmap.png"))) == 10
    assert cli_out.count("image AUROC") == 3
