from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class Image(Base):
    """An uploaded photograph; `status` says what still has to happen to it (the work ledger)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(32))
    body_site: Mapped[str | None] = mapped_column(String(200))
    encounter_id: Mapped[str | None] = mapped_column(String(128), index=True)
    captured_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # received -> processing -> ready | rejected; deleted after a crypto-shred.
    status: Mapped[str] = mapped_column(String(16), index=True, default="received")
    reason: Mapped[str | None] = mapped_column(String(500))
    detected_format: Mapped[str | None] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    original_object_id: Mapped[str | None] = mapped_column(String(40))
    care_object_id: Mapped[str | None] = mapped_column(String(40))
    care_size: Mapped[int | None]
    # Identifier hints (name, record number, birth date) as an encrypted object, never plaintext.
    hints_object_id: Mapped[str | None] = mapped_column(String(40))
    removed: Mapped[list[Any]] = mapped_column(default=list)
    scrub_record: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(default=0)
    created_by_key_id: Mapped[str | None] = mapped_column(String(40))
    invitation_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    deleted_at: Mapped[datetime | None]
