"""HIPAA authorizations: record (164.508(c) checked), revoke and expire with crypto-shredding.

Revocation and expiry destroy the authorization's scope key (`auth:<id>`) in the same
transaction as the status change. If the blob store cannot be reached (its shred ledger lives
there) the status change still commits and a job retried until done finishes the shred; reads
never depend on it, because the derivative read path decides on the authorization's status
first (decide(..., hold=True)), which is already `revoked` by then.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_consent.authorizations import repository
from clinvault_consent.authorizations.schemas import (
    AuthorizationCreate,
    AuthorizationOut,
    RevocationOut,
)
from clinvault_consent.authorizations.validation import AuthorizationDraft, validate
from clinvault_consent.common import AUDIT_OK, now
from clinvault_shared import audit
from clinvault_shared.auth import Principal
from clinvault_shared.blobstore import EncryptedBlobStore
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import Authorization
from clinvault_shared.decisions import SECONDARY_PURPOSES, authorization_state
from clinvault_shared.errors import Conflict, NotFound
from clinvault_shared.jobs import SHRED_AUTHORIZATION, job_id
from clinvault_shared.queue import JobQueue

logger = logging.getLogger("clinvault.consent.authorizations")


def to_out(authorization: Authorization, at: datetime | None = None) -> AuthorizationOut:
    """The response body, with the state `expires_at` gives it at `at` (default now)."""
    effective = authorization_state(authorization, at or now())
    fields = {
        c: getattr(authorization, c)
        for c in AuthorizationOut.model_fields
        if c != "effective_status"
    }
    return AuthorizationOut.model_validate(
        {**fields, "effective_status": "active" if effective == "not_yet_signed" else effective}
    )


def draft_of(body: AuthorizationCreate) -> AuthorizationDraft:
    """The fields 164.508(c) looks at, from the API body."""
    return AuthorizationDraft(
        purposes=list(body.purposes),
        description=body.description,
        disclosed_by=body.disclosed_by,
        recipients=list(body.recipients),
        expires_at=body.expires_at,
        expiration_event=body.expiration_event,
        internet_disclosure_acknowledged=body.internet_disclosure_acknowledged,
        right_to_revoke_acknowledged=body.right_to_revoke_acknowledged,
        redisclosure_acknowledged=body.redisclosure_acknowledged,
        signed_by=body.signed_by,
        signed_at=body.signed_at,
        signer_is_representative=body.signer_is_representative,
        signer_authority=body.signer_authority,
        method=body.method,
        image_ids=list(body.image_ids),
        encounter_id=body.encounter_id,
    )


async def build_authorization(
    session: AsyncSession,
    draft: AuthorizationDraft,
    *,
    tenant_id: str,
    patient_id: str,
    actor_key_id: str | None,
    at: datetime,
) -> Authorization:
    """Validate a draft (422 naming each missing element; 404 for images not on file) and
    make the row (not yet added)."""
    validate(draft, at)
    image_ids = list(dict.fromkeys(draft.image_ids))
    known = await repository.patient_image_ids(
        session, tenant_id=tenant_id, patient_id=patient_id, image_ids=image_ids
    )
    if len(known) != len(image_ids):
        raise NotFound(f"{len(image_ids) - len(known)} listed image(s) not on file for the patient")
    # The checks above guarantee these are set; the `or` only narrows the types.
    return Authorization(
        id=new_id("aut"),
        tenant_id=tenant_id,
        patient_id=patient_id,
        purposes=[p for p in SECONDARY_PURPOSES if p in draft.purposes],
        description=(draft.description or "").strip(),
        disclosed_by=draft.disclosed_by,
        recipients=[r for r in draft.recipients if r.strip()],
        expires_at=draft.expires_at,
        expiration_event=draft.expiration_event,
        internet_disclosure_acknowledged=draft.internet_disclosure_acknowledged,
        right_to_revoke_acknowledged=draft.right_to_revoke_acknowledged,
        redisclosure_acknowledged=draft.redisclosure_acknowledged,
        signed_by=draft.signed_by or "",
        signer_authority=draft.signer_authority if draft.signer_is_representative else None,
        signed_at=draft.signed_at or at,
        method=draft.method or "",
        image_ids=image_ids,
        encounter_id=draft.encounter_id,
        status="active",
        created_by_key_id=actor_key_id,
        created_at=at,
        updated_at=at,
    )


async def record_created(
    session: AsyncSession, authorization: Authorization, *, actor_key_id: str | None, source: str
) -> None:
    """Add a new authorization and its audit entry to the session (the caller commits)."""
    session.add(authorization)
    await session.flush()
    await audit.record(
        session,
        tenant_id=authorization.tenant_id,
        actor_key_id=actor_key_id,
        action="authorization.create",
        outcome=AUDIT_OK,
        object_id=authorization.id,
        patient_id=authorization.patient_id,
        detail={
            "purposes": list(authorization.purposes),
            "method": authorization.method,
            "images": len(authorization.image_ids),
            "by_encounter": authorization.encounter_id is not None,
            "source": source,
        },
    )


async def create(
    session: AsyncSession, principal: Principal, body: AuthorizationCreate
) -> AuthorizationOut:
    """Record an authorization after checking every core element of 164.508(c)."""
    at = now()
    authorization = await build_authorization(
        session,
        draft_of(body),
        tenant_id=principal.tenant_id,
        patient_id=body.patient_id,
        actor_key_id=principal.key_id,
        at=at,
    )
    await record_created(session, authorization, actor_key_id=principal.key_id, source="api")
    await session.commit()
    return to_out(authorization, at)


async def get(
    session: AsyncSession, principal: Principal, authorization_id: str
) -> AuthorizationOut:
    """One authorization of the caller's tenant; 404 otherwise."""
    authorization = await repository.get(
        session, tenant_id=principal.tenant_id, authorization_id=authorization_id
    )
    if authorization is None:
        raise NotFound("no such authorization")
    return to_out(authorization)


async def list_for_patient(
    session: AsyncSession, principal: Principal, patient_id: str
) -> list[AuthorizationOut]:
    """A patient's authorizations in the caller's tenant."""
    at = now()
    rows = await repository.list_for_patient(
        session, tenant_id=principal.tenant_id, patient_id=patient_id
    )
    return [to_out(row, at) for row in rows]


async def _shred_in_transaction(
    session: AsyncSession, blobs: EncryptedBlobStore, authorization: Authorization
) -> int | None:
    """Destroy the scope key inside the caller's transaction; None if the store failed.

    A savepoint keeps the status change when the shred fails half-way; the blob store writes
    its shred ledger before touching the key row, so a failure leaves the key refused or live,
    and a live one is finished by the retried job.
    """
    try:
        async with session.begin_nested():
            return await blobs.destroy_scope(
                session,
                tenant_id=authorization.tenant_id,
                patient_id=authorization.patient_id,
                scope=repository.scope_of(authorization.id),
            )
    except Exception as exc:  # any failure of the store: the job retries until done
        logger.warning("shred of an authorization scope deferred: %s", type(exc).__name__)
        return None


async def _disclosed_in_reliance(
    session: AsyncSession, authorization: Authorization
) -> dict[str, object]:
    """What went out under the authorization before it ended (HIPAA lets those uses stand)."""
    derivatives = await repository.derivatives_of(
        session, tenant_id=authorization.tenant_id, authorization_id=authorization.id
    )
    disclosures = await repository.disclosures_of(
        session, tenant_id=authorization.tenant_id, object_ids=[d.id for d in derivatives]
    )
    return {
        "derivatives": [d.id for d in derivatives],
        "approved_derivatives": [d.id for d in derivatives if d.status == "approved"],
        "disclosures": [
            {
                "seq": e.seq,
                "object_id": e.object_id,
                "action": e.action,
                "at": e.at.isoformat(),
                "actor_key_id": e.actor_key_id,
            }
            for e in disclosures
        ],
        "recipient_count": len(authorization.recipients),
    }


def _audit_purpose(authorization: Authorization) -> str | None:
    # The audit's purpose column holds one purpose; several are listed in the create entry.
    return authorization.purposes[0] if len(authorization.purposes) == 1 else None


async def _enqueue_shred(queue: JobQueue | None, authorization_id: str) -> None:
    # After the commit: the job only finishes what the committed status demands. If Redis is
    # down too, the expiry cron's reconciler finds the unshredded scope and enqueues it again.
    if queue is None:
        return
    try:
        await queue.enqueue(
            SHRED_AUTHORIZATION,
            authorization_id,
            job_id=job_id(SHRED_AUTHORIZATION, authorization_id),
        )
    except Exception as exc:  # the reconciler re-enqueues
        logger.warning("could not enqueue a shred job: %s", type(exc).__name__)


async def _end(
    session: AsyncSession,
    blobs: EncryptedBlobStore,
    queue: JobQueue | None,
    authorization: Authorization,
    *,
    action: str,
    actor_key_id: str | None,
) -> tuple[int | None, dict[str, object]]:
    """What revocation and expiry share, after the status change: record what was disclosed in
    reliance, shred the scope key in this transaction, audit, commit, and enqueue the shred job
    if the store failed. Returns (objects shredded or None if pending, the reliance record)."""
    await session.flush()
    reliance = await _disclosed_in_reliance(session, authorization)
    shredded = await _shred_in_transaction(session, blobs, authorization)
    await audit.record(
        session,
        tenant_id=authorization.tenant_id,
        actor_key_id=actor_key_id,
        action=action,
        outcome=AUDIT_OK,
        object_id=authorization.id,
        patient_id=authorization.patient_id,
        purpose=_audit_purpose(authorization),
        detail={
            "shred": "done" if shredded is not None else "pending",
            "objects_shredded": shredded or 0,
            "disclosed_in_reliance": reliance,
        },
    )
    await session.commit()
    if shredded is None:
        await _enqueue_shred(queue, authorization.id)
    return shredded, reliance


async def revoke(
    session: AsyncSession,
    principal: Principal,
    authorization_id: str,
    reason: str,
    *,
    blobs: EncryptedBlobStore,
    queue: JobQueue | None,
) -> RevocationOut:
    """Revoke: status, reason, shred of its scope key and the audit entry in one transaction."""
    await repository.take_write_lock(session)
    authorization = await repository.get(
        session, tenant_id=principal.tenant_id, authorization_id=authorization_id, for_update=True
    )
    if authorization is None:
        raise NotFound("no such authorization")
    if authorization.status != "active":
        raise Conflict(f"this authorization is already {authorization.status}")
    at = now()
    authorization.status = "revoked"
    authorization.revoked_at = at
    authorization.revocation_reason = reason
    authorization.updated_at = at
    # The reason is free text (it may name people): it stays on the row, not in the chain.
    shredded, reliance = await _end(
        session, blobs, queue, authorization,
        action="authorization.revoke", actor_key_id=principal.key_id,
    )  # fmt: skip
    disclosures = reliance["disclosures"]
    disclosed = len(disclosures) if isinstance(disclosures, list) else 0
    return RevocationOut(
        authorization=to_out(authorization, at),
        shred="done" if shredded is not None else "pending",
        objects_shredded=shredded or 0,
        disclosed_before_revocation=disclosed,
    )


async def expire_due(
    session: AsyncSession,
    *,
    blobs: EncryptedBlobStore,
    queue: JobQueue | None,
    at: datetime | None = None,
) -> int:
    """Expire every active authorization past `expires_at` (all tenants), shredding each.

    One commit per authorization: status, shred and audit entry together.
    """
    when = at or now()
    count = 0
    while True:
        await repository.take_write_lock(session)
        due = await repository.due_for_expiry_all_tenants(session, at=when, limit=1)
        if not due:
            await session.commit()
            return count
        authorization = due[0]
        authorization.status = "expired"
        authorization.updated_at = when
        await _end(
            session, blobs, queue, authorization,
            action="authorization.expire", actor_key_id=None,
        )  # fmt: skip
        count += 1


async def shred(session: AsyncSession, *, blobs: EncryptedBlobStore, authorization_id: str) -> bool:
    """Finish the shred of an ended authorization; True when done (idempotent).

    Raises whatever the blob store raises, so the job retries.
    """
    await repository.take_write_lock(session)
    authorization = await repository.get_any_tenant(session, authorization_id, for_update=True)
    if authorization is None or authorization.status == "active":
        await session.rollback()
        return authorization is None
    if await repository.is_shredded(session, authorization):
        await session.rollback()
        return True
    count = await blobs.destroy_scope(
        session,
        tenant_id=authorization.tenant_id,
        patient_id=authorization.patient_id,
        scope=repository.scope_of(authorization.id),
    )
    await audit.record(
        session,
        tenant_id=authorization.tenant_id,
        actor_key_id=None,
        action="authorization.shred",
        outcome=AUDIT_OK,
        object_id=authorization.id,
        patient_id=authorization.patient_id,
        detail={"objects_shredded": count, "deferred": True},
    )
    await session.commit()
    return True


async def pending_shreds(session: AsyncSession) -> list[str]:
    """Ids of ended authorizations whose shred has not happened yet (for the reconciler)."""
    ids = list(await repository.unshredded_all_tenants(session))
    await session.rollback()
    return ids
