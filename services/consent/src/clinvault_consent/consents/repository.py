"""Every query over general consents; each is scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import Consent


async def take_write_lock(session: AsyncSession) -> None:
    """On SQLite take the write lock before reading what will be changed.

    A deferred SQLite transaction reads a snapshot and fails (busy snapshot) if it later writes
    after another writer committed; taking the lock first makes it wait instead. PostgreSQL
    uses row locks (`for_update` below) and needs nothing here.
    """
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("UPDATE consents SET status = status WHERE 0"))


async def get(
    session: AsyncSession, *, tenant_id: str, consent_id: str, for_update: bool = False
) -> Consent | None:
    """One consent of the tenant, or None (another tenant's id is simply not found)."""
    query = select(Consent).where(Consent.tenant_id == tenant_id, Consent.id == consent_id)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def list_for_patient(
    session: AsyncSession, *, tenant_id: str, patient_id: str
) -> Sequence[Consent]:
    """A patient's consents in signing order."""
    return (
        await session.scalars(
            select(Consent)
            .where(Consent.tenant_id == tenant_id, Consent.patient_id == patient_id)
            .order_by(Consent.signed_at, Consent.id)
        )
    ).all()


async def provisional_overdue(
    session: AsyncSession, *, at: datetime, tenant_id: str | None = None, limit: int = 500
) -> Sequence[Consent]:
    """Verbal consents still provisional past their documentation deadline (all tenants by
    default: the lapse job runs for the whole deployment)."""
    query = select(Consent).where(
        Consent.status == "provisional", Consent.documentation_due_at <= at
    )
    if tenant_id is not None:
        query = query.where(Consent.tenant_id == tenant_id)
    return (await session.scalars(query.order_by(Consent.documentation_due_at).limit(limit))).all()


async def lapsed(session: AsyncSession, *, tenant_id: str, limit: int = 500) -> Sequence[Consent]:
    """A tenant's lapsed verbal consents, oldest deadline first."""
    return (
        await session.scalars(
            select(Consent)
            .where(Consent.tenant_id == tenant_id, Consent.status == "lapsed")
            .order_by(Consent.documentation_due_at)
            .limit(limit)
        )
    ).all()
