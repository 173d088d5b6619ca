"""`GET /v1/decisions`: may this patient's images be used for this purpose, and why."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from pydantic import AwareDatetime

from clinvault_consent.common import errors
from clinvault_consent.decisions import service
from clinvault_consent.decisions.schemas import DecisionOut
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.decisions import PURPOSES
from clinvault_shared.web import SessionDep, require

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])
Reader = Annotated[Principal, Depends(require(Permission.DECISIONS_READ))]


@router.get(
    "",
    response_model=DecisionOut,
    responses=errors(403, 404, 422),
    summary="Decide whether a purpose is permitted for a patient (and image)",
)
async def get_decision(
    session: SessionDep,
    principal: Reader,
    patient_id: Annotated[str, Query(min_length=1, max_length=128)],
    purpose: Annotated[str, Query(description=f"one of: {', '.join(PURPOSES)}")],
    image_id: Annotated[str | None, Query(max_length=40)] = None,
    authorization_id: Annotated[str | None, Query(max_length=40)] = None,
    at: Annotated[AwareDatetime | None, Query(description="decision time (default now)")] = None,
    x_clinvault_tenant: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> DecisionOut:
    """Deterministic and explained: `permit`, the `basis` record and a `reason`."""
    return await service.decision(
        session,
        principal,
        patient_id=patient_id,
        purpose=purpose,
        image_id=image_id,
        authorization_id=authorization_id,
        at=at,
        asserted_tenant=x_clinvault_tenant,
    )
