"""Routes of HIPAA authorizations (thin: parse, authorize, call the service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from clinvault_consent.authorizations import service
from clinvault_consent.authorizations.schemas import (
    AuthorizationCreate,
    AuthorizationList,
    AuthorizationOut,
    AuthorizationRevoke,
    RevocationOut,
)
from clinvault_consent.common import errors
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.web import RuntimeDep, SessionDep, require

router = APIRouter(prefix="/v1/authorizations", tags=["authorizations"])
Writer = Annotated[Principal, Depends(require(Permission.CONSENTS_WRITE))]
Reader = Annotated[Principal, Depends(require(Permission.CONSENTS_READ))]


@router.post(
    "",
    status_code=201,
    response_model=AuthorizationOut,
    responses=errors(403, 404, 422),
    summary="Record a HIPAA authorization (422 names each missing 164.508(c) element)",
)
async def create_authorization(
    body: AuthorizationCreate, session: SessionDep, principal: Writer
) -> AuthorizationOut:
    """For education, publication, marketing, research or ai_training; signed, never verbal."""
    return await service.create(session, principal, body)


@router.get(
    "",
    response_model=AuthorizationList,
    responses=errors(403, 422),
    summary="List a patient's authorizations",
)
async def list_authorizations(
    session: SessionDep,
    principal: Reader,
    patient_id: Annotated[str, Query(min_length=1, max_length=128)],
) -> AuthorizationList:
    """Oldest first, with the status each has now."""
    return AuthorizationList(items=await service.list_for_patient(session, principal, patient_id))


@router.get(
    "/{authorization_id}",
    response_model=AuthorizationOut,
    responses=errors(403, 404),
    summary="Read an authorization",
)
async def get_authorization(
    authorization_id: str, session: SessionDep, principal: Reader
) -> AuthorizationOut:
    """One authorization of the caller's tenant."""
    return await service.get(session, principal, authorization_id)


@router.post(
    "/{authorization_id}/revoke",
    response_model=RevocationOut,
    responses=errors(403, 404, 409, 422),
    summary="Revoke an authorization: crypto-shreds everything made under it",
)
async def revoke_authorization(
    authorization_id: str,
    body: AuthorizationRevoke,
    session: SessionDep,
    runtime: RuntimeDep,
    principal: Writer,
) -> RevocationOut:
    """Its scope key is destroyed in the same transaction; earlier disclosures are audited."""
    return await service.revoke(
        session, principal, authorization_id, body.reason, blobs=runtime.blobs, queue=runtime.queue
    )
