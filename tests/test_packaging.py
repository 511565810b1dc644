"""A regular (non-editable) install, as in the Docker image, must ship every package folder."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    for prefix, folder in setup["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((prefix, *relative)) in listed, (
                f"{init.parent} is not in [tool.setuptools] packages"
            )


def test_the_wheel_holds_the_product_and_no_study(tmp_path) -> None:
    """Studies run from a checkout; the installed package, its CLI and the image are the product."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("patchshift-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[1] for name in names if name.startswith("patchshift/")}
    assert packages == {"__init__.py", "core", "service"} or packages == {"core", "service"}
    assert not [name for name in names if "benchmark" in name]
    assert any(name.startswith("patchshift/service/console/") for name in names)


def test_the_cli_lists_product_commands_only() -> None:
    from patchshift.service.cli import COMMANDS, build_parser

    assert set(COMMANDS) == {"serve", "fit", "score", "adapt", "eval"}
    usage = build_parser().format_help()
    assert "bench" not in usage and all(command in usage for command in COMMANDS)
