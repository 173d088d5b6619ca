"""Every consent-service route on one router (composed into the apps by `clinvault.composition`)."""

from __future__ import annotations

from fastapi import APIRouter

from clinvault_consent.authorizations.endpoints import router as authorizations_router
from clinvault_consent.compliance.endpoints import router as compliance_router
from clinvault_consent.consents.endpoints import router as consents_router
from clinvault_consent.decisions.endpoints import router as decisions_router
from clinvault_consent.fhir.endpoints import router as fhir_router

router = APIRouter()
for _domain in (
    consents_router,
    authorizations_router,
    decisions_router,
    compliance_router,
    fhir_router,
):
    router.include_router(_domain)
