"""Every query on images the ingest API makes; each is scoped to one tenant."""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import Derivative, Image


async def get(
    session: AsyncSession, *, tenant_id: str, image_id: str, for_update: bool = False
) -> Image | None:
    """The tenant's image with this id, or None (another tenant's image is None too)."""
    query = select(Image).where(Image.id == image_id, Image.tenant_id == tenant_id)
    if for_update:
        query = query.with_for_update()
    return (await session.scalars(query)).one_or_none()


async def by_idempotency_key(session: AsyncSession, *, tenant_id: str, key: str) -> Image | None:
    """The image a previous request with this Idempotency-Key created, if any."""
    query = select(Image).where(Image.tenant_id == tenant_id, Image.idempotency_key == key)
    return (await session.scalars(query)).one_or_none()


async def derivatives_of(
    session: AsyncSession, *, tenant_id: str, image_id: str
) -> list[Derivative]:
    """Every derivative made from the image."""
    query = (
        select(Derivative)
        .where(Derivative.tenant_id == tenant_id, Derivative.image_id == image_id)
        .with_for_update()
    )
    return list((await session.scalars(query)).all())


async def of_patient(
    session: AsyncSession, *, tenant_id: str, patient_id: str, limit: int, before: str | None
) -> list[Image]:
    """The patient's images, newest first, a page at a time (keyset on creation time, id)."""
    query = select(Image).where(Image.tenant_id == tenant_id, Image.patient_id == patient_id)
    if before is not None:
        cursor = await get(session, tenant_id=tenant_id, image_id=before)
        if cursor is None:
            return []
        query = query.where(
            or_(
                Image.created_at < cursor.created_at,
                and_(Image.created_at == cursor.created_at, Image.id < cursor.id),
            )
        )
    query = query.order_by(Image.created_at.desc(), Image.id.desc()).limit(limit)
    return list((await session.scalars(query)).all())
