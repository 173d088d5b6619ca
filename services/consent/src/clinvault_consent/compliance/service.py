"""The compliance report, the accounting of disclosures and the chain check (all read only)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_consent.authorizations import repository as authorization_repository
from clinvault_consent.common import now
from clinvault_consent.compliance import repository
from clinvault_consent.compliance.schemas import (
    AuditEntryOut,
    AuditPage,
    BreakGlassItem,
    ChainProblemOut,
    ChainReportOut,
    ComplianceReport,
    ExpiringAuthorizationItem,
    InsecureIntakeItem,
    VerbalConsentItem,
)
from clinvault_consent.consents import repository as consent_repository
from clinvault_shared import audit
from clinvault_shared.auth import Principal
from clinvault_shared.db.models import Consent

EXPIRY_WINDOW = timedelta(days=30)
DEFAULT_LOOKBACK = timedelta(days=30)


def _verbal(consent: Consent) -> VerbalConsentItem:
    return VerbalConsentItem(
        id=consent.id,
        patient_id=consent.patient_id,
        status=consent.status,
        signed_at=consent.signed_at,
        documentation_due_at=consent.documentation_due_at,
    )


async def report(
    session: AsyncSession,
    principal: Principal,
    *,
    since: datetime | None,
    at: datetime | None = None,
) -> ComplianceReport:
    """Overdue and lapsed verbal consents, authorizations expiring within 30 days, break-glass
    reads and insecure-channel intakes since `since` (default 30 days back)."""
    when = at or now()
    start = since or when - DEFAULT_LOOKBACK
    tenant_id = principal.tenant_id
    overdue = await consent_repository.provisional_overdue(session, at=when, tenant_id=tenant_id)
    lapsed = await consent_repository.lapsed(session, tenant_id=tenant_id)
    expiring = await authorization_repository.expiring_between(
        session, tenant_id=tenant_id, start=when, end=when + EXPIRY_WINDOW
    )
    reads = await repository.content_reads_since(session, tenant_id=tenant_id, since=start)
    intakes = await repository.insecure_intakes_since(session, tenant_id=tenant_id, since=start)
    return ComplianceReport(
        generated_at=when,
        since=start,
        overdue_verbal_consents=[_verbal(c) for c in overdue],
        lapsed_verbal_consents=[_verbal(c) for c in lapsed],
        expiring_authorizations=[
            ExpiringAuthorizationItem(
                id=a.id, patient_id=a.patient_id, purposes=list(a.purposes), expires_at=a.expires_at
            )
            for a in expiring
        ],
        break_glass_reads=[
            BreakGlassItem(
                seq=e.seq,
                at=e.at,
                object_id=e.object_id,
                actor_key_id=e.actor_key_id,
                action=e.action,
            )
            for e in reads
            if (e.detail or {}).get("break_glass") is True
        ],
        insecure_channel_intakes=[
            InsecureIntakeItem(
                image_id=i.id, patient_id=i.patient_id, created_at=i.created_at, status=i.status
            )
            for i in intakes
        ],
    )


async def accounting(
    session: AsyncSession,
    principal: Principal,
    *,
    patient_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after_seq: int,
) -> AuditPage:
    """The tenant's audit entries (for one patient: the accounting of disclosures)."""
    entries = await audit.list_entries(
        session,
        tenant_id=principal.tenant_id,
        patient_id=patient_id,
        since=since,
        until=until,
        limit=limit,
        after_seq=after_seq,
    )
    return AuditPage(
        entries=[
            AuditEntryOut(
                seq=e.seq,
                at=e.at,
                action=e.action,
                outcome=e.outcome,
                object_id=e.object_id,
                purpose=e.purpose,
                actor_key_id=e.actor_key_id,
                detail=e.detail or {},
            )
            for e in entries
        ],
        next_after_seq=entries[-1].seq if len(entries) == limit and entries else None,
    )


async def verify(session: AsyncSession, principal: Principal) -> ChainReportOut:
    """Walk the chain; count the caller's tenant's entries."""
    result = await audit.verify(session, tenant_id=principal.tenant_id)
    return ChainReportOut(
        ok=result.ok,
        entries=result.entries,
        chain_entries=result.chain_entries,
        first_bad_seq=result.first_bad_seq,
        problems=[
            ChainProblemOut(seq=p.seq, kind=p.kind, message=p.message) for p in result.problems
        ],
        problems_truncated=result.problems_truncated,
        head_seq=result.head.seq if result.head else None,
        head_hash=result.head.hash if result.head else None,
    )
