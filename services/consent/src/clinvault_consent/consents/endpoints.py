"""Routes of general consent (thin: parse, authorize, call the service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from clinvault_consent.common import errors
from clinvault_consent.consents import service
from clinvault_consent.consents.schemas import (
    ConsentCreate,
    ConsentDocumentation,
    ConsentList,
    ConsentOut,
)
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.web import RuntimeDep, SessionDep, require

router = APIRouter(prefix="/v1/consents", tags=["consents"])
Writer = Annotated[Principal, Depends(require(Permission.CONSENTS_WRITE))]
Reader = Annotated[Principal, Depends(require(Permission.CONSENTS_READ))]


@router.post(
    "",
    status_code=201,
    response_model=ConsentOut,
    responses=errors(403, 422),
    summary="Record a general consent (treatment, payment, operations)",
)
async def create_consent(
    body: ConsentCreate, session: SessionDep, runtime: RuntimeDep, principal: Writer
) -> ConsentOut:
    """Written and electronic consents are active at once; verbal ones start provisional."""
    return await service.create(session, principal, body, runtime.settings)


@router.get(
    "",
    response_model=ConsentList,
    responses=errors(403, 422),
    summary="List a patient's general consents",
)
async def list_consents(
    session: SessionDep,
    principal: Reader,
    patient_id: Annotated[str, Query(min_length=1, max_length=128)],
) -> ConsentList:
    """Oldest first, with the status each has now."""
    return ConsentList(items=await service.list_for_patient(session, principal, patient_id))


@router.get(
    "/{consent_id}",
    response_model=ConsentOut,
    responses=errors(403, 404),
    summary="Read a general consent",
)
async def get_consent(consent_id: str, session: SessionDep, principal: Reader) -> ConsentOut:
    """One consent of the caller's tenant."""
    return await service.get(session, principal, consent_id)


@router.post(
    "/{consent_id}/documentation",
    response_model=ConsentOut,
    responses=errors(403, 404, 409, 422),
    summary="Attach the written record of a verbal consent (it becomes active)",
)
async def document_consent(
    consent_id: str, body: ConsentDocumentation, session: SessionDep, principal: Writer
) -> ConsentOut:
    """A provisional or lapsed verbal consent becomes active."""
    return await service.document(session, principal, consent_id, body.documentation_ref)


@router.post(
    "/{consent_id}/revoke",
    response_model=ConsentOut,
    responses=errors(403, 404, 409),
    summary="Withdraw a general consent",
)
async def revoke_consent(consent_id: str, session: SessionDep, principal: Writer) -> ConsentOut:
    """From now on the consent permits nothing."""
    return await service.revoke(session, principal, consent_id)
