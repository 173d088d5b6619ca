"""Derivative use cases: request under an authorization, review, release while it is active."""

from __future__ import annotations

from typing import NoReturn

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_ingest import common
from clinvault_ingest.derivatives import repository
from clinvault_ingest.derivatives.schemas import (
    DerivativeRequest,
    DerivativeStatus,
    ReviewDecision,
    ReviewRequest,
)
from clinvault_ingest.images import repository as images
from clinvault_ingest.images.service import Content
from clinvault_shared import audit, jobs
from clinvault_shared.auth import Principal
from clinvault_shared.blobstore import KeyDestroyed
from clinvault_shared.db.base import new_id, utcnow
from clinvault_shared.db.models import Derivative
from clinvault_shared.decisions import decide, in_force
from clinvault_shared.errors import ClinvaultError, Conflict, Forbidden, Gone, NotFound
from clinvault_shared.runtime import Runtime

# Derivatives are re-encoded by the deidentify profile; the engine says which format it chose
# (a multi-page TIFF stays one, an animated GIF, WebP or PNG stays an animation of its format).
OUTPUT_MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tiff": "image/tiff",
    "gif": "image/gif",
}


def to_status(derivative: Derivative) -> DerivativeStatus:
    return DerivativeStatus(
        id=derivative.id,
        image_id=derivative.image_id,
        authorization_id=derivative.authorization_id,
        purpose=derivative.purpose,
        status=derivative.status,
        reason=derivative.reason,
        findings=derivative.findings or {},
        review_note=derivative.review_note,
        reviewed_at=derivative.reviewed_at,
        created_at=derivative.created_at,
        updated_at=derivative.updated_at,
    )


async def create(
    runtime: Runtime,
    session: AsyncSession,
    principal: Principal,
    image_id: str,
    request: DerivativeRequest,
) -> DerivativeStatus:
    """Check the authorization covers this image and purpose, record the request, enqueue it."""
    action = "derivative.create"
    tenant_id = principal.tenant_id
    image = await images.get(session, tenant_id=tenant_id, image_id=image_id)
    if image is None:
        await common.refuse(
            session,
            principal,
            tenant_id=tenant_id,
            action=action,
            object_id=image_id,
            error=NotFound("no such image"),
        )
    if image.status == "deleted":
        await common.refuse(
            session,
            principal,
            tenant_id=tenant_id,
            action=action,
            object_id=image.id,
            patient_id=image.patient_id,
            purpose=request.purpose.value,
            error=Gone("this image was deleted"),
        )
    decision = await decide(
        session,
        tenant_id=tenant_id,
        patient_id=image.patient_id,
        purpose=request.purpose.value,
        image_id=image.id,
        authorization_id=request.authorization_id,
    )
    if not decision.permit:
        await common.refuse(
            session,
            principal,
            tenant_id=tenant_id,
            action=action,
            object_id=image.id,
            patient_id=image.patient_id,
            purpose=request.purpose.value,
            error=Forbidden(f"no active authorization covers this use: {decision.reason}"),
            detail={"authorization": request.authorization_id},
        )
    if image.status != "ready":
        await common.refuse(
            session,
            principal,
            tenant_id=tenant_id,
            action=action,
            object_id=image.id,
            patient_id=image.patient_id,
            purpose=request.purpose.value,
            error=Conflict(f"the image is not ready (status {image.status})"),
        )
    derivative = Derivative(
        id=new_id("drv"),
        tenant_id=tenant_id,
        image_id=image.id,
        authorization_id=request.authorization_id,
        purpose=request.purpose.value,
        redactions=[r.model_dump() for r in request.redactions],
        keep=[k.model_dump() for k in request.keep],
        status="processing",
        created_by_key_id=principal.key_id,
    )
    session.add(derivative)
    await session.flush()
    await audit.record(
        session,
        tenant_id=tenant_id,
        actor_key_id=principal.key_id,
        action=action,
        outcome="accepted",
        object_id=derivative.id,
        patient_id=image.patient_id,
        purpose=request.purpose.value,
        detail={
            "image": image.id,
            "authorization": request.authorization_id,
            "basis": decision.basis,
        },
    )
    await session.commit()
    await common.enqueue(
        runtime,
        jobs.BUILD_DERIVATIVE,
        derivative.id,
        job_id=jobs.job_id(jobs.BUILD_DERIVATIVE, derivative.id),
    )
    return to_status(derivative)


async def _visible(
    session: AsyncSession,
    principal: Principal,
    derivative_id: str,
    action: str,
    *,
    for_update: bool = False,
) -> Derivative:
    derivative = await repository.get(
        session, tenant_id=principal.tenant_id, derivative_id=derivative_id, for_update=for_update
    )
    return await common.found_or_refuse(
        session, principal, derivative, action=action, object_id=derivative_id, what="derivative"
    )


async def _patient(session: AsyncSession, derivative: Derivative) -> str | None:
    image = await repository.image_of(session, derivative)
    return image.patient_id if image is not None else None


async def status(
    session: AsyncSession, principal: Principal, derivative_id: str
) -> DerivativeStatus:
    """The derivative's state and findings; the read is audited."""
    derivative = await _visible(session, principal, derivative_id, "derivative.read_status")
    result = to_status(derivative)
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action="derivative.read_status",
        outcome="allowed",
        object_id=derivative.id,
        patient_id=await _patient(session, derivative),
        purpose=derivative.purpose,
    )
    await session.commit()
    return result


async def _open(
    runtime: Runtime,
    session: AsyncSession,
    principal: Principal,
    derivative: Derivative,
    *,
    action: str,
    allowed: tuple[str, ...],
) -> Content:
    patient_id = await _patient(session, derivative)

    async def no(error: ClinvaultError) -> NoReturn:
        await common.refuse(
            session,
            principal,
            tenant_id=principal.tenant_id,
            action=action,
            object_id=derivative.id,
            patient_id=patient_id,
            purpose=derivative.purpose,
            error=error,
        )

    if derivative.status == "revoked":
        await no(Gone("this derivative was revoked and its key destroyed"))
    authorization = await repository.authorization(
        session, tenant_id=principal.tenant_id, authorization_id=derivative.authorization_id
    )
    if not in_force(authorization, utcnow()):
        await no(Gone("the authorization for this derivative is no longer active"))
    if derivative.status not in allowed or derivative.object_id is None:
        await no(Conflict(f"the derivative is {derivative.status}"))
    assert derivative.object_id is not None  # noqa: S101  (checked just above)
    if patient_id is None:
        await no(Gone("the source image is gone"))
    # hold=True: a revocation of this authorization waits until the key is opened and the read
    # is recorded, so none starts after a revocation has committed.
    decision = await decide(
        session,
        tenant_id=principal.tenant_id,
        patient_id=patient_id,
        purpose=derivative.purpose,
        image_id=derivative.image_id,
        authorization_id=derivative.authorization_id,
        hold=True,
    )
    if not decision.permit:
        await no(Gone(f"this derivative may no longer be read: {decision.reason}"))
    try:
        stream = await runtime.blobs.get(session, derivative.object_id)
    except KeyDestroyed:
        await no(Gone("this derivative's key was destroyed"))
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action=action,
        outcome="allowed",
        object_id=derivative.id,
        patient_id=patient_id,
        purpose=derivative.purpose,
        detail={"authorization": derivative.authorization_id},
    )
    await session.commit()
    output_format = str((derivative.findings or {}).get("output_format") or "jpeg")
    return Content(
        stream=stream,
        media_type=OUTPUT_MEDIA_TYPES.get(output_format, "application/octet-stream"),
        size=(derivative.findings or {}).get("size"),
        sha256=(derivative.findings or {}).get("sha256"),
    )


async def preview(
    runtime: Runtime, session: AsyncSession, principal: Principal, derivative_id: str
) -> Content:
    """The de-identified image for a reviewer (pending review or approved)."""
    derivative = await _visible(session, principal, derivative_id, "derivative.preview")
    return await _open(
        runtime,
        session,
        principal,
        derivative,
        action="derivative.preview",
        allowed=("pending_review", "approved"),
    )


async def content(
    runtime: Runtime, session: AsyncSession, principal: Principal, derivative_id: str
) -> Content:
    """The released image: approved, and only while its authorization is active."""
    derivative = await _visible(session, principal, derivative_id, "derivative.read_content")
    return await _open(
        runtime,
        session,
        principal,
        derivative,
        action="derivative.read_content",
        allowed=("approved",),
    )


async def review(
    session: AsyncSession, principal: Principal, derivative_id: str, request: ReviewRequest
) -> DerivativeStatus:
    """Approve or reject a derivative that is pending review."""
    action = "derivative.review"
    derivative = await _visible(session, principal, derivative_id, action, for_update=True)
    patient_id = await _patient(session, derivative)
    if derivative.status != "pending_review":
        await common.refuse(
            session,
            principal,
            tenant_id=principal.tenant_id,
            action=action,
            object_id=derivative.id,
            patient_id=patient_id,
            purpose=derivative.purpose,
            error=Conflict(
                f"only a derivative pending review can be reviewed "
                f"(this one is {derivative.status})"
            ),
        )
    approved = request.decision is ReviewDecision.approve
    derivative.status = "approved" if approved else "rejected"
    if not approved:
        derivative.reason = "rejected by a reviewer"
    derivative.review_note = request.note
    derivative.reviewed_by_key_id = principal.key_id
    derivative.reviewed_at = utcnow()
    # The note is free text (it may describe the patient): kept on the row, not in the audit.
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action=action,
        outcome=derivative.status,
        object_id=derivative.id,
        patient_id=patient_id,
        purpose=derivative.purpose,
    )
    await session.commit()
    return to_status(derivative)
