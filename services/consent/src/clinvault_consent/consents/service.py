"""General consent: record, document, revoke and lapse; each change commits with its audit entry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_consent.common import AUDIT_OK, now
from clinvault_consent.consents import repository
from clinvault_consent.consents.schemas import ConsentCreate, ConsentOut
from clinvault_shared import audit
from clinvault_shared.auth import Principal
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import Consent
from clinvault_shared.decisions import ROUTINE_PURPOSES, consent_state
from clinvault_shared.errors import Conflict, NotFound, Unprocessable
from clinvault_shared.settings import Settings

# A signature time this far ahead of the server clock is taken as clock skew, not a typo.
CLOCK_SKEW = timedelta(minutes=5)


def to_out(consent: Consent, at: datetime | None = None) -> ConsentOut:
    """The response body, with the state the deadline gives it at `at` (default now)."""
    effective = consent_state(consent, at or now())
    return ConsentOut.model_validate(
        {
            **{c: getattr(consent, c) for c in ConsentOut.model_fields if c != "effective_status"},
            "effective_status": consent.status if effective == "not_yet_signed" else effective,
        }
    )


def check_routine_purposes(purposes: Sequence[str]) -> list[str]:
    """The purposes, deduplicated in their canonical order; 422 for any use beyond care."""
    other = [p for p in purposes if p not in ROUTINE_PURPOSES]
    if other:
        raise Unprocessable(
            f"a general consent covers only {', '.join(ROUTINE_PURPOSES)}; "
            f"{', '.join(sorted(set(other)))} need(s) an authorization (POST /v1/authorizations)"
        )
    return [p for p in ROUTINE_PURPOSES if p in purposes]


def build_consent(
    body: ConsentCreate,
    *,
    tenant_id: str,
    actor_key_id: str | None,
    settings: Settings,
    at: datetime,
) -> Consent:
    """A new consent row from a validated request (verbal: provisional with a deadline)."""
    purposes = check_routine_purposes(body.purposes)
    if body.signed_at > at + CLOCK_SKEW:
        raise Unprocessable("signed_at is in the future")
    if body.method == "verbal" and not (body.witness and body.witness.strip()):
        raise Unprocessable("a verbal consent needs a witness")
    verbal = body.method == "verbal"
    due = body.signed_at + timedelta(hours=settings.verbal_consent_documentation_hours)
    documented = not verbal or bool(body.documentation_ref)
    return Consent(
        id=new_id("cns"),
        tenant_id=tenant_id,
        patient_id=body.patient_id,
        purposes=purposes,
        method=body.method,
        signed_by=body.signed_by,
        signed_at=body.signed_at,
        witness=body.witness,
        status="active" if documented else "provisional",
        documentation_due_at=due if verbal else None,
        documented_at=at if verbal and documented else None,
        documentation_ref=body.documentation_ref,
        created_by_key_id=actor_key_id,
        created_at=at,
        updated_at=at,
    )


async def record_created(
    session: AsyncSession, consent: Consent, *, actor_key_id: str | None, source: str
) -> None:
    """Add a new consent and its audit entry to the session (the caller commits)."""
    session.add(consent)
    await session.flush()
    await audit.record(
        session,
        tenant_id=consent.tenant_id,
        actor_key_id=actor_key_id,
        action="consent.create",
        outcome=AUDIT_OK,
        object_id=consent.id,
        patient_id=consent.patient_id,
        detail={
            "method": consent.method,
            "status": consent.status,
            "purposes": list(consent.purposes),
            "source": source,
        },
    )


async def create(
    session: AsyncSession, principal: Principal, body: ConsentCreate, settings: Settings
) -> ConsentOut:
    """Record a general consent; a verbal one starts provisional with `documentation_due_at`."""
    at = now()
    consent = build_consent(
        body, tenant_id=principal.tenant_id, actor_key_id=principal.key_id, settings=settings, at=at
    )
    await record_created(session, consent, actor_key_id=principal.key_id, source="api")
    await session.commit()
    return to_out(consent, at)


async def get(session: AsyncSession, principal: Principal, consent_id: str) -> ConsentOut:
    """One consent of the caller's tenant; 404 otherwise."""
    consent = await repository.get(session, tenant_id=principal.tenant_id, consent_id=consent_id)
    if consent is None:
        raise NotFound("no such consent")
    return to_out(consent)


async def list_for_patient(
    session: AsyncSession, principal: Principal, patient_id: str
) -> list[ConsentOut]:
    """A patient's consents in the caller's tenant."""
    at = now()
    rows = await repository.list_for_patient(
        session, tenant_id=principal.tenant_id, patient_id=patient_id
    )
    return [to_out(row, at) for row in rows]


async def document(
    session: AsyncSession, principal: Principal, consent_id: str, documentation_ref: str
) -> ConsentOut:
    """Attach the written record: a provisional or lapsed verbal consent becomes active."""
    await repository.take_write_lock(session)
    consent = await repository.get(
        session, tenant_id=principal.tenant_id, consent_id=consent_id, for_update=True
    )
    if consent is None:
        raise NotFound("no such consent")
    if consent.status not in ("provisional", "lapsed"):
        raise Conflict(f"a consent that is {consent.status} needs no documentation")
    at = now()
    previous = consent.status
    consent.status = "active"
    consent.documented_at = at
    consent.documentation_ref = documentation_ref
    consent.updated_at = at
    await audit.record(
        session,
        tenant_id=consent.tenant_id,
        actor_key_id=principal.key_id,
        action="consent.document",
        outcome=AUDIT_OK,
        object_id=consent.id,
        patient_id=consent.patient_id,
        detail={
            "from": previous,
            "to": "active",
            "late": at > (consent.documentation_due_at or at),
        },
    )
    await session.commit()
    return to_out(consent, at)


async def revoke(session: AsyncSession, principal: Principal, consent_id: str) -> ConsentOut:
    """Withdraw a general consent: from now on it permits nothing."""
    await repository.take_write_lock(session)
    consent = await repository.get(
        session, tenant_id=principal.tenant_id, consent_id=consent_id, for_update=True
    )
    if consent is None:
        raise NotFound("no such consent")
    if consent.status == "revoked":
        raise Conflict("this consent is already revoked")
    at = now()
    previous = consent.status
    consent.status = "revoked"
    consent.revoked_at = at
    consent.updated_at = at
    await audit.record(
        session,
        tenant_id=consent.tenant_id,
        actor_key_id=principal.key_id,
        action="consent.revoke",
        outcome=AUDIT_OK,
        object_id=consent.id,
        patient_id=consent.patient_id,
        detail={"from": previous, "to": "revoked"},
    )
    await session.commit()
    return to_out(consent, at)


async def lapse_overdue(session: AsyncSession, *, at: datetime | None = None) -> int:
    """Lapse every verbal consent still provisional past its deadline; returns how many.

    Commits once per consent so one bad row cannot hold back the others (and audit appends,
    which serialize, stay short).
    """
    when = at or now()
    count = 0
    while True:
        await repository.take_write_lock(session)
        batch = await repository.provisional_overdue(session, at=when, limit=100)
        if not batch:
            await session.commit()
            return count
        for consent in batch:
            consent.status = "lapsed"
            consent.updated_at = when
            await audit.record(
                session,
                tenant_id=consent.tenant_id,
                actor_key_id=None,
                action="consent.lapse",
                outcome=AUDIT_OK,
                object_id=consent.id,
                patient_id=consent.patient_id,
                detail={"from": "provisional", "to": "lapsed", "reason": "documentation_overdue"},
            )
            count += 1
        await session.commit()
