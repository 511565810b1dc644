"""The API contract under a fuzzer: schemathesis (all checks) against the real server with an admin
key.

Bounded for CI (examples per operation and a fixed seed; PATCHSHIFT_FUZZ_EXAMPLES and
PATCHSHIFT_FUZZ_SEED widen or vary it). Any 5xx, undocumented status, schema or header mismatch,
accepted invalid input or refused valid input fails the test. The model under test stays present:
deleting a whole model is the one operation left out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from service_helpers import Server

ADMIN = "admin-key-for-the-fuzzer"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_contract_violation(
    tmp_path: Path, saved_model: Path, postgres_url: str
) -> None:
    """On PostgreSQL, the database of a scaled-out service (the routes are the same code on SQLite,
    where the route tests run them too)."""
    models = tmp_path / "models"
    shutil.copytree(saved_model, models / "widget" / "v1")
    env = {
        "PATCHSHIFT_ADMIN_KEY": ADMIN,
        "PATCHSHIFT_MAX_FILES": "8",
        "PATCHSHIFT_DATABASE_URL": postgres_url,
    }
    server = Server(models, env=env).start()
    try:
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--max-examples",
            os.environ.get("PATCHSHIFT_FUZZ_EXAMPLES", "10"),
            "--seed",
            os.environ.get("PATCHSHIFT_FUZZ_SEED", "20261126"),
            "--exclude-operation-id",
            "delete_model_v1_models__name__delete",
            "--no-shrink",
            "--output-truncate",
            "true",
            "--no-color",
            # one worker: CPython 3.11 can fail parsing source in concurrent threads (hypothesis
            # does, to describe strategies)
            "--workers",
            "1",
        ]
        # run in the test folder: hypothesis keeps an example database in its working directory
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1"},
        )
        (tmp_path / "schemathesis.txt").write_text(result.stdout + result.stderr)
        report = "\n".join(
            line[:400] for line in (result.stdout + result.stderr).splitlines()[-80:]
        )
        assert result.returncode == 0, report
        assert "passed" in report
        # whatever the fuzzer activated, deleted or re-thresholded, the store still serves a
        # version that loads whole
        from patchshift.core.artifact import load_model

        active = (models / "widget" / "ACTIVE").read_text().strip()
        assert load_model(models / "widget" / active, device="cpu").version == active
        server_log = server.log.read_text()
        assert "Traceback" not in server_log, server_log[-3000:]
    finally:
        server.stop()
