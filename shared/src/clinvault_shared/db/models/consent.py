from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class Consent(Base):
    """A general consent for routine purposes (treatment, payment, operations)."""

    __tablename__ = "consents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    purposes: Mapped[list[str]] = mapped_column(default=list)
    method: Mapped[str] = mapped_column(String(16))
    signed_by: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[datetime]
    witness: Mapped[str | None] = mapped_column(String(200))
    # provisional (verbal, awaiting documentation) -> active; lapsed; revoked.
    status: Mapped[str] = mapped_column(String(16), index=True)
    documentation_due_at: Mapped[datetime | None]
    documented_at: Mapped[datetime | None]
    documentation_ref: Mapped[str | None] = mapped_column(String(500))
    revoked_at: Mapped[datetime | None]
    fhir_source: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_by_key_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
