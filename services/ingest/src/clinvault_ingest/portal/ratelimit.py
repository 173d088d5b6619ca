"""A fixed-window request limiter per key (token hash, client address), kept in this process.

Each API replica counts on its own, so the effective limit is per replica; that bounds abuse of one
link or from one address without a shared store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    limit: int
    window_seconds: float
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> bool:
        """Count one request for `key`; False once `limit` is reached within the window."""
        now = time.monotonic() if now is None else now
        started, count = self._windows.get(key, (now, 0))
        if now - started >= self.window_seconds:
            started, count = now, 0
        if count >= self.limit:
            self._windows[key] = (started, count)
            return False
        self._windows[key] = (started, count + 1)
        if len(self._windows) > 10_000:
            self._forget_old(now)
        return True

    def _forget_old(self, now: float) -> None:
        for key, (started, _) in list(self._windows.items()):
            if now - started >= self.window_seconds:
                del self._windows[key]
