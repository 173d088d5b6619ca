"""Read-only queries of the compliance report over audit entries and images; scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import AuditEntry, Image

SCAN_LIMIT = 5000


async def content_reads_since(
    session: AsyncSession, *, tenant_id: str, since: datetime, limit: int = SCAN_LIMIT
) -> Sequence[AuditEntry]:
    """Allowed content reads of the tenant since `since` (break-glass ones are filtered by the
    caller: the flag is in `detail`, which is JSON on both databases)."""
    return (
        await session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.tenant_id == tenant_id,
                AuditEntry.at >= since,
                AuditEntry.action.like("%content%"),
                AuditEntry.outcome == "allowed",
            )
            .order_by(AuditEntry.seq)
            .limit(limit)
        )
    ).all()


async def insecure_intakes_since(
    session: AsyncSession, *, tenant_id: str, since: datetime, limit: int = 1000
) -> Sequence[Image]:
    """Images that came in through an insecure channel since `since`."""
    return (
        await session.scalars(
            select(Image)
            .where(
                Image.tenant_id == tenant_id,
                Image.source == "insecure_channel",
                Image.created_at >= since,
            )
            .order_by(Image.created_at)
            .limit(limit)
        )
    ).all()
