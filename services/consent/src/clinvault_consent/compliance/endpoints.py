"""Compliance routes: the report, the audit entries (accounting of disclosures), chain check."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime

from clinvault_consent.common import errors
from clinvault_consent.compliance import service
from clinvault_consent.compliance.schemas import AuditPage, ChainReportOut, ComplianceReport
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.web import SessionDep, require

router = APIRouter(tags=["compliance"])
ComplianceReader = Annotated[Principal, Depends(require(Permission.COMPLIANCE_READ))]
AuditReader = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]


@router.get(
    "/v1/compliance/report",
    response_model=ComplianceReport,
    responses=errors(403, 422),
    summary="Overdue verbal consents, expiring authorizations, break-glass, insecure intakes",
)
async def compliance_report(
    session: SessionDep,
    principal: ComplianceReader,
    since: Annotated[AwareDatetime | None, Query(description="default: 30 days ago")] = None,
) -> ComplianceReport:
    """Read only; computed now."""
    return await service.report(session, principal, since=since)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    responses=errors(403, 422),
    summary="Audit entries; with patient_id, the accounting of disclosures",
)
async def list_audit(
    session: SessionDep,
    principal: AuditReader,
    patient_id: Annotated[str | None, Query(max_length=128)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after_seq: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    """What was done with whose images, by which key, when and for what purpose."""
    return await service.accounting(
        session,
        principal,
        patient_id=patient_id,
        since=since,
        until=until,
        limit=limit,
        after_seq=after_seq,
    )


@router.get(
    "/v1/audit/verify",
    response_model=ChainReportOut,
    responses=errors(403),
    summary="Check the audit hash chain",
)
async def verify_audit(session: SessionDep, principal: AuditReader) -> ChainReportOut:
    """Detects edited, deleted, inserted or reordered entries and says where."""
    return await service.verify(session, principal)
