"""A regular (non-editable) install, as in the Docker image, must ship every package folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns("__pycache__")


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
    source = tmp_path / "src"  # what the Dockerfile copies; the build leaves the checkout alone
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "core", "service"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": IGNORED} if copy is shutil.copytree else {}))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("patchshift-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[1] for name in names if name.startswith("patchshift/")}
    assert packages == {"__init__.py", "core", "service"} or packages == {"core", "service"}
    assert not [name for name in names if "benchmark" in name]
    assert any(name.startswith("patchshift/service/console/") for name in names)
    assert "patchshift/service/migrations/env.py" in names
    assert any(name.startswith("patchshift/service/migrations/versions/0001") for name in names)


def test_the_cli_lists_product_commands_only() -> None:
    from patchshift.service.cli import COMMANDS, build_parser

    assert set(COMMANDS) == {"serve", "worker", "fit", "score", "adapt", "eval", "calibrate"}
    usage = build_parser().format_help()
    assert "bench" not in usage and all(command in usage for command in COMMANDS)


def test_no_module_name_repeats() -> None:
    """A name means one thing: metrics.py, registry.py or config.py twice would mean two."""
    seen: dict[str, Path] = {}
    for folder in ("core", "service", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
            seen[path.name] = path
