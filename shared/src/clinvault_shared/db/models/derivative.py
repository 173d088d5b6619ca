from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class Derivative(Base):
    """A de-identified copy made for one authorization, stored under that authorization's key."""

    __tablename__ = "derivatives"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    authorization_id: Mapped[str] = mapped_column(String(40), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    redactions: Mapped[list[Any]] = mapped_column(default=list)
    keep: Mapped[list[Any]] = mapped_column(default=list)
    # processing -> pending_review -> approved | rejected; revoked when its authorization ends.
    status: Mapped[str] = mapped_column(String(16), index=True, default="processing")
    reason: Mapped[str | None] = mapped_column(String(500))
    findings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    object_id: Mapped[str | None] = mapped_column(String(40))
    review_note: Mapped[str | None] = mapped_column(String(2000))
    reviewed_by_key_id: Mapped[str | None] = mapped_column(String(40))
    reviewed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    created_by_key_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
