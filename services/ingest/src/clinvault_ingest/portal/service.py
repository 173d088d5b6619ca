"""What the portal page does: open an invitation, guard the form (CSRF, limits), take files."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_ingest.images import service as images
from clinvault_ingest.images.schemas import ImageAccepted
from clinvault_ingest.invitations import repository as invitations_repository
from clinvault_ingest.invitations import service as invitations
from clinvault_ingest.multipart import MultipartReader
from clinvault_ingest.portal.ratelimit import RateLimiter
from clinvault_shared.crypto.pseudonym import pseudonym_key
from clinvault_shared.db.base import utcnow
from clinvault_shared.db.models import UploadInvitation
from clinvault_shared.errors import BadRequest, ClinvaultError, Forbidden, Gone, TooManyRequests
from clinvault_shared.runtime import Runtime

CSRF_COOKIE = "cv_portal_csrf"
# Generous for a patient sending a handful of photos with retries; tight for scripted abuse.
PER_TOKEN = RateLimiter(limit=60, window_seconds=600)
PER_ADDRESS = RateLimiter(limit=120, window_seconds=600)


class AcknowledgementMissing(ClinvaultError):
    code = "acknowledgement_required"
    status_code = 400
    default_message = (
        "Please tick the box to confirm you have read the notice before sending photos."
    )


class NoFileChosen(ClinvaultError):
    code = "no_file"
    status_code = 400
    default_message = "Please take or choose at least one photo."


def _csrf_key() -> bytes:
    # Derived, not stored: every replica computes the same key from the shared pseudonym secret.
    return hmac.new(pseudonym_key(), b"clinvault portal csrf v1", hashlib.sha256).digest()


def new_csrf_cookie() -> str:
    """A random value for the CSRF cookie (double-submit, bound to the link by an HMAC)."""
    return secrets.token_urlsafe(24)


def csrf_field(cookie: str, token: str) -> str:
    """The form field value that must accompany `cookie` on a post to this link."""
    message = f"{cookie}\x00{invitations.hash_token(token)}".encode()
    return hmac.new(_csrf_key(), message, hashlib.sha256).hexdigest()


def check_csrf(cookie: str | None, submitted: str | None, token: str) -> None:
    """403 unless the submitted field matches the cookie this browser got with the page."""
    if not cookie or not submitted or not hmac.compare_digest(csrf_field(cookie, token), submitted):
        raise Forbidden("the form has expired; reload the page and try again")


def limit(token: str, address: str | None) -> None:
    """429 when one link or one address sends too many requests."""
    token_key = invitations.hash_token(token)
    if not PER_TOKEN.allow(token_key) or not PER_ADDRESS.allow(address or "unknown"):
        raise TooManyRequests("too many attempts; wait a few minutes and try again")


@dataclass(frozen=True)
class PageContext:
    requested_by: str
    remaining: int
    expires_text: str


async def page_context(session: AsyncSession, token: str) -> PageContext:
    """What the page shows about a usable invitation (no patient identifiers)."""
    invitation = await invitations.open_invitation(session, token)
    return _context(invitation)


def _context(invitation: UploadInvitation) -> PageContext:
    return PageContext(
        requested_by=invitation.requested_by or "Your care team",
        remaining=invitation.max_files - invitation.used_files,
        expires_text=invitation.expires_at.strftime("%d %B %Y, %H:%M UTC"),
    )


async def receive(
    runtime: Runtime,
    session: AsyncSession,
    token: str,
    *,
    body: AsyncIterator[bytes],
    content_type: str | None,
    csrf_cookie: str | None,
) -> tuple[list[ImageAccepted], int]:
    """Take the posted form: check CSRF and the acknowledgement, then store each photo.

    Returns what was accepted and how many files the link still allows.
    """
    opened = await invitations.open_invitation(session, token)
    invitation = Link(opened.id, opened.tenant_id, opened.patient_id, opened.max_files)
    await session.rollback()  # end the read transaction; each file commits on its own
    reader = MultipartReader(
        body,
        content_type,
        max_body_bytes=invitation.max_files * runtime.settings.max_upload_bytes
        + images.FORM_OVERHEAD_BYTES,
    )
    fields: dict[str, str] = {}
    accepted: list[ImageAccepted] = []
    while (part := await reader.next_part()) is not None:
        if part.name != "file":
            if part.filename is not None:
                raise BadRequest("photos must be sent in the 'file' field")
            fields[part.name] = await reader.read_text()
            continue
        if not part.filename:
            # An empty picker (say, the camera was not used) still sends an empty part.
            async for _ in reader.iter_data():
                pass
            continue
        check_csrf(csrf_cookie, fields.get("csrf"), token)
        if fields.get("acknowledged") != "yes":
            raise AcknowledgementMissing()
        accepted.append(await _store_one(runtime, session, invitation, reader.iter_data()))
    if not accepted:
        check_csrf(csrf_cookie, fields.get("csrf"), token)
        if fields.get("acknowledged") != "yes":
            raise AcknowledgementMissing()
        raise NoFileChosen()
    fresh = await invitations_repository.by_token_hash(session, invitations.hash_token(token))
    remaining = (fresh.max_files - fresh.used_files) if fresh else 0
    await session.rollback()
    return accepted, remaining


@dataclass(frozen=True)
class Link:
    """What the upload needs of an invitation, kept apart from the ORM row across commits."""

    id: str
    tenant_id: str
    patient_id: str
    max_files: int


async def _store_one(
    runtime: Runtime,
    session: AsyncSession,
    invitation: Link,
    data: AsyncIterator[bytes],
) -> ImageAccepted:
    if not await invitations_repository.reserve_slot(session, invitation.id, utcnow()):
        await session.rollback()
        raise Gone("this upload link has expired or is used up")
    await session.commit()
    uploader = images.Uploader(
        tenant_id=invitation.tenant_id,
        key_id=None,
        invitation_id=invitation.id,
    )
    try:
        return await images.store_file(
            runtime, session, uploader, images.portal_form(invitation.patient_id), data
        )
    except BaseException:
        await session.rollback()
        await invitations_repository.release_slot(session, invitation.id)
        await session.commit()
        raise
