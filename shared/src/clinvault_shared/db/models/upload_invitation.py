from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class UploadInvitation(Base):
    """A patient upload link; only the token's hash is stored."""

    __tablename__ = "upload_invitations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    requested_by: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    max_files: Mapped[int]
    used_files: Mapped[int] = mapped_column(default=0)
    created_by_key_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
