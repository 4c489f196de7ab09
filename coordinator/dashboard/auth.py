"""Who may use the dashboard: an admin token, an optional viewer token, login throttling.

Tokens come from a flag, a file (first line) or the environment, in that order. They are
compared in constant time, never logged or printed, and never accepted in a URL (query
strings end up in logs): clients send ``Authorization: Bearer TOKEN`` or log in through the
form, which sets a signed session cookie.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_client.errors import ConfigError

ADMIN, VIEWER = "admin", "viewer"
ENV_ADMIN = "EDGEFL_DASHBOARD_ADMIN_TOKEN"
ENV_VIEWER = "EDGEFL_DASHBOARD_VIEWER_TOKEN"
MIN_TOKEN_CHARS = 8  # shorter tokens are guessable through the login form
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class AuthConfig:
    """The tokens; ``repr`` shows neither."""

    admin_token: str = field(repr=False)
    viewer_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, token in (("admin", self.admin_token), ("viewer", self.viewer_token)):
            if token is None:
                continue
            if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or token != token.strip():
                raise ConfigError(
                    f"the dashboard {name} token must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} "
                    "characters without surrounding spaces"
                )
        if self.viewer_token is not None and hmac.compare_digest(
            self.admin_token.encode(), self.viewer_token.encode()
        ):
            raise ConfigError("the dashboard admin and viewer tokens must differ")

    def role_for(self, token: str | None) -> str | None:
        """``admin``, ``viewer`` or None for a wrong or missing token (constant time)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        given = token.encode("utf-8", "replace")
        is_admin = hmac.compare_digest(given, self.admin_token.encode())
        is_viewer = self.viewer_token is not None and hmac.compare_digest(
            given, self.viewer_token.encode()
        )
        return ADMIN if is_admin else VIEWER if is_viewer else None

    @classmethod
    def resolve(
        cls,
        *,
        admin_token: str | None = None,
        admin_token_file: str | None = None,
        viewer_token: str | None = None,
        viewer_token_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> AuthConfig:
        """Flag > token file > environment. An admin token is required."""
        env = os.environ if environ is None else environ
        admin = _pick(admin_token, admin_token_file, env.get(ENV_ADMIN), "admin")
        viewer = _pick(viewer_token, viewer_token_file, env.get(ENV_VIEWER), "viewer")
        if admin is None:
            raise ConfigError(
                "the dashboard needs an admin token: --admin-token-file FILE, "
                f"{ENV_ADMIN}=... or --admin-token"
            )
        return cls(admin, viewer)


def _pick(flag: str | None, path: str | None, env: str | None, what: str) -> str | None:
    if flag:
        return flag
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"cannot read the {what} token file {path}: {reason}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"the {what} token file {path} is empty")
        return token
    return env.strip() if env and env.strip() else None


class LoginThrottle:
    """At most ``max_failures`` wrong tokens per client address in ``window_s`` seconds."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0) -> None:
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client)) >= self.max_failures

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures[client] = [*self._recent(client), time.monotonic()]
            if len(self._failures) > 10_000:  # bound memory under a scan from many addresses
                self._failures.clear()

    def _recent(self, client: str) -> list[float]:
        cutoff = time.monotonic() - self.window_s
        return [t for t in self._failures.get(client, []) if t > cutoff]
