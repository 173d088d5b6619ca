"""Upload-invitation routes (the portal page that uses the link comes with the portal)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from clinvault_ingest.common import responses
from clinvault_ingest.invitations import service
from clinvault_ingest.invitations.schemas import (
    InvitationCreated,
    InvitationRequest,
    InvitationRevoked,
)
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.web import RuntimeDep, SessionDep, require

router = APIRouter(prefix="/v1/upload-invitations", tags=["upload invitations"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=InvitationCreated,
    summary="Create a patient upload link (token shown once)",
    responses=responses(403, 422),
)
async def create_invitation(
    body: InvitationRequest,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.INVITATIONS_WRITE))],
) -> InvitationCreated:
    """Create an upload invitation."""
    return await service.create(runtime, session, principal, body)


@router.post(
    "/{invitation_id}/revoke",
    response_model=InvitationRevoked,
    summary="Revoke a patient upload link",
    responses=responses(403, 404),
)
async def revoke_invitation(
    invitation_id: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.INVITATIONS_WRITE))],
) -> InvitationRevoked:
    """Revoke an upload invitation."""
    return await service.revoke(session, principal, invitation_id)
