"""Image use cases: each owns its unit of work, commits in one place, then enqueues."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_ingest import common
from clinvault_ingest.images import repository
from clinvault_ingest.images.schemas import (
    ImageAccepted,
    ImageList,
    ImageStatus,
    Source,
    UploadForm,
)
from clinvault_ingest.multipart import MultipartReader
from clinvault_shared import audit, jobs
from clinvault_shared.auth import Principal
from clinvault_shared.blobstore import KeyDestroyed
from clinvault_shared.db.base import new_id, utcnow
from clinvault_shared.db.models import Image
from clinvault_shared.decisions import decide
from clinvault_shared.errors import (
    BadRequest,
    ClinvaultError,
    Conflict,
    Forbidden,
    Gone,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from clinvault_shared.formats import SNIFF_BYTES, describe_format, sniff_format
from clinvault_shared.runtime import Runtime

# Multipart framing and form fields on top of the file itself.
FORM_OVERHEAD_BYTES = 64 * 1024
BREAK_GLASS_MAX = 500


@dataclass(frozen=True)
class Uploader:
    """Who uploads: an API key, or a patient through an invitation (then `key_id` is None)."""

    tenant_id: str
    key_id: str | None
    invitation_id: str | None = None


def to_status(image: Image) -> ImageStatus:
    return ImageStatus(
        id=image.id,
        patient_id=image.patient_id,
        source=image.source,
        status=image.status,
        reason=image.reason,
        detected_format=image.detected_format,
        size=image.size,
        sha256=image.sha256,
        care_size=image.care_size,
        care_sha256=(image.scrub_record or {}).get("care_sha256"),
        removed=image.removed or [],
        captured_at=image.captured_at,
        body_site=image.body_site,
        encounter_id=image.encounter_id,
        created_at=image.created_at,
        updated_at=image.updated_at,
        deleted_at=image.deleted_at,
    )


def _accepted(image: Image) -> ImageAccepted:
    # A repeat gets the first answer byte for byte (its status is "received" as it was then);
    # GET /v1/images/{id} tells where the image stands now.
    return ImageAccepted(id=image.id, status="received", sha256=image.sha256)


async def _read_form(reader: MultipartReader) -> UploadForm:
    """Form fields up to the `file` part; the reader is left at the start of the file."""
    values: dict[str, str] = {}
    while True:
        part = await reader.next_part()
        if part is None:
            raise BadRequest("the form has no 'file' part")
        if part.name == "file":
            break
        if part.filename is not None:
            raise BadRequest("only one file, in the part named 'file', is accepted")
        values[part.name] = await reader.read_text()
    try:
        return UploadForm.model_validate(values)
    except ValidationError as exc:
        missing = sorted(
            {str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["type"] == "missing"}
        )
        invalid = sorted(
            {str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["type"] != "missing"}
        )
        problems = []
        if missing:
            # The photo is encrypted under its patient's key as it streams, so the fields that
            # say whose it is must arrive first (with curl: put -F file=@... last).
            problems.append(
                "missing before the file part: "
                + ", ".join(missing)
                + " (send the form fields first and the file last)"
            )
        if invalid:
            problems.append("invalid form fields: " + ", ".join(invalid))
        raise Unprocessable("; ".join(problems)) from None


async def _head(data: AsyncIterator[bytes]) -> bytes:
    head = bytearray()
    async for chunk in data:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    return bytes(head)


async def upload(
    runtime: Runtime,
    session: AsyncSession,
    uploader: Uploader,
    *,
    body: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    idempotency_key: str | None,
) -> ImageAccepted:
    """Stream a photo into the care scope of its patient, record it, enqueue its care scrub."""
    settings = runtime.settings
    limit = settings.max_upload_bytes
    tenant_id = uploader.tenant_id
    actor = Principal(uploader.key_id, tenant_id, "") if uploader.key_id else None
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= 200:
            raise BadRequest("Idempotency-Key must be 1-200 characters")
        existing = await repository.by_idempotency_key(
            session, tenant_id=tenant_id, key=idempotency_key
        )
        if existing is not None:
            return _accepted(existing)
    if (
        content_length is not None
        and content_length.isdigit()
        and (int(content_length) > limit + FORM_OVERHEAD_BYTES)
    ):
        await common.refuse(
            session,
            actor,
            tenant_id=tenant_id,
            action="image.upload",
            error=PayloadTooLarge(f"uploads are limited to {limit} bytes"),
            detail={"stage": "content_length"},
        )
    reader = MultipartReader(body, content_type, max_body_bytes=limit + FORM_OVERHEAD_BYTES)
    form = await _read_form(reader)
    return await store_file(
        runtime,
        session,
        uploader,
        form,
        reader.iter_data(),
        idempotency_key=idempotency_key,
        before_commit=reader.finish,
    )


def portal_form(patient_id: str) -> UploadForm:
    """The form of a patient's upload through an invitation: patient and channel are fixed."""
    return UploadForm(patient_id=patient_id, source=Source.patient_portal)


async def store_file(
    runtime: Runtime,
    session: AsyncSession,
    uploader: Uploader,
    form: UploadForm,
    data: AsyncIterator[bytes],
    *,
    idempotency_key: str | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
) -> ImageAccepted:
    """Sniff, encrypt as it streams, record and enqueue one photo (the API and the portal)."""
    limit = runtime.settings.max_upload_bytes
    tenant_id = uploader.tenant_id
    actor = Principal(uploader.key_id, tenant_id, "") if uploader.key_id else None
    head = await _head(data)
    detected = sniff_format(head)
    if detected is None:
        await common.refuse(
            session,
            actor,
            tenant_id=tenant_id,
            action="image.upload",
            patient_id=form.patient_id,
            error=UnsupportedMediaType(
                f"{describe_format(head)} is not an accepted image type; "
                "send JPEG, PNG, WebP, HEIC/HEIF, TIFF or GIF"
            ),
            detail={"stage": "sniff"},
        )

    async def file_bytes() -> AsyncIterator[bytes]:
        # The file arrives chunk by chunk and goes straight into the encrypting upload.
        size = len(head)  # the first network chunk may already pass the limit
        if size > limit:
            raise PayloadTooLarge(f"uploads are limited to {limit} bytes")
        yield head
        async for chunk in data:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"uploads are limited to {limit} bytes")
            yield chunk

    written: list[str] = []
    try:
        original = await runtime.blobs.put(
            session,
            tenant_id=tenant_id,
            patient_id=form.patient_id,
            scope="care",
            data=file_bytes(),
        )
        written.append(original.object_id)
        if before_commit is not None:
            await before_commit()
        hints_object_id = None
        if hints := form.hints():
            stored = await runtime.blobs.put(
                session,
                tenant_id=tenant_id,
                patient_id=form.patient_id,
                scope="care",
                data=json.dumps(hints).encode(),
            )
            written.append(stored.object_id)
            hints_object_id = stored.object_id
        image = Image(
            id=new_id("img"),
            tenant_id=tenant_id,
            patient_id=form.patient_id,
            source=form.source.value,
            body_site=form.body_site,
            encounter_id=form.encounter_id,
            captured_at=form.captured_at,
            idempotency_key=idempotency_key,
            status="received",
            detected_format=detected,
            sha256=original.sha256,
            size=original.size,
            original_object_id=original.object_id,
            hints_object_id=hints_object_id,
            created_by_key_id=uploader.key_id,
            invitation_id=uploader.invitation_id,
        )
        session.add(image)
        await session.flush()
        await audit.record(
            session,
            tenant_id=tenant_id,
            actor_key_id=uploader.key_id,
            action="image.upload",
            outcome="accepted",
            object_id=image.id,
            patient_id=form.patient_id,
            detail={
                "source": image.source,
                "format": detected,
                "size": image.size,
                "invitation": uploader.invitation_id,
            },
        )
        await session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won: answer with its result.
        await session.rollback()
        await common.discard_uncommitted(runtime, written)
        if idempotency_key is None:
            raise
        existing = await repository.by_idempotency_key(
            session, tenant_id=tenant_id, key=idempotency_key
        )
        if existing is None:
            raise
        return _accepted(existing)
    except PayloadTooLarge as exc:
        await common.discard_uncommitted(runtime, written)
        await common.refuse(
            session,
            actor,
            tenant_id=tenant_id,
            action="image.upload",
            patient_id=form.patient_id,
            error=exc,
            detail={"stage": "stream"},
        )
    except BaseException:
        await session.rollback()
        await common.discard_uncommitted(runtime, written)
        raise
    await common.enqueue(
        runtime, jobs.MAKE_CARE_COPY, image.id, job_id=jobs.job_id(jobs.MAKE_CARE_COPY, image.id)
    )
    return _accepted(image)


async def _visible(
    session: AsyncSession,
    principal: Principal,
    image_id: str,
    action: str,
    *,
    for_update: bool = False,
) -> Image:
    image = await repository.get(
        session, tenant_id=principal.tenant_id, image_id=image_id, for_update=for_update
    )
    return await common.found_or_refuse(
        session, principal, image, action=action, object_id=image_id, what="image"
    )


async def status(session: AsyncSession, principal: Principal, image_id: str) -> ImageStatus:
    """The image's state; the read is audited."""
    image = await _visible(session, principal, image_id, "image.read_status")
    result = to_status(image)
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action="image.read_status",
        outcome="allowed",
        object_id=image.id,
        patient_id=image.patient_id,
    )
    await session.commit()
    return result


@dataclass(frozen=True)
class Content:
    stream: AsyncIterator[bytes]
    media_type: str
    size: int | None
    sha256: str | None


MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "heif": "image/heif",
    "tiff": "image/tiff",
    "gif": "image/gif",
}


async def content(
    runtime: Runtime,
    session: AsyncSession,
    principal: Principal,
    image_id: str,
    *,
    break_glass_reason: str | None,
) -> Content:
    """The care copy, for treatment: needs a consent decision's permit, or break-glass."""
    action = "image.read_content"
    image = await _visible(session, principal, image_id, action)

    async def refuse(error: ClinvaultError) -> NoReturn:
        await common.refuse(
            session,
            principal,
            tenant_id=principal.tenant_id,
            action=action,
            object_id=image.id,
            patient_id=image.patient_id,
            purpose="treatment",
            error=error,
        )

    if image.status == "deleted":
        await refuse(Gone("this image was deleted (crypto-shredded)"))
    if image.status != "ready" or image.care_object_id is None:
        await refuse(_not_ready(image.status))
    decision = await decide(
        session,
        tenant_id=principal.tenant_id,
        patient_id=image.patient_id,
        purpose="treatment",
        image_id=image.id,
    )
    detail: dict[str, object] = {"basis": decision.basis}
    if not decision.permit:
        if not break_glass_reason or not break_glass_reason.strip():
            await refuse(
                Forbidden(
                    f"no consent permits treatment use: {decision.reason}; "
                    "an emergency read needs the X-Break-Glass-Reason header"
                )
            )
        if len(break_glass_reason) > BREAK_GLASS_MAX:
            raise BadRequest(f"X-Break-Glass-Reason is limited to {BREAK_GLASS_MAX} characters")
        # The reason itself is free text (may name the patient): it is not copied into the
        # audit chain, which stores only that break-glass was used and the decision it overrode.
        detail = {"break_glass": True, "denied_reason": decision.reason[:200]}
    try:
        stream = await runtime.blobs.get(session, image.care_object_id)
    except KeyDestroyed:
        await refuse(Gone("this image's keys were destroyed"))
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action=action,
        outcome="allowed",
        object_id=image.id,
        patient_id=image.patient_id,
        purpose="treatment",
        detail=detail,
    )
    await session.commit()
    return Content(
        stream=stream,
        media_type=MEDIA_TYPES.get(image.detected_format or "", "application/octet-stream"),
        size=image.care_size,
        sha256=(image.scrub_record or {}).get("care_sha256"),
    )


def _not_ready(state: str) -> ClinvaultError:

    if state == "rejected":
        return Conflict("this image was rejected by the scrubber; it has no care copy")
    return Conflict(f"the care copy is not ready yet (status {state})")


async def delete(
    runtime: Runtime, session: AsyncSession, principal: Principal, image_id: str
) -> ImageStatus:
    """Crypto-shred the original, care copy, hints and every derivative; later reads get 410."""
    action = "image.delete"
    image = await _visible(session, principal, image_id, action, for_update=True)
    if image.status == "deleted":
        await common.refuse(
            session,
            principal,
            tenant_id=principal.tenant_id,
            action=action,
            object_id=image.id,
            patient_id=image.patient_id,
            error=Gone("this image was already deleted"),
        )
    derivatives = await repository.derivatives_of(
        session, tenant_id=principal.tenant_id, image_id=image.id
    )
    object_ids = [image.original_object_id, image.care_object_id, image.hints_object_id]
    object_ids += [d.object_id for d in derivatives]
    for object_id in object_ids:
        if object_id is not None:
            await runtime.blobs.delete(session, object_id)
    now = utcnow()
    for derivative in derivatives:
        if derivative.status != "revoked":
            derivative.status = "revoked"
            derivative.reason = "the source image was deleted"
    image.status = "deleted"
    image.deleted_at = now
    image.updated_at = now
    shredded = sum(1 for object_id in object_ids if object_id is not None)
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action=action,
        outcome="shredded",
        object_id=image.id,
        patient_id=image.patient_id,
        detail={"objects": shredded, "derivatives": len(derivatives)},
    )
    await session.commit()
    # A care-copy or derivative job that was running may still store an object: the shred job
    # sweeps again after it (the jobs themselves also refuse to finish on a deleted image).
    await common.enqueue(
        runtime, jobs.SHRED_IMAGE, image.id, job_id=jobs.job_id(jobs.SHRED_IMAGE, image.id)
    )
    return to_status(image)


async def list_for_patient(
    session: AsyncSession, principal: Principal, patient_id: str, *, limit: int, before: str | None
) -> ImageList:
    """The patient's images for the clinician (status only, no content); the read is audited."""
    found = await repository.of_patient(
        session, tenant_id=principal.tenant_id, patient_id=patient_id, limit=limit, before=before
    )
    await audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor_key_id=principal.key_id,
        action="image.list",
        outcome="listed",
        patient_id=patient_id,
        detail={"count": len(found)},
    )
    await session.commit()
    next_before = found[-1].id if len(found) == limit else None
    return ImageList(items=[to_status(image) for image in found], next_before=next_before)
