"""Small pieces every consent domain uses: the clock, audit outcomes, route error responses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from clinvault_shared.web import ERROR_RESPONSES

AUDIT_OK = "ok"


def now() -> datetime:
    """The current time in UTC (services take `now` as a parameter where tests freeze it)."""
    return datetime.now(UTC)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of one route (401 always: every route needs a key)."""
    wanted = {401, *statuses}
    return {status: ERROR_RESPONSES[status] for status in sorted(wanted)}
