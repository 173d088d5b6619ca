"""Every query over authorizations, and the reads of other tables they need; scoped by tenant
except where a job walks the whole deployment (named `*_all_tenants`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, exists, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import AuditEntry, Authorization, Derivative, Image, ScopeKey

# Audit outcomes that mean the content went out (ingest records reads with these).
DISCLOSED_OUTCOMES = ("ok", "permitted", "allowed", "success")


def scope_of(authorization_id: str) -> str:
    """The blob-store scope of an authorization's derivatives."""
    return f"auth:{authorization_id}"


async def take_write_lock(session: AsyncSession) -> None:
    """On SQLite take the write lock before reading rows that will change (see consents)."""
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("UPDATE authorizations SET status = status WHERE 0"))


async def get(
    session: AsyncSession, *, tenant_id: str, authorization_id: str, for_update: bool = False
) -> Authorization | None:
    """One authorization of the tenant, or None.

    `for_update` locks the row: on PostgreSQL it waits for derivative reads that hold it
    `FOR SHARE` (decide(..., hold=True)), so the revocation commits after them, never during.
    """
    query = select(Authorization).where(
        Authorization.tenant_id == tenant_id, Authorization.id == authorization_id
    )
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def get_any_tenant(
    session: AsyncSession, authorization_id: str, *, for_update: bool = False
) -> Authorization | None:
    """An authorization by id alone, for jobs (they receive ids enqueued by a tenant's request)."""
    query = select(Authorization).where(Authorization.id == authorization_id)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def list_for_patient(
    session: AsyncSession, *, tenant_id: str, patient_id: str
) -> Sequence[Authorization]:
    """A patient's authorizations in signing order."""
    return (
        await session.scalars(
            select(Authorization)
            .where(Authorization.tenant_id == tenant_id, Authorization.patient_id == patient_id)
            .order_by(Authorization.signed_at, Authorization.id)
        )
    ).all()


async def patient_image_ids(
    session: AsyncSession, *, tenant_id: str, patient_id: str, image_ids: Sequence[str]
) -> set[str]:
    """Which of `image_ids` are this patient's images in this tenant."""
    if not image_ids:
        return set()
    rows = await session.scalars(
        select(Image.id).where(
            Image.tenant_id == tenant_id,
            Image.patient_id == patient_id,
            Image.id.in_(list(image_ids)),
        )
    )
    return set(rows.all())


async def due_for_expiry_all_tenants(
    session: AsyncSession, *, at: datetime, limit: int = 100
) -> Sequence[Authorization]:
    """Active authorizations whose `expires_at` has passed, oldest first, locked."""
    return (
        await session.scalars(
            select(Authorization)
            .where(Authorization.status == "active", Authorization.expires_at <= at)
            .order_by(Authorization.expires_at, Authorization.id)
            .limit(limit)
            .with_for_update()
        )
    ).all()


async def unshredded_all_tenants(session: AsyncSession, *, limit: int = 100) -> Sequence[str]:
    """Ended (revoked or expired) authorizations whose scope still has a live key, or no
    tombstone yet: the shred has not happened (blob store was down, a job was lost)."""
    scope = literal("auth:") + Authorization.id
    live_key = exists().where(
        ScopeKey.tenant_id == Authorization.tenant_id,
        ScopeKey.scope == scope,
        ScopeKey.destroyed_at.is_(None),
    )
    tombstone = exists().where(
        ScopeKey.tenant_id == Authorization.tenant_id,
        ScopeKey.scope == scope,
        ScopeKey.destroyed_at.is_not(None),
    )
    rows = await session.scalars(
        select(Authorization.id)
        .where(
            Authorization.status.in_(("revoked", "expired")),
            live_key | ~tombstone,
        )
        .order_by(Authorization.id)
        .limit(limit)
    )
    return rows.all()


async def is_shredded(session: AsyncSession, authorization: Authorization) -> bool:
    """True when the authorization's scope has a tombstone and no live key."""
    rows = (
        await session.execute(
            select(ScopeKey.destroyed_at).where(
                ScopeKey.tenant_id == authorization.tenant_id,
                ScopeKey.scope == scope_of(authorization.id),
            )
        )
    ).all()
    return bool(rows) and all(row.destroyed_at is not None for row in rows)


async def expiring_between(
    session: AsyncSession, *, tenant_id: str, start: datetime, end: datetime, limit: int = 500
) -> Sequence[Authorization]:
    """A tenant's active authorizations that expire in [start, end), soonest first."""
    return (
        await session.scalars(
            select(Authorization)
            .where(
                Authorization.tenant_id == tenant_id,
                Authorization.status == "active",
                and_(Authorization.expires_at >= start, Authorization.expires_at < end),
            )
            .order_by(Authorization.expires_at)
            .limit(limit)
        )
    ).all()


async def derivatives_of(
    session: AsyncSession, *, tenant_id: str, authorization_id: str
) -> Sequence[Derivative]:
    """Derivatives made under the authorization (read only: ingest owns the table)."""
    return (
        await session.scalars(
            select(Derivative)
            .where(
                Derivative.tenant_id == tenant_id, Derivative.authorization_id == authorization_id
            )
            .order_by(Derivative.created_at, Derivative.id)
        )
    ).all()


async def disclosures_of(
    session: AsyncSession, *, tenant_id: str, object_ids: Sequence[str], limit: int = 1000
) -> Sequence[AuditEntry]:
    """Audit entries of content that went out for these derivatives, in chain order."""
    if not object_ids:
        return []
    return (
        await session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.tenant_id == tenant_id,
                AuditEntry.object_id.in_(list(object_ids)),
                AuditEntry.outcome.in_(DISCLOSED_OUTCOMES),
                AuditEntry.action.like("%content%"),
            )
            .order_by(AuditEntry.seq)
            .limit(limit)
        )
    ).all()
