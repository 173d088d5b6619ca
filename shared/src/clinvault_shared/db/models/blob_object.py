from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class BlobObject(Base):
    """One encrypted object: its data key wrapped by its scope key; the name is the random id."""

    __tablename__ = "blob_objects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scope_key_id: Mapped[str] = mapped_column(ForeignKey("scope_keys.id"), index=True)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    plaintext_size: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    destroyed_at: Mapped[datetime | None]
