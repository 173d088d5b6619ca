"""Every query on upload invitations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import UploadInvitation


async def by_token_hash(session: AsyncSession, token_hash: str) -> UploadInvitation | None:
    """The invitation a token opens (the token names its tenant; no tenant filter applies)."""
    query = select(UploadInvitation).where(UploadInvitation.token_hash == token_hash)
    return (await session.scalars(query)).one_or_none()


async def reserve_slot(session: AsyncSession, invitation_id: str, now: datetime) -> bool:
    """Take one file slot atomically, if the invitation is still open."""
    result = await session.execute(
        update(UploadInvitation)
        .where(
            UploadInvitation.id == invitation_id,
            UploadInvitation.used_files < UploadInvitation.max_files,
            UploadInvitation.expires_at > now,
            UploadInvitation.revoked_at.is_(None),
        )
        .values(used_files=UploadInvitation.used_files + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def release_slot(session: AsyncSession, invitation_id: str) -> None:
    """Give a slot back after an upload that failed."""
    await session.execute(
        update(UploadInvitation)
        .where(UploadInvitation.id == invitation_id, UploadInvitation.used_files > 0)
        .values(used_files=UploadInvitation.used_files - 1)
        .execution_options(synchronize_session=False)
    )


async def get(
    session: AsyncSession, *, tenant_id: str, invitation_id: str
) -> UploadInvitation | None:
    """One invitation of this tenant."""
    query = select(UploadInvitation).where(
        UploadInvitation.id == invitation_id, UploadInvitation.tenant_id == tenant_id
    )
    return (await session.scalars(query)).one_or_none()
