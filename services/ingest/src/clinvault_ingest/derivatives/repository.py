"""Every query on derivatives the ingest API makes; each is scoped to one tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import Authorization, Derivative, Image


async def get(
    session: AsyncSession, *, tenant_id: str, derivative_id: str, for_update: bool = False
) -> Derivative | None:
    """The tenant's derivative with this id, or None."""
    query = select(Derivative).where(
        Derivative.id == derivative_id, Derivative.tenant_id == tenant_id
    )
    if for_update:
        query = query.with_for_update()
    return (await session.scalars(query)).one_or_none()


async def image_of(session: AsyncSession, derivative: Derivative) -> Image | None:
    """The image a derivative was made from (same tenant)."""
    query = select(Image).where(
        Image.id == derivative.image_id, Image.tenant_id == derivative.tenant_id
    )
    return (await session.scalars(query)).one_or_none()


async def authorization(
    session: AsyncSession, *, tenant_id: str, authorization_id: str
) -> Authorization | None:
    """The tenant's authorization (read only: the consent service owns the table)."""
    query = select(Authorization).where(
        Authorization.id == authorization_id, Authorization.tenant_id == tenant_id
    )
    return (await session.scalars(query)).one_or_none()
