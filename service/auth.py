"""API keys: `Authorization: Bearer <key>`, an admin scope and a read scope. Keys are never
logged."""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

from fastapi import Request

from patchshift.core.common.errors import ConfigError
from patchshift.service.http_errors import Forbidden, Unauthorized
from patchshift.service.settings import Settings

log = logging.getLogger("patchshift.service")
ADMIN, READ = "admin", "read"
CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Keys:
    admin: tuple[str, ...]
    read: tuple[str, ...]
    open_reads: bool

    @property
    def enabled(self) -> bool:
        return bool(self.admin or self.read)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        admin = [settings.admin_key.get_secret_value()] if settings.admin_key else []
        read = [settings.read_key.get_secret_value()] if settings.read_key else []
        if settings.keys_file:
            try:
                data = json.loads(settings.keys_file.read_text())
                admin += [str(k) for k in data.get("admin", [])]
                read += [str(k) for k in data.get("read", [])]
            except (OSError, ValueError, AttributeError) as exc:
                raise ConfigError(
                    f"keys file {settings.keys_file} is unreadable or not JSON "
                    f'{{"admin": [...], "read": [...]}} ({exc})'
                ) from None
        if any(len(k) < 8 for k in admin + read):
            raise ConfigError("API keys must be at least 8 characters long")
        return cls(tuple(k for k in admin if k), tuple(k for k in read if k), settings.open_reads)

    def scope_of(self, key: str) -> str | None:
        # compare against every key (constant time each) so timing does not reveal which matched
        is_admin = any([hmac.compare_digest(key.encode(), k.encode()) for k in self.admin])
        is_read = any([hmac.compare_digest(key.encode(), k.encode()) for k in self.read])
        return ADMIN if is_admin else READ if is_read else None


MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"


def _presented_scope(request: Request, keys: Keys) -> str | None:
    """The scope of the request's key; None when it carries none; 401 for a key that is not one."""
    kind, _, token = request.headers.get("authorization", "").partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        return None
    granted = keys.scope_of(token.strip())
    if granted is None:
        raise Unauthorized("invalid API key", headers=CHALLENGE)
    return granted


def granted_scope(request: Request) -> str:
    """What the request may do: admin or read by its key, read without a key where reads are
    open, admin for everyone when no key is configured; no key otherwise is 401."""
    keys: Keys = request.app.state.keys
    if not keys.enabled:
        return ADMIN
    granted = _presented_scope(request, keys)
    if granted is None and not keys.open_reads:
        raise Unauthorized(MISSING_KEY, headers=CHALLENGE)
    return granted or READ


def require(scope: str):
    """A FastAPI dependency: the request must carry a key with `scope` (admin keys can also
    read)."""

    def check(request: Request) -> None:
        keys: Keys = request.app.state.keys
        if not keys.enabled or (scope == READ and keys.open_reads):
            return
        granted = _presented_scope(request, keys)
        if granted is None:
            raise Unauthorized(MISSING_KEY, headers=CHALLENGE)
        if scope == ADMIN and granted != ADMIN:
            raise Forbidden(
                "this API key may read and score but not change models or jobs (admin scope needed)"
            )

    return check
