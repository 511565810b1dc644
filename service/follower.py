"""Keeps this replica serving the shared active version of every model.

Every replica reads the active versions from the database: at once when PostgreSQL notifies an
activation (LISTEN patchshift_activation), and every `interval` seconds regardless, so a lost
notification, a restart of the database or a SQLite database shared by processes on one machine
heal by themselves. A model activated elsewhere is loaded here and swapped in whole; a request is
scored by the version that was active when it arrived.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from patchshift.core.common.errors import PatchshiftError
from patchshift.service.activation_log import CHANNEL
from patchshift.service.database import libpq_url
from patchshift.service.http_errors import ServiceError
from patchshift.service.lifecycle import Lifecycle

log = logging.getLogger("patchshift.service")
RETRY_SECONDS = 1.0


class Follower:
    def __init__(self, lifecycle: Lifecycle, engine: Engine, interval: float) -> None:
        self.lifecycle = lifecycle
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._failed: dict[str, str] = {}  # model -> the shared version that failed here
        self._thread = threading.Thread(target=self._run, name="patchshift-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def sync(self) -> None:
        """Serve every model's shared active version; forget models deleted elsewhere. A version
        that cannot be served here is reported once and tried again when the shared one changes."""
        shared = self.lifecycle.log.current()
        serving = self.lifecycle.serving
        for name, version in shared.items():
            served = serving.active(name)
            if (served is not None and served.version == version) or self._failed.get(
                name
            ) == version:
                continue
            try:
                self.lifecycle.follow(name, version)
                self._failed.pop(name, None)
            except (PatchshiftError, ServiceError) as exc:  # missing here, or cannot load
                self._failed[name] = version
                log.error("model %s: cannot serve version %s here: %s", name, version, exc)
                serving.failed(name, str(exc))
        for name in serving.names():
            if name not in shared and not self.lifecycle.store.exists(name):
                self.lifecycle.follow(name, None)
                self._failed.pop(name, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.engine.dialect.name == "postgresql":
                    self._listen()
                else:
                    self.sync()
                    self._stop.wait(self.interval)
            except Exception as exc:  # the database went away: reconnect after a short pause
                log.warning("following the active versions: %s; retrying", exc)
                self._stop.wait(min(self.interval, RETRY_SECONDS))

    def _listen(self) -> None:
        """Sync on every notification and every `interval` seconds, on one listening connection."""
        import psycopg

        with psycopg.connect(libpq_url(self.engine), autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.sync()  # what changed while nobody listened
            synced = time.monotonic()
            while not self._stop.is_set():
                # wake at least every second, so stop() never waits long
                notified = any(True for _ in conn.notifies(timeout=1.0, stop_after=1))
                if notified or time.monotonic() - synced >= self.interval:
                    self.sync()
                    synced = time.monotonic()
