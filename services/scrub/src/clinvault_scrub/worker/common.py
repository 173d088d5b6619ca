"""What the scrub jobs share: the engine off the event loop, attempt-bound object ids, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_scrub.engine import ScrubResult
from clinvault_scrub.worker.engine_call import run_engine
from clinvault_shared.db.models import BlobObject
from clinvault_shared.faults import is_transient
from clinvault_shared.queue import RetryLater
from clinvault_shared.runtime import Runtime, WorkerContext

logger = logging.getLogger("clinvault.worker")
T = TypeVar("T")
# A released lease: older than any staleness threshold, so the next run may claim at once.
RELEASED = datetime(2000, 1, 1, tzinfo=UTC)


def runtime_of(ctx: WorkerContext | dict[str, Any]) -> Runtime:
    runtime: Runtime = ctx["runtime"]
    return runtime


def stale_before(runtime: Runtime) -> datetime:
    """Work whose row was not touched since then is presumed lost (its worker died)."""
    return datetime.now(UTC) - timedelta(seconds=runtime.settings.stale_work_seconds)


def retry_delay(ctx: WorkerContext | dict[str, Any]) -> float:
    """Exponential backoff for transient faults: 1, 2, 4 ... up to 30 seconds."""
    return float(min(30, 2 ** max(0, int(ctx.get("job_try", 1)) - 1)))


@asynccontextmanager
async def transient_faults_retry(
    ctx: WorkerContext | dict[str, Any], on_transient: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[None]:
    """Turn database/queue/blob outages into `RetryLater`; anything else propagates."""
    try:
        yield
    except RetryLater:
        raise
    except Exception as exc:
        if not is_transient(exc):
            raise
        # Where it came from (file and line only: exception text may carry data).
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
        logger.warning("transient %s at %s; retrying", type(exc).__name__, where)
        if on_transient is not None:
            with contextlib.suppress(Exception):
                await on_transient()
        raise RetryLater(retry_delay(ctx)) from None


def attempt_object_id(kind: str, owner_id: str, attempt: int) -> str:
    """The object id a given attempt writes: known before the write, so a later attempt can
    remove what a killed one left behind (no orphan ciphertext)."""
    digest = hashlib.sha256(f"{kind}:{owner_id}:{attempt}".encode()).hexdigest()
    return f"obj_{digest[:32]}"


async def run_scrub(
    ctx: WorkerContext | dict[str, Any],
    data: bytes,
    profile: str,
    *,
    redactions: list[dict[str, Any]] | None = None,
    keep: list[dict[str, Any]] | None = None,
    hints: dict[str, str] | None = None,
) -> ScrubResult:
    """Run the engine in the process pool, off the event loop."""
    runtime = runtime_of(ctx)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        ctx.get("cpu_pool"),
        run_engine,
        data,
        profile,
        redactions or [],
        keep or [],
        hints or {},
        runtime.settings.max_upload_bytes,
        runtime.settings.max_image_pixels,
    )


async def read_hints(
    runtime: Runtime, session: AsyncSession, object_id: str | None
) -> dict[str, str]:
    """The decrypted identifier hints (kept in memory only for the engine call)."""
    if object_id is None:
        return {}
    raw = json.loads(await runtime.blobs.read_all(session, object_id))
    return {str(k): str(v) for k, v in raw.items() if v}


async def discard_objects(
    runtime: Runtime, session: AsyncSession, object_ids: list[str], *, keep: set[str] | None = None
) -> int:
    """Shred objects that must not outlive this job: tombstone a registered one; delete the
    ciphertext of one that a killed run wrote but never registered. Returns how many."""
    count = 0
    for object_id in object_ids:
        if keep and object_id in keep:
            continue
        row = await session.get(BlobObject, object_id)
        if row is not None:
            if row.wrapped_dek is not None:
                await runtime.blobs.delete(session, object_id)
                count += 1
            continue
        if await runtime.blobs.discard_unregistered(object_id):
            count += 1
    return count
