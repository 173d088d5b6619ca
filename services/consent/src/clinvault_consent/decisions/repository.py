"""Existence checks behind the decision route's 404s; each is scoped by tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import Authorization, Image


async def image_in_tenant(session: AsyncSession, *, tenant_id: str, image_id: str) -> bool:
    """True when the image belongs to the tenant (any patient)."""
    found = await session.scalar(
        select(Image.id).where(Image.tenant_id == tenant_id, Image.id == image_id)
    )
    return found is not None


async def authorization_in_tenant(
    session: AsyncSession, *, tenant_id: str, authorization_id: str
) -> bool:
    """True when the authorization belongs to the tenant (any patient)."""
    found = await session.scalar(
        select(Authorization.id).where(
            Authorization.tenant_id == tenant_id, Authorization.id == authorization_id
        )
    )
    return found is not None
