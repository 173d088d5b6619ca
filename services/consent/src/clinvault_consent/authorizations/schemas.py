"""Request and response bodies of the authorization routes.

The create body accepts absent core elements on purpose: the service checks them against
45 CFR 164.508(c) and answers one 422 that names every missing element, in the rule's words.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class AuthorizationCreate(BaseModel):
    """A HIPAA authorization for uses beyond care (education, publication, marketing, ...)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=128)
    purposes: list[str] = Field(
        default_factory=list,
        description="education, publication, marketing, research and/or ai_training",
        examples=[["education"]],
    )
    description: str | None = Field(
        default=None, max_length=2000, description="specific description of the images"
    )
    disclosed_by: str | None = Field(
        default=None, max_length=200, description="who may disclose (person or class)"
    )
    recipients: list[str] = Field(default_factory=list, description="who may receive them")
    expires_at: AwareDatetime | None = None
    expiration_event: str | None = Field(
        default=None, max_length=500, description="an expiration event instead of a date"
    )
    internet_disclosure_acknowledged: bool = Field(
        default=False,
        description="the patient was told the images may appear on the internet or social media "
        "(required for education, publication, marketing)",
    )
    right_to_revoke_acknowledged: bool = Field(
        default=False, description="the form states the right to revoke in writing"
    )
    redisclosure_acknowledged: bool = Field(
        default=False, description="the form states that recipients may redisclose"
    )
    signed_by: str | None = Field(default=None, max_length=200)
    signed_at: AwareDatetime | None = None
    signer_is_representative: bool = Field(
        default=False, description="signed by a personal representative, not the patient"
    )
    signer_authority: str | None = Field(
        default=None, max_length=200, description="the representative's authority"
    )
    method: Literal["written", "electronic", "verbal"] | None = None
    image_ids: list[str] = Field(default_factory=list, max_length=1000)
    encounter_id: str | None = Field(default=None, max_length=128)


class AuthorizationRevoke(BaseModel):
    """Why the authorization is revoked (kept with the record)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)


class AuthorizationOut(BaseModel):
    """An authorization; `effective_status` applies `expires_at` before the expiry job runs."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    patient_id: str
    purposes: list[str]
    description: str
    disclosed_by: str | None
    recipients: list[str]
    expires_at: datetime | None
    expiration_event: str | None
    internet_disclosure_acknowledged: bool
    right_to_revoke_acknowledged: bool
    redisclosure_acknowledged: bool
    signed_by: str
    signer_authority: str | None
    signed_at: datetime
    method: str
    image_ids: list[str]
    encounter_id: str | None
    status: str
    effective_status: str
    revoked_at: datetime | None
    revocation_reason: str | None
    created_at: datetime


class RevocationOut(BaseModel):
    """The revoked authorization and what the revocation did to storage."""

    authorization: AuthorizationOut
    shred: Literal["done", "pending"] = Field(
        description="`pending`: the blob store did not answer; a retried job finishes the shred "
        "(reads already refuse: they check the status)"
    )
    objects_shredded: int
    disclosed_before_revocation: int = Field(
        description="disclosures made in reliance on it (they stand; recorded in the audit)"
    )


class AuthorizationList(BaseModel):
    """A patient's authorizations, oldest first."""

    items: list[AuthorizationOut]
