"""Upload invitations: create a patient link; upload through it (the portal page calls this)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_ingest.invitations import repository
from clinvault_ingest.invitations.schemas import (
    InvitationCreated,
    InvitationRequest,
    InvitationRevoked,
)
from clinvault_shared import audit
from clinvault_shared.auth import Principal
from clinvault_shared.db.base import new_id, utcnow
from clinvault_shared.db.models import UploadInvitation
from clinvault_shared.errors import Gone, NotFound
from clinvault_shared.runtime import Runtime


def hash_token(token: str) -> str:
    # 256 random bits: a fast hash suffices (nothing to brute-force), as for API keys.
    return hashlib.sha256(token.encode()).hexdigest()


async def create(
    runtime: Runtime, session: AsyncSession, principal: Principal, request: InvitationRequest
) -> InvitationCreated:
    """A random token bound to tenant and patient, valid until expiry for `max_files` files."""
    token = secrets.token_urlsafe(32)
    invitation = UploadInvitation(
        id=new_id("inv"),
        tenant_id=principal.tenant_id,
        patient_id=request.patient_id,
        token_hash=hash_token(token),
        expires_at=utcnow() + timedelta(minutes=request.expires_in_minutes),
        max_files=request.max_files,
        requested_by=request.requested_by,
        created_by_key_id=principal.key_id,
    )
    session.add(invitation)
    await session.flush()
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action="invitation.create",
        outcome="created",
        object_id=invitation.id,
        patient_id=request.patient_id,
        detail={"max_files": request.max_files, "expires_in_minutes": request.expires_in_minutes},
    )
    await session.commit()
    base = runtime.settings.public_base_url.rstrip("/")
    return InvitationCreated(
        id=invitation.id,
        token=token,
        url=f"{base}/portal/{token}",
        expires_at=invitation.expires_at,
        max_files=invitation.max_files,
    )


async def open_invitation(session: AsyncSession, token: str) -> UploadInvitation:
    """The invitation a token opens, if it may still be used; 404 for unknown, 410 for spent."""
    invitation = await repository.by_token_hash(session, hash_token(token))
    if invitation is None:
        raise NotFound("no such upload link")
    if invitation.revoked_at is not None or invitation.expires_at <= utcnow():
        raise Gone("this upload link has expired")
    if invitation.used_files >= invitation.max_files:
        raise Gone("this upload link has been used for all the files it allows")
    return invitation


async def revoke(
    session: AsyncSession, principal: Principal, invitation_id: str
) -> InvitationRevoked:
    """Revoke a link at once (another tenant's link answers 404)."""
    invitation = await repository.get(
        session, tenant_id=principal.tenant_id, invitation_id=invitation_id
    )
    if invitation is None:
        raise NotFound("no such upload invitation")
    if invitation.revoked_at is None:
        invitation.revoked_at = utcnow()
        await audit.record(
            session,
            tenant_id=principal.tenant_id,
            actor_key_id=principal.key_id,
            action="invitation.revoke",
            outcome="revoked",
            object_id=invitation.id,
            patient_id=invitation.patient_id,
        )
    revoked_at = invitation.revoked_at
    await session.commit()
    return InvitationRevoked(id=invitation.id, revoked_at=revoked_at)
