"""The consent decision: may this patient's images be used for this purpose now, and why.

One pure rule set over the consent tables, used in two ways that give the same answer:
`decide(session, ...)` in-process (embedded mode, or any process that shares the database), and
`HttpDecisionClient` against the consent service's `GET /v1/decisions` when the services run apart
(`CLINVAULT_CONSENT_SERVICE_URL`). `decide_via(settings, session, ...)` picks between them.

The rules (docs/consent.md has the table):
- treatment, payment and operations need a general consent that covers the purpose: `active`, or
  a verbal one still `provisional` before its documentation deadline. A lapsed, revoked or
  overdue one permits nothing.
- education, publication, marketing, research and ai_training need a HIPAA authorization for that
  very purpose (one purpose never permits another; a general consent never permits them),
  `active`, signed, not past `expires_at`, and naming the image (listed or by its encounter).
- Ties are broken by signing time then id, so the same records always give the same basis.
Reasons carry record ids and states only, never PHI.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.models import Authorization, Consent, Image
from clinvault_shared.errors import ServiceUnavailable
from clinvault_shared.observability import count_decision
from clinvault_shared.settings import Settings

# httpx logs every request URL at INFO; decision URLs carry the patient id in the query string,
# so only its warnings may reach the logs (no PHI in logs).
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

ROUTINE_PURPOSES: tuple[str, ...] = ("treatment", "payment", "operations")
SECONDARY_PURPOSES: tuple[str, ...] = (
    "education",
    "publication",
    "marketing",
    "research",
    "ai_training",
)
PURPOSES: tuple[str, ...] = ROUTINE_PURPOSES + SECONDARY_PURPOSES
# Purposes whose authorization must acknowledge that images may appear on the internet.
INTERNET_PURPOSES: frozenset[str] = frozenset({"education", "publication", "marketing"})


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer: `permit`, the record it rests on (`consent:<id>`/`authorization:<id>`), why."""

    permit: bool
    basis: str | None
    reason: str


def _now(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError("decision time must be timezone-aware")
    return at.astimezone(UTC)


def consent_state(consent: Consent, at: datetime) -> str:
    """The consent's effective state at `at`: a provisional one past its deadline is lapsed."""
    if consent.status == "provisional" and (
        consent.documentation_due_at is None or at >= consent.documentation_due_at
    ):
        return "lapsed"
    if consent.status in ("active", "provisional") and at < consent.signed_at:
        return "not_yet_signed"
    return consent.status


def authorization_state(authorization: Authorization, at: datetime) -> str:
    """The authorization's effective state at `at`: an active one past `expires_at` is expired."""
    if authorization.status != "active":
        return authorization.status
    if authorization.expires_at is not None and at >= authorization.expires_at:
        return "expired"
    if at < authorization.signed_at:
        return "not_yet_signed"
    return "active"


def in_force(authorization: Authorization | None, at: datetime) -> bool:
    """There is an authorization and it is active at `at`: one past its expiry is over
    before the expiry job runs."""
    return authorization is not None and authorization_state(authorization, at) == "active"


def covers_image(authorization: Authorization, image: Image | None) -> bool:
    """True when the authorization names the image, in its list or through its encounter."""
    if image is None:
        return True
    if image.id in authorization.image_ids:
        return True
    return (
        authorization.encounter_id is not None and image.encounter_id == authorization.encounter_id
    )


def _order_key(record: Consent | Authorization) -> tuple[datetime, str]:
    return (record.signed_at, record.id)


def decide_routine(consents: Sequence[Consent], purpose: str, at: datetime) -> Decision:
    """The rule for treatment, payment and operations over the patient's general consents."""
    covering = sorted((c for c in consents if purpose in c.purposes), key=_order_key)
    if not covering:
        return Decision(False, None, f"no general consent on file covers {purpose}")
    states = [(c, consent_state(c, at)) for c in covering]
    for consent, state in states:
        if state == "active":
            return Decision(
                True, f"consent:{consent.id}", f"active general consent covers {purpose}"
            )
    for consent, state in states:
        if state == "provisional":
            # consent_state returns "provisional" only when a deadline is set.
            due = consent.documentation_due_at or at
            return Decision(
                True,
                f"consent:{consent.id}",
                f"verbal consent covers {purpose}, provisional until its written record is "
                f"attached (due {due.isoformat()})",
            )
    consent, state = states[-1]
    why = {
        "lapsed": "lapsed: its written record was not attached by the deadline",
        "revoked": "revoked",
        "not_yet_signed": "not signed yet at the decision time",
    }.get(state, state)
    return Decision(
        False, None, f"general consent {consent.id} is {why}; nothing permits {purpose}"
    )


def decide_secondary(
    authorizations: Sequence[Authorization],
    purpose: str,
    at: datetime,
    *,
    image: Image | None,
    authorization_id: str | None,
) -> Decision:
    """The rule for uses beyond care: an authorization for this purpose that names the image."""
    candidates = sorted(authorizations, key=_order_key)
    if authorization_id is not None:
        candidates = [a for a in candidates if a.id == authorization_id]
        if not candidates:
            return Decision(False, None, f"authorization {authorization_id} is not on file")
        if purpose not in candidates[0].purposes:
            return Decision(
                False,
                None,
                f"authorization {authorization_id} does not cover {purpose} "
                f"(it covers {', '.join(candidates[0].purposes) or 'nothing'})",
            )
    covering = [a for a in candidates if purpose in a.purposes]
    if not covering:
        return Decision(
            False,
            None,
            f"no authorization on file covers {purpose}; a general consent never permits it",
        )
    denials: list[str] = []
    for authorization in covering:
        state = authorization_state(authorization, at)
        if state != "active":
            when = authorization.expires_at if state == "expired" else None
            suffix = f" at {when.isoformat()}" if when is not None else ""
            denials.append(f"authorization {authorization.id} is {state}{suffix}")
            continue
        if image is not None and not covers_image(authorization, image):
            denials.append(f"authorization {authorization.id} does not name image {image.id}")
            continue
        scope = f"image {image.id}" if image is not None else "the images it names"
        return Decision(
            True,
            f"authorization:{authorization.id}",
            f"active authorization covers {purpose} for {scope}",
        )
    return Decision(False, None, "; ".join(denials))


async def _take_sqlite_write_lock(session: AsyncSession) -> None:
    # SQLite readers see a snapshot and never block writers; taking the write lock first (a write
    # that matches nothing) serializes this read against revocations until the caller ends.
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(text("UPDATE authorizations SET status = status WHERE 0"))


async def decide(
    session: AsyncSession,
    *,
    tenant_id: str,
    patient_id: str,
    purpose: str,
    image_id: str | None = None,
    authorization_id: str | None = None,
    at: datetime | None = None,
    hold: bool = False,
) -> Decision:
    """Whether `purpose` is permitted for this patient (and image) at `at` (default now), and why.

    See `_decide`; this wrapper counts the outcome for the metrics (no other label).
    """
    decision = await _decide(
        session,
        tenant_id=tenant_id,
        patient_id=patient_id,
        purpose=purpose,
        image_id=image_id,
        authorization_id=authorization_id,
        at=at,
        hold=hold,
    )
    count_decision("permit" if decision.permit else "deny")
    return decision


async def _decide(
    session: AsyncSession,
    *,
    tenant_id: str,
    patient_id: str,
    purpose: str,
    image_id: str | None,
    authorization_id: str | None,
    at: datetime | None,
    hold: bool,
) -> Decision:
    """Whether `purpose` is permitted for this patient (and image) at `at` (default now), and why.

    With `hold=True` the authorizations consulted are locked until the caller's transaction ends:
    the derivative read path decides and decrypts in one transaction, so no plaintext is produced
    after a revocation of that authorization commits (the revocation waits for the read).
    """
    when = _now(at)
    if hold:
        await _take_sqlite_write_lock(session)
    if purpose not in PURPOSES:
        return Decision(False, None, f"unknown purpose {purpose!r}; one of: {', '.join(PURPOSES)}")
    image: Image | None = None
    if image_id is not None:
        image = await session.scalar(
            select(Image).where(
                Image.id == image_id, Image.tenant_id == tenant_id, Image.patient_id == patient_id
            )
        )
        if image is None:
            return Decision(False, None, f"image {image_id} is not on file for this patient")
        if image.status == "deleted":
            return Decision(False, None, f"image {image_id} was deleted")
    if purpose in ROUTINE_PURPOSES:
        consents = (
            await session.scalars(
                select(Consent).where(
                    Consent.tenant_id == tenant_id, Consent.patient_id == patient_id
                )
            )
        ).all()
        return decide_routine(consents, purpose, when)
    query = select(Authorization).where(
        Authorization.tenant_id == tenant_id, Authorization.patient_id == patient_id
    )
    if authorization_id is not None:
        query = query.where(Authorization.id == authorization_id)
    if hold:
        # PostgreSQL: FOR SHARE reads the latest committed row and blocks a revocation (an
        # UPDATE) until the caller's transaction ends; populate_existing refreshes rows the
        # session already holds.
        query = query.with_for_update(read=True).execution_options(populate_existing=True)
    authorizations = (await session.scalars(query)).all()
    return decide_secondary(
        authorizations, purpose, when, image=image, authorization_id=authorization_id
    )


class DecisionClient(Protocol):
    """Anything that answers decisions: the local function or the consent service over HTTP."""

    async def decide(
        self,
        *,
        tenant_id: str,
        patient_id: str,
        purpose: str,
        image_id: str | None = None,
        authorization_id: str | None = None,
        at: datetime | None = None,
    ) -> Decision: ...


class LocalDecisionClient:
    """Decisions over the consent tables through the caller's session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def decide(
        self,
        *,
        tenant_id: str,
        patient_id: str,
        purpose: str,
        image_id: str | None = None,
        authorization_id: str | None = None,
        at: datetime | None = None,
    ) -> Decision:
        """The in-process decision."""
        return await decide(
            self._session,
            tenant_id=tenant_id,
            patient_id=patient_id,
            purpose=purpose,
            image_id=image_id,
            authorization_id=authorization_id,
            at=at,
        )


class HttpDecisionClient:
    """Decisions from the consent service (`GET /v1/decisions`); the key fixes the tenant."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._transport = transport
        self._timeout = timeout_seconds

    async def decide(
        self,
        *,
        tenant_id: str,
        patient_id: str,
        purpose: str,
        image_id: str | None = None,
        authorization_id: str | None = None,
        at: datetime | None = None,
    ) -> Decision:
        """Ask the consent service; unreachable or failing answers 503 (never a guessed permit).

        The consent service scopes every answer to its key's tenant; `tenant_id` travels in
        `X-Clinvault-Tenant` and the service refuses (403) a key of another tenant.
        """
        params: dict[str, str] = {"patient_id": patient_id, "purpose": purpose}
        if image_id is not None:
            params["image_id"] = image_id
        if authorization_id is not None:
            params["authorization_id"] = authorization_id
        if at is not None:
            params["at"] = _now(at).isoformat()
        headers = {"Authorization": f"Bearer {self._api_key}", "X-Clinvault-Tenant": tenant_id}
        try:
            async with httpx.AsyncClient(
                base_url=self._base_url, transport=self._transport, timeout=self._timeout
            ) as client:
                response = await client.get("/v1/decisions", params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable("the consent service is unreachable") from exc
        if response.status_code == 404:
            # The image or authorization asked about is not this tenant's; the service says which
            # (it checks the image first, as `decide` does) and the local answer is this denial.
            message = str(response.json().get("error", {}).get("message", ""))
            if image_id is not None and message.startswith("image"):
                return Decision(False, None, f"image {image_id} is not on file for this patient")
            return Decision(False, None, f"authorization {authorization_id} is not on file")
        if response.status_code == 403:
            raise ServiceUnavailable("the consent service refused this service's key")
        if response.status_code != 200:
            raise ServiceUnavailable(f"the consent service answered {response.status_code}")
        body = response.json()
        return Decision(
            permit=bool(body["permit"]), basis=body.get("basis"), reason=str(body["reason"])
        )


async def decide_via(
    settings: Settings,
    session: AsyncSession,
    *,
    tenant_id: str,
    patient_id: str,
    purpose: str,
    image_id: str | None = None,
    authorization_id: str | None = None,
    at: datetime | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Decision:
    """`decide()` locally, or over HTTP when `CLINVAULT_CONSENT_SERVICE_URL` is set."""
    if not settings.consent_service_url:
        return await decide(
            session,
            tenant_id=tenant_id,
            patient_id=patient_id,
            purpose=purpose,
            image_id=image_id,
            authorization_id=authorization_id,
            at=at,
        )
    if settings.consent_service_api_key is None:
        raise ServiceUnavailable("CLINVAULT_CONSENT_SERVICE_API_KEY is not set")
    client = HttpDecisionClient(
        settings.consent_service_url,
        settings.consent_service_api_key.get_secret_value(),
        transport=transport,
    )
    return await client.decide(
        tenant_id=tenant_id,
        patient_id=patient_id,
        purpose=purpose,
        image_id=image_id,
        authorization_id=authorization_id,
        at=at,
    )


__all__ = [
    "INTERNET_PURPOSES",
    "PURPOSES",
    "ROUTINE_PURPOSES",
    "SECONDARY_PURPOSES",
    "Decision",
    "DecisionClient",
    "HttpDecisionClient",
    "LocalDecisionClient",
    "authorization_state",
    "consent_state",
    "covers_image",
    "decide",
    "decide_routine",
    "decide_secondary",
    "decide_via",
    "in_force",
]
