"""The consent decision interface that ingest calls (the consent service implements it).

Placeholder until the consent service lands: it denies every purpose with an explicit reason, so
no image content can leak before decisions exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class Decision:
    permit: bool
    basis: str | None
    reason: str


async def decide(
    session: AsyncSession,
    *,
    tenant_id: str,
    patient_id: str,
    purpose: str,
    image_id: str | None = None,
    authorization_id: str | None = None,
    at: datetime | None = None,
) -> Decision:
    """Whether `purpose` is permitted for this patient (and image) now, with the basis."""
    return Decision(permit=False, basis=None, reason="consent decisions are not available yet")
