"""Every query the scrub jobs make. The row is the work ledger: `attempts` is the lease.

A run claims a row by incrementing `attempts` (only if the row is new, released, or its last run
went quiet for `stale_work_seconds`), and finishes it only if `attempts` still holds its number.
So two runs of one job (an arq retry and a reconciler re-enqueue after a worker was killed)
never both finish: the one that lost the lease discards its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.base import utcnow
from clinvault_shared.db.models import Authorization, Derivative, Image

TERMINAL_IMAGE = ("ready", "rejected", "deleted")
TERMINAL_DERIVATIVE = ("pending_review", "approved", "rejected", "revoked")


@dataclass(frozen=True)
class Claim:
    """`attempt` when this run holds the lease; otherwise why not (`done`, `busy`, `exhausted`)."""

    attempt: int | None
    outcome: str


async def claim_image(
    session: AsyncSession, image_id: str, *, stale_before: datetime, max_tries: int
) -> Claim:
    result = await session.execute(
        update(Image)
        .where(
            Image.id == image_id,
            Image.attempts < max_tries,
            or_(
                Image.status == "received",
                (Image.status == "processing") & (Image.updated_at < stale_before),
            ),
        )
        .values(status="processing", attempts=Image.attempts + 1, updated_at=utcnow())
        .returning(Image.attempts)
        .execution_options(synchronize_session=False)
    )
    attempt = result.scalar_one_or_none()
    if attempt is not None:
        return Claim(int(attempt), "claimed")
    row = (
        await session.execute(
            select(Image.status, Image.attempts, Image.updated_at).where(Image.id == image_id)
        )
    ).first()
    if row is None or row.status in TERMINAL_IMAGE:
        return Claim(None, "done")
    if row.attempts >= max_tries and (row.status == "received" or row.updated_at < stale_before):
        return Claim(None, "exhausted")
    return Claim(None, "busy")


async def get_image(session: AsyncSession, image_id: str) -> Image | None:
    return await session.get(Image, image_id, populate_existing=True)


async def finish_image(session: AsyncSession, image_id: str, attempt: int, **values: Any) -> bool:
    """Set the outcome if this run still holds the lease."""
    result = await session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status == "processing", Image.attempts == attempt)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def give_up_image(session: AsyncSession, image_id: str, reason: str) -> bool:
    """End an image whose tries are used up (only while it is still unfinished)."""
    result = await session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status.in_(("received", "processing")))
        .values(status="rejected", reason=reason, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def release_image(session: AsyncSession, image_id: str, attempt: int) -> None:
    """Hand the lease back after a transient fault so the retry may claim it at once."""
    await session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status == "processing", Image.attempts == attempt)
        .values(status="received")
        .execution_options(synchronize_session=False)
    )


async def stale_images(
    session: AsyncSession, stale_before: datetime, limit: int
) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(Image.id, Image.attempts)
        .where(Image.status.in_(("received", "processing")), Image.updated_at < stale_before)
        .order_by(Image.updated_at)
        .limit(limit)
    )
    return [(row.id, row.attempts) for row in rows]


async def claim_derivative(
    session: AsyncSession, derivative_id: str, *, stale_before: datetime, max_tries: int
) -> Claim:
    result = await session.execute(
        update(Derivative)
        .where(
            Derivative.id == derivative_id,
            Derivative.status == "processing",
            Derivative.attempts < max_tries,
            or_(Derivative.attempts == 0, Derivative.updated_at < stale_before),
        )
        .values(attempts=Derivative.attempts + 1, updated_at=utcnow())
        .returning(Derivative.attempts)
        .execution_options(synchronize_session=False)
    )
    attempt = result.scalar_one_or_none()
    if attempt is not None:
        return Claim(int(attempt), "claimed")
    row = (
        await session.execute(
            select(Derivative.status, Derivative.attempts, Derivative.updated_at).where(
                Derivative.id == derivative_id
            )
        )
    ).first()
    if row is None or row.status in TERMINAL_DERIVATIVE:
        return Claim(None, "done")
    if row.attempts >= max_tries and row.updated_at < stale_before:
        return Claim(None, "exhausted")
    return Claim(None, "busy")


async def get_derivative(session: AsyncSession, derivative_id: str) -> Derivative | None:
    return await session.get(Derivative, derivative_id, populate_existing=True)


async def finish_derivative(
    session: AsyncSession, derivative_id: str, attempt: int, **values: Any
) -> bool:
    result = await session.execute(
        update(Derivative)
        .where(
            Derivative.id == derivative_id,
            Derivative.status == "processing",
            Derivative.attempts == attempt,
        )
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def give_up_derivative(session: AsyncSession, derivative_id: str, reason: str) -> bool:
    result = await session.execute(
        update(Derivative)
        .where(Derivative.id == derivative_id, Derivative.status == "processing")
        .values(status="rejected", reason=reason, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def release_derivative(
    session: AsyncSession, derivative_id: str, attempt: int, released: datetime
) -> None:
    await session.execute(
        update(Derivative)
        .where(
            Derivative.id == derivative_id,
            Derivative.status == "processing",
            Derivative.attempts == attempt,
        )
        .values(updated_at=released)
        .execution_options(synchronize_session=False)
    )


async def stale_derivatives(
    session: AsyncSession, stale_before: datetime, limit: int
) -> list[tuple[str, int]]:
    rows = await session.execute(
        select(Derivative.id, Derivative.attempts)
        .where(Derivative.status == "processing", Derivative.updated_at < stale_before)
        .order_by(Derivative.updated_at)
        .limit(limit)
    )
    return [(row.id, row.attempts) for row in rows]


async def derivatives_of(session: AsyncSession, image_id: str) -> list[Derivative]:
    return list(
        (await session.scalars(select(Derivative).where(Derivative.image_id == image_id))).all()
    )


async def get_authorization(
    session: AsyncSession, tenant_id: str, authorization_id: str
) -> Authorization | None:
    return (
        await session.scalars(
            select(Authorization).where(
                Authorization.id == authorization_id, Authorization.tenant_id == tenant_id
            )
        )
    ).one_or_none()
