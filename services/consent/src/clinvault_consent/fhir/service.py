"""FHIR Consent: read, search by patient, import from an EMR (same rules as the API)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_consent.authorizations import repository as authorization_repository
from clinvault_consent.authorizations import service as authorization_service
from clinvault_consent.authorizations.validation import AuthorizationDraft
from clinvault_consent.common import now
from clinvault_consent.consents import repository as consent_repository
from clinvault_consent.consents import service as consent_service
from clinvault_consent.consents.schemas import ConsentCreate
from clinvault_consent.fhir.mapping import (
    FhirUnmappable,
    authorization_to_fhir,
    consent_to_fhir,
    from_fhir,
    record_id,
)
from clinvault_shared.auth import Principal
from clinvault_shared.errors import NotFound
from clinvault_shared.settings import Settings


async def read(session: AsyncSession, principal: Principal, resource_id: str) -> dict[str, Any]:
    """A consent (`cns-...`) or authorization (`aut-...`) of the caller's tenant as FHIR."""
    resource_id = record_id(resource_id)
    if resource_id.startswith("cns_"):
        consent = await consent_repository.get(
            session, tenant_id=principal.tenant_id, consent_id=resource_id
        )
        if consent is not None:
            return consent_to_fhir(consent)
    elif resource_id.startswith("aut_"):
        authorization = await authorization_repository.get(
            session, tenant_id=principal.tenant_id, authorization_id=resource_id
        )
        if authorization is not None:
            return authorization_to_fhir(authorization)
    raise NotFound("no such Consent")


async def search(
    session: AsyncSession, principal: Principal, patient: str, base_url: str
) -> dict[str, Any]:
    """A searchset Bundle of every consent and authorization of the patient."""
    patient_id = patient.removeprefix("Patient/")
    consents = await consent_repository.list_for_patient(
        session, tenant_id=principal.tenant_id, patient_id=patient_id
    )
    authorizations = await authorization_repository.list_for_patient(
        session, tenant_id=principal.tenant_id, patient_id=patient_id
    )
    dated: list[tuple[tuple[datetime, str], dict[str, Any]]] = [
        ((c.signed_at, c.id), consent_to_fhir(c)) for c in consents
    ]
    dated += [((a.signed_at, a.id), authorization_to_fhir(a)) for a in authorizations]
    resources = [resource for _, resource in sorted(dated, key=lambda pair: pair[0])]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/Consent/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def _r4_issues(resource: dict[str, Any]) -> list[str]:
    # Structural validation against the R4 Consent (R4B's is the same for these elements).
    from fhir.resources.R4B.consent import Consent as R4Consent

    try:
        R4Consent.model_validate(resource)
    except ValidationError as exc:
        # Locations and messages only: pydantic's "input" would echo submitted values.
        return [
            f"{'.'.join(str(p) for p in error['loc']) or 'Consent'}: {error['msg']}"
            for error in exc.errors()[:20]
        ]
    return []


async def import_consent(
    session: AsyncSession, principal: Principal, resource: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Create a consent or authorization from an EMR's FHIR Consent; 422 OperationOutcome for a
    shape that cannot be mapped, with every reason."""
    if resource.get("resourceType") != "Consent":
        raise FhirUnmappable(["resourceType: must be Consent"])
    issues = _r4_issues(resource)
    if issues:
        raise FhirUnmappable(issues)
    fields = from_fhir(resource)
    at = now()
    kind = fields.pop("kind")
    fields.pop("status")
    if kind == "general":
        body = ConsentCreate.model_validate(fields)
        consent = consent_service.build_consent(
            body,
            tenant_id=principal.tenant_id,
            actor_key_id=principal.key_id,
            settings=settings,
            at=at,
        )
        consent.fhir_source = resource
        await consent_service.record_created(
            session, consent, actor_key_id=principal.key_id, source="fhir"
        )
        await session.commit()
        return consent_to_fhir(consent)
    patient_id = fields.pop("patient_id")
    authorization = await authorization_service.build_authorization(
        session,
        AuthorizationDraft(**fields),
        tenant_id=principal.tenant_id,
        patient_id=patient_id,
        actor_key_id=principal.key_id,
        at=at,
    )
    authorization.fhir_source = resource
    await authorization_service.record_created(
        session, authorization, actor_key_id=principal.key_id, source="fhir"
    )
    await session.commit()
    return authorization_to_fhir(authorization)
