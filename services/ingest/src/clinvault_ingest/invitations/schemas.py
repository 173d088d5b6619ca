"""Request and response models of the upload-invitation routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class InvitationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: str = Field(min_length=1, max_length=128)
    expires_in_minutes: int = Field(default=60 * 24, gt=0, le=60 * 24 * 30)
    max_files: int = Field(default=10, gt=0, le=100)
    requested_by: str | None = Field(
        default=None,
        max_length=200,
        description="Who asks, shown to the patient (e.g. 'Dr. Rivera, Dermatology')",
    )


class InvitationCreated(BaseModel):
    """The link for the patient; the token is shown only now (stored as a hash)."""

    id: str
    token: str
    url: str
    expires_at: datetime
    max_files: int


class InvitationRevoked(BaseModel):
    """The link no longer opens; the patient sees a page that says to ask for a new one."""

    id: str
    revoked_at: datetime
