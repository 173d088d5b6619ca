"""Helpers every ingest domain uses: OpenAPI error lists, audited refusals, tolerant enqueue."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NoReturn, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared import audit
from clinvault_shared.auth import Principal
from clinvault_shared.errors import ClinvaultError, NotFound
from clinvault_shared.runtime import Runtime
from clinvault_shared.web import ERROR_RESPONSES

logger = logging.getLogger("clinvault.ingest")
T = TypeVar("T")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI error responses of a route (401 and 503 apply to every route)."""
    return {code: ERROR_RESPONSES[code] for code in sorted({401, 503, *codes})}


async def refuse(
    session: AsyncSession,
    principal: Principal | None,
    *,
    tenant_id: str,
    action: str,
    error: ClinvaultError,
    object_id: str | None = None,
    patient_id: str | None = None,
    purpose: str | None = None,
    detail: dict[str, Any] | None = None,
) -> NoReturn:
    """Record the refusal in the audit chain (its own commit), then raise `error`."""
    await session.rollback()
    await audit.record(
        session,
        tenant_id=tenant_id,
        actor_key_id=principal.key_id if principal else None,
        action=action,
        outcome="refused",
        object_id=object_id,
        patient_id=patient_id,
        purpose=purpose,
        detail={"code": error.code, "status": error.status_code, **(detail or {})},
    )
    await session.commit()
    raise error


async def found_or_refuse(
    session: AsyncSession,
    principal: Principal,
    row: T | None,
    *,
    action: str,
    object_id: str,
    what: str,
) -> T:
    """The row, or an audited 404 (another tenant's object is answered as if it did not exist)."""
    if row is None:
        await refuse(
            session,
            principal,
            tenant_id=principal.tenant_id,
            action=action,
            object_id=object_id,
            error=NotFound(f"no such {what}"),
        )
    return row


async def enqueue(runtime: Runtime, function: str, object_id: str, *, job_id: str) -> None:
    """Enqueue after the commit; if the queue is down the row still says what to do, and the
    reconciler enqueues it later, so the request does not fail."""
    if runtime.queue is None:  # pragma: no cover - build_app always provides one
        return
    try:
        await runtime.queue.enqueue(function, object_id, job_id=job_id)
    except Exception as exc:
        # Whatever the queue's trouble (down, restarting: arq's WATCH/MULTI then fails with a
        # WatchError), the committed row is the ledger and the reconciler enqueues it later.
        logger.warning("enqueue of %s deferred to the reconciler: %s", function, type(exc).__name__)


async def discard_uncommitted(runtime: Runtime, object_ids: list[str]) -> None:
    """Delete ciphertext written for objects whose rows were never committed (no key exists for
    it anywhere, so this is tidiness, not secrecy)."""
    for object_id in object_ids:
        with contextlib.suppress(Exception):
            await runtime.blobs.discard_unregistered(object_id)
