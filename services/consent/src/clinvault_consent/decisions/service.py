"""Answer `GET /v1/decisions` with the shared decision function (the same answer ingest gets)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_consent.decisions import repository
from clinvault_consent.decisions.schemas import DecisionOut
from clinvault_shared.auth import Principal
from clinvault_shared.decisions import decide
from clinvault_shared.errors import Forbidden, NotFound


async def decision(
    session: AsyncSession,
    principal: Principal,
    *,
    patient_id: str,
    purpose: str,
    image_id: str | None,
    authorization_id: str | None,
    at: datetime | None,
    asserted_tenant: str | None,
) -> DecisionOut:
    """The decision for the caller's tenant; another tenant's image or authorization is 404.

    Read only: nothing is written, so there is nothing to commit.
    """
    if asserted_tenant is not None and asserted_tenant != principal.tenant_id:
        raise Forbidden("this key belongs to another tenant")
    tenant_id = principal.tenant_id
    # Same order as `decide`: the image first, then the authorization.
    if image_id is not None and not await repository.image_in_tenant(
        session, tenant_id=tenant_id, image_id=image_id
    ):
        raise NotFound("image not found")
    if authorization_id is not None and not await repository.authorization_in_tenant(
        session, tenant_id=tenant_id, authorization_id=authorization_id
    ):
        raise NotFound("authorization not found")
    result = await decide(
        session,
        tenant_id=tenant_id,
        patient_id=patient_id,
        purpose=purpose,
        image_id=image_id,
        authorization_id=authorization_id,
        at=at,
    )
    return DecisionOut(permit=result.permit, basis=result.basis, reason=result.reason)
