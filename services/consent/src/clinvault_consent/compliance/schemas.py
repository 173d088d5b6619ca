"""The compliance report, the accounting of disclosures and the chain check."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class VerbalConsentItem(BaseModel):
    id: str
    patient_id: str
    status: str
    signed_at: datetime
    documentation_due_at: datetime | None


class ExpiringAuthorizationItem(BaseModel):
    id: str
    patient_id: str
    purposes: list[str]
    expires_at: datetime | None


class BreakGlassItem(BaseModel):
    seq: int
    at: datetime
    object_id: str | None
    actor_key_id: str | None
    action: str


class InsecureIntakeItem(BaseModel):
    image_id: str
    patient_id: str
    created_at: datetime
    status: str


class ComplianceReport(BaseModel):
    """What needs a compliance officer's attention (read only; computed at `generated_at`)."""

    generated_at: datetime
    since: datetime = Field(description="start of the window for break-glass reads and intakes")
    overdue_verbal_consents: list[VerbalConsentItem] = Field(
        description="provisional verbal consents past their documentation deadline"
    )
    lapsed_verbal_consents: list[VerbalConsentItem]
    expiring_authorizations: list[ExpiringAuthorizationItem] = Field(
        description="active authorizations expiring within 30 days"
    )
    break_glass_reads: list[BreakGlassItem]
    insecure_channel_intakes: list[InsecureIntakeItem]


class AuditEntryOut(BaseModel):
    """One audit entry: what happened to which object, by which key, for what purpose."""

    seq: int
    at: datetime
    action: str
    outcome: str
    object_id: str | None
    purpose: str | None
    actor_key_id: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    """Entries in chain order; pass `next_after_seq` as `after_seq` for the next page."""

    entries: list[AuditEntryOut]
    next_after_seq: int | None


class ChainProblemOut(BaseModel):
    seq: int
    kind: str
    message: str


class ChainReportOut(BaseModel):
    """The chain check: `ok`, where it first breaks, and the head to anchor elsewhere."""

    ok: bool
    entries: int = Field(description="entries of the caller's tenant")
    chain_entries: int
    first_bad_seq: int | None
    problems: list[ChainProblemOut]
    problems_truncated: bool
    head_seq: int | None
    head_hash: str | None
