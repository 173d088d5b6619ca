"""OpenAPI shapes of the FHIR routes (bodies are FHIR JSON, validated against R4 on import)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

FHIR_JSON = "application/fhir+json"


class FhirConsent(BaseModel):
    """An HL7 FHIR R4 Consent resource (every R4 element is accepted)."""

    model_config = ConfigDict(extra="allow")

    resourceType: Literal["Consent"]
    id: str | None = None
    status: str


class FhirBundle(BaseModel):
    """A FHIR searchset Bundle of Consent resources."""

    model_config = ConfigDict(extra="allow")

    resourceType: Literal["Bundle"]
    type: Literal["searchset"]
    total: int
    entry: list[dict[str, Any]]


class OperationOutcome(BaseModel):
    """Why a FHIR request failed, one issue per reason."""

    model_config = ConfigDict(extra="allow")

    resourceType: Literal["OperationOutcome"]
    issue: list[dict[str, Any]]
