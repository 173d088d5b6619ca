from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class Authorization(Base):
    """A HIPAA authorization (45 CFR 164.508) for one use beyond care; it owns a scope key."""

    __tablename__ = "authorizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    purposes: Mapped[list[str]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(String(2000))
    disclosed_by: Mapped[str | None] = mapped_column(String(200))
    recipients: Mapped[list[str]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None]
    expiration_event: Mapped[str | None] = mapped_column(String(500))
    internet_disclosure_acknowledged: Mapped[bool] = mapped_column(default=False)
    right_to_revoke_acknowledged: Mapped[bool] = mapped_column(default=False)
    redisclosure_acknowledged: Mapped[bool] = mapped_column(default=False)
    signed_by: Mapped[str] = mapped_column(String(200))
    signer_authority: Mapped[str | None] = mapped_column(String(200))
    signed_at: Mapped[datetime]
    method: Mapped[str] = mapped_column(String(16))
    image_ids: Mapped[list[str]] = mapped_column(default=list)
    encounter_id: Mapped[str | None] = mapped_column(String(128))
    # active -> revoked | expired
    status: Mapped[str] = mapped_column(String(16), index=True, default="active")
    revoked_at: Mapped[datetime | None]
    revocation_reason: Mapped[str | None] = mapped_column(String(2000))
    fhir_source: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_by_key_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
