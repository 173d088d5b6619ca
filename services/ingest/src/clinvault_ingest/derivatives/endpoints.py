"""Derivative routes: thin; the service owns the work."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import StreamingResponse

from clinvault_ingest.common import responses
from clinvault_ingest.derivatives import service
from clinvault_ingest.derivatives.schemas import DerivativeRequest, DerivativeStatus, ReviewRequest
from clinvault_ingest.images.service import Content
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.web import RuntimeDep, SessionDep, require

router = APIRouter(tags=["derivatives"])
_IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {}}, "description": "the de-identified image"}
}


def _stream(found: Content) -> StreamingResponse:
    headers = {"Cache-Control": "no-store"}
    if found.size is not None:
        headers["Content-Length"] = str(found.size)
    return StreamingResponse(found.stream, media_type=found.media_type, headers=headers)


@router.post(
    "/v1/images/{image_id}/derivatives",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DerivativeStatus,
    summary="Request a de-identified derivative under an authorization",
    description="403 unless an active authorization covers this image and purpose. The result "
    "goes to `pending_review`, encrypted under the authorization's key.",
    responses=responses(403, 404, 409, 410, 422),
)
async def create_derivative(
    image_id: str,
    body: DerivativeRequest,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.DERIVATIVES_CREATE))],
) -> DerivativeStatus:
    """Request a derivative."""
    return await service.create(runtime, session, principal, image_id, body)


@router.get(
    "/v1/derivatives/{derivative_id}",
    response_model=DerivativeStatus,
    summary="A derivative's status and findings",
    responses=responses(403, 404),
)
async def get_derivative(
    derivative_id: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.DERIVATIVES_READ))],
) -> DerivativeStatus:
    """Status and findings."""
    return await service.status(session, principal, derivative_id)


@router.get(
    "/v1/derivatives/{derivative_id}/preview",
    response_class=StreamingResponse,
    summary="The de-identified image, for reviewers",
    responses={**_IMAGE_RESPONSE, **responses(403, 404, 409, 410)},
)
async def preview_derivative(
    derivative_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.DERIVATIVES_REVIEW))],
) -> StreamingResponse:
    """Preview for review."""
    return _stream(await service.preview(runtime, session, principal, derivative_id))


@router.post(
    "/v1/derivatives/{derivative_id}/review",
    response_model=DerivativeStatus,
    summary="Approve or reject a derivative pending review",
    responses=responses(403, 404, 409, 422),
)
async def review_derivative(
    derivative_id: str,
    body: ReviewRequest,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.DERIVATIVES_REVIEW))],
) -> DerivativeStatus:
    """Record the reviewer's decision."""
    return await service.review(session, principal, derivative_id, body)


@router.get(
    "/v1/derivatives/{derivative_id}/content",
    response_class=StreamingResponse,
    summary="The released derivative (approved, authorization active)",
    description="410 once its authorization is revoked or expired, or the image deleted.",
    responses={**_IMAGE_RESPONSE, **responses(403, 404, 409, 410)},
)
async def get_derivative_content(
    derivative_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.DERIVATIVES_CONTENT))],
) -> StreamingResponse:
    """Stream the approved derivative."""
    return _stream(await service.content(runtime, session, principal, derivative_id))
