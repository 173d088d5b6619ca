"""Request and response bodies of the general-consent routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

RoutinePurpose = Literal["treatment", "payment", "operations"]
ConsentMethod = Literal["written", "electronic", "verbal"]
ConsentStatus = Literal["provisional", "active", "lapsed", "revoked"]


class ConsentCreate(BaseModel):
    """A general consent for routine purposes; verbal ones need a witness."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=128)
    purposes: list[str] = Field(
        min_length=1, description="treatment, payment and/or operations", examples=[["treatment"]]
    )
    method: ConsentMethod
    signed_by: str = Field(min_length=1, max_length=200, description="who agreed")
    signed_at: AwareDatetime = Field(description="when they agreed (timezone required)")
    witness: str | None = Field(default=None, max_length=200, description="required for verbal")
    documentation_ref: str | None = Field(
        default=None, max_length=500, description="reference to the signed record, if any"
    )


class ConsentDocumentation(BaseModel):
    """The written record that makes a verbal consent active."""

    model_config = ConfigDict(extra="forbid")

    documentation_ref: str = Field(
        min_length=1, max_length=500, description="document id or URL of the written record"
    )


class ConsentOut(BaseModel):
    """A general consent; `effective_status` applies the deadline to a provisional one."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    patient_id: str
    purposes: list[str]
    method: str
    signed_by: str
    signed_at: datetime
    witness: str | None
    status: str
    effective_status: str
    documentation_due_at: datetime | None
    documented_at: datetime | None
    documentation_ref: str | None
    revoked_at: datetime | None
    created_at: datetime


class ConsentList(BaseModel):
    """A patient's general consents, oldest first."""

    items: list[ConsentOut]
