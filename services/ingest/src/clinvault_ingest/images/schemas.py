"""Request and response models of the image routes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Source(StrEnum):
    emr = "emr"
    telemedicine = "telemedicine"
    clinician_device = "clinician_device"
    patient_portal = "patient_portal"
    insecure_channel = "insecure_channel"


class UploadForm(BaseModel):
    """The form fields of `POST /v1/images`; they must come before the `file` part."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: str = Field(min_length=1, max_length=128)
    source: Source
    body_site: str | None = Field(default=None, max_length=200)
    captured_at: datetime | None = None
    encounter_id: str | None = Field(default=None, max_length=128)
    # Identifier hints for the scrubber's text matching: stored only encrypted.
    patient_name: str | None = Field(default=None, max_length=200)
    date_of_birth: str | None = Field(default=None, max_length=32)
    record_number: str | None = Field(default=None, max_length=64)

    def hints(self) -> dict[str, str]:
        values = {
            "patient_name": self.patient_name,
            "date_of_birth": self.date_of_birth,
            "record_number": self.record_number,
        }
        return {key: value for key, value in values.items() if value}


class ImageAccepted(BaseModel):
    """What `POST /v1/images` answers (202): scrubbing continues in the background."""

    id: str = Field(examples=["img_3f9a0c1d2e4b5a6978877665"])
    status: str = Field(examples=["received"])
    sha256: str = Field(description="SHA-256 of the uploaded bytes, hex")


class ImageStatus(BaseModel):
    """Where an image stands; no content and no identifier hints."""

    id: str
    patient_id: str
    source: str
    status: str = Field(description="received, processing, ready, rejected or deleted")
    reason: str | None = Field(description="why it was rejected, when it was")
    detected_format: str | None
    size: int = Field(description="bytes uploaded")
    sha256: str = Field(description="SHA-256 of the uploaded bytes, hex")
    care_size: int | None = Field(description="bytes of the care copy, once ready")
    care_sha256: str | None = Field(description="SHA-256 of the care copy, once ready")
    removed: list[Any] = Field(description="what the care scrub removed")
    captured_at: datetime | None
    body_site: str | None
    encounter_id: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class ImageList(BaseModel):
    """A page of a patient's images; pass `next_before` as `before` for the next page."""

    items: list[ImageStatus]
    next_before: str | None = None
