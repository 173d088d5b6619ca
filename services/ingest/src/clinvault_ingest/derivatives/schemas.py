"""Request and response models of the derivative routes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Purpose(StrEnum):
    education = "education"
    publication = "publication"
    marketing = "marketing"
    research = "research"
    ai_training = "ai_training"


class Redaction(BaseModel):
    """A region to cover, in displayed-image pixels, with what it is."""

    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(gt=0)
    h: int = Field(gt=0)
    label: str = Field(
        default="",
        max_length=32,
        pattern=r"^[a-z_]*$",
        examples=["tattoo", "birthmark", "jewellery"],
    )


class Keep(BaseModel):
    """A region no automatic redaction may cover (the lesion being documented)."""

    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(gt=0)
    h: int = Field(gt=0)


class DerivativeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: Purpose
    authorization_id: str = Field(min_length=1, max_length=40)
    redactions: list[Redaction] = Field(default_factory=list, max_length=200)
    keep: list[Keep] = Field(default_factory=list, max_length=50)


class DerivativeStatus(BaseModel):
    id: str
    image_id: str
    authorization_id: str
    purpose: str
    status: str = Field(description="processing, pending_review, approved, rejected or revoked")
    reason: str | None
    findings: dict[str, Any] = Field(description="what the de-identification found and did")
    review_note: str | None
    reviewed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ReviewDecision(StrEnum):
    approve = "approve"
    reject = "reject"


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: ReviewDecision
    note: str | None = Field(default=None, max_length=2000)
