"""Image routes: thin; the service owns the work."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import StreamingResponse

from clinvault_ingest.common import responses
from clinvault_ingest.images import service
from clinvault_ingest.images.schemas import ImageAccepted, ImageList, ImageStatus, UploadForm
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.web import RuntimeDep, SessionDep, require

router = APIRouter(prefix="/v1/images", tags=["images"])


def _upload_body_schema() -> dict[str, Any]:
    form = UploadForm.model_json_schema()
    properties = {
        **form["properties"],
        "file": {
            "type": "string",
            "format": "binary",
            "description": "the photograph; send it last",
        },
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": [*form.get("required", []), "file"],
                }
            }
        },
    }


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImageAccepted,
    summary="Upload a photograph (streamed, encrypted as it arrives)",
    description="multipart/form-data with the form fields first and `file` last. The body is "
    "streamed into the encrypted blob store, never held whole; the type is sniffed from the "
    "content. A repeat with the same `Idempotency-Key` answers the first result.",
    responses=responses(400, 403, 413, 415, 422),
    openapi_extra={"requestBody": _upload_body_schema()},
)
async def upload_image(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.IMAGES_WRITE))],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> ImageAccepted:
    """Upload a photograph."""
    return await service.upload(
        runtime,
        session,
        service.Uploader(tenant_id=principal.tenant_id, key_id=principal.key_id),
        body=request.stream(),
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        idempotency_key=idempotency_key,
    )


@router.get(
    "",
    response_model=ImageList,
    summary="A patient's images (status, newest first)",
    responses=responses(403, 422),
)
async def list_images(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.IMAGES_READ))],
    patient_id: Annotated[str, Query(min_length=1, max_length=128)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(max_length=40)] = None,
) -> ImageList:
    """List a patient's images."""
    return await service.list_for_patient(
        session, principal, patient_id, limit=limit, before=before
    )


@router.get(
    "/{image_id}",
    response_model=ImageStatus,
    summary="An image's processing status",
    responses=responses(403, 404),
)
async def get_image(
    image_id: str,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.IMAGES_READ))],
) -> ImageStatus:
    """Status, reason, what was removed, size."""
    return await service.status(session, principal, image_id)


@router.get(
    "/{image_id}/content",
    response_class=StreamingResponse,
    summary="The care copy, for treatment (consent or break-glass)",
    description="Needs a general consent covering treatment, or the `X-Break-Glass-Reason` "
    "header for an emergency (allowed and flagged in the audit). Every read and refusal is "
    "audited.",
    responses={
        200: {"content": {"image/*": {}}, "description": "the care copy"},
        **responses(403, 404, 409, 410),
    },
)
async def get_image_content(
    image_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.IMAGES_CONTENT))],
    break_glass_reason: Annotated[str | None, Header(alias="X-Break-Glass-Reason")] = None,
) -> StreamingResponse:
    """Stream the care copy."""
    found = await service.content(
        runtime, session, principal, image_id, break_glass_reason=break_glass_reason
    )
    headers = {"Cache-Control": "no-store"}
    if found.size is not None:
        headers["Content-Length"] = str(found.size)
    if found.sha256:
        headers["X-Content-SHA256"] = found.sha256
    return StreamingResponse(found.stream, media_type=found.media_type, headers=headers)


@router.delete(
    "/{image_id}",
    response_model=ImageStatus,
    summary="Crypto-shred an image, its care copy and its derivatives",
    responses=responses(403, 404, 410),
)
async def delete_image(
    image_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(Permission.IMAGES_DELETE))],
) -> ImageStatus:
    """Destroy every key of the image; later reads answer 410."""
    return await service.delete(runtime, session, principal, image_id)
