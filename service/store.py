"""The on-disk model store: MODELS_DIR/<model>/<version>/ (one artifact each) and <model>/ACTIVE.

Versions are immutable directories written atomically by core.artifact; ACTIVE is a one-line file
replaced atomically, so activation and rollback are a pointer swap that survives kill -9.
Without ACTIVE (a model directory laid out by hand or by `patchshift fit --out MODELS/NAME/v1`),
the newest version is active.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from patchshift.core.artifact import MANIFEST, Manifest, read_manifest
from patchshift.core.common.fileio import atomic_write_bytes
from patchshift.service.http_errors import Conflict, InvalidName, NotFound
from patchshift.service.names import NAME_MAX_LENGTH, NAME_PATTERN, NAME_RULE

NAME = re.compile(NAME_PATTERN)
ACTIVE = "ACTIVE"
VERSION = re.compile(r"^v(\d+)$")
# The store's own files live here, where no model name can reach (names start with a letter or
# digit).
STATE_DIR = ".state"


def check_name(value: str, what: str = "model name") -> str:
    if len(value) > NAME_MAX_LENGTH or not NAME.fullmatch(value):
        raise InvalidName(f"{what} {value!r} is invalid: {NAME_RULE}")
    return value


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def model_dir(self, name: str) -> Path:
        path = self.root / check_name(name)
        if path.exists() and not path.is_dir():
            raise InvalidName(
                f"model name {name!r} is taken by a file in the model store; choose another name"
            )
        return path

    def version_dir(self, name: str, version: str) -> Path:
        return self.model_dir(name) / check_name(version, "version")

    def models(self) -> list[str]:
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and NAME.fullmatch(p.name) and self.versions(p.name)
        )

    def exists(self, name: str) -> bool:
        return bool(self.versions(name))

    def versions(self, name: str) -> list[str]:
        """Complete versions, oldest first (a version directory is complete once its manifest
        exists)."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and NAME.fullmatch(p.name) and (p / MANIFEST).is_file()
        ]
        return sorted(found, key=_version_key)

    def manifest(self, name: str, version: str) -> Manifest:
        return read_manifest(self._manifest_path(name, version).parent)

    def identity(self, name: str, version: str) -> str:
        """What tells this version from any other of the same name: the digest of its manifest
        (a model deleted and made again starts from v1; its v1 is another version)."""
        return hashlib.sha256(self._manifest_path(name, version).read_bytes()).hexdigest()[:32]

    def _manifest_path(self, name: str, version: str) -> Path:
        path = self.version_dir(name, version) / MANIFEST
        if not path.is_file():
            raise NotFound(f"model {name!r} has no version {version!r}")
        return path

    def active(self, name: str) -> str | None:
        versions = self.versions(name)
        pointer = self.model_dir(name) / ACTIVE
        if pointer.is_file():
            chosen = pointer.read_text().strip()
            if chosen in versions:
                return chosen
        return versions[-1] if versions else None

    def set_active(self, name: str, version: str) -> None:
        if version not in self.versions(name):
            raise NotFound(f"model {name!r} has no version {version!r}")
        atomic_write_bytes(self.model_dir(name) / ACTIVE, (version + "\n").encode())

    def allocate_version(self, name: str) -> str:
        """The next free version name (v1, v2, ...); never reuses a name, even of a deleted
        version."""
        with self._lock:
            folder = self.model_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            numbers = [
                int(m.group(1))
                for p in folder.iterdir()
                if (m := VERSION.match(p.name.lstrip(".").split(".")[0]))
            ]
            counter = folder / ".last_version"
            if counter.is_file():
                numbers.append(int(counter.read_text().strip() or 0))
            version = f"v{max(numbers, default=0) + 1}"
            atomic_write_bytes(counter, version[1:].encode())
            return version

    def delete_version(self, name: str, version: str) -> None:
        if version not in self.versions(name):
            raise NotFound(f"model {name!r} has no version {version!r}")
        if self.active(name) == version:
            raise Conflict(
                f"version {version} is the active version of {name!r}; activate another version "
                "first"
            )
        self._remove(self.version_dir(name, version))

    def delete_model(self, name: str) -> None:
        if not self.exists(name):
            raise NotFound(f"no model named {name!r}")
        self._remove(self.model_dir(name))

    def _remove(self, path: Path) -> None:
        """Rename out of sight first, so a crash mid-delete never leaves a half version visible."""
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
        os.rename(path, trash / path.name)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_leftovers(self, older_than: float = 0.0) -> list[Path]:
        """Remove staging and trash directories that a killed process left behind (on a store
        shared with other processes, only those untouched for `older_than` seconds: another
        process may be writing one)."""
        removed = []
        cutoff = time.time() - older_than
        for parent in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
            if not parent.is_dir():
                continue
            for path in parent.iterdir():
                if (
                    path.is_dir()
                    and path.name.startswith(".")
                    and path.stat().st_mtime <= cutoff
                    and (
                        ".tmp-" in path.name
                        or ".old-" in path.name
                        or path.name.startswith(".trash-")
                    )
                ):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed


def _version_key(version: str) -> tuple[int, str]:
    match = VERSION.match(version)
    return (int(match.group(1)) if match else -1, version)
