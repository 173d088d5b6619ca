from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from clinvault_shared.db.base import Base, utcnow


class ScopeKey(Base):
    """A key per (tenant, patient, scope), wrapped by a master key version.

    Destroying it sets `wrapped_key` to NULL and `destroyed_at`: the row stays as a tombstone so a
    restored backup can be reconciled against it (docs/keys.md).
    """

    __tablename__ = "scope_keys"
    # One live key per (tenant, patient, scope); tombstones stay beside it. After an erasure a new
    # upload for the same patient gets a fresh care key (the old one stays a tombstone).
    __table_args__ = (
        Index(
            "uq_scope_keys_live",
            "tenant_id",
            "patient_ref",
            "scope",
            unique=True,
            sqlite_where=text("destroyed_at IS NULL"),
            postgresql_where=text("destroyed_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    # Keyed pseudonym of the patient id: the key table never holds the identifier itself.
    patient_ref: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(64))
    kek_version: Mapped[int | None]
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    destroyed_at: Mapped[datetime | None]
