"""FHIR R4 Consent routes; every failure answers an OperationOutcome, as FHIR clients expect."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from clinvault_consent.fhir import service
from clinvault_consent.fhir.mapping import operation_outcome
from clinvault_consent.fhir.schemas import FHIR_JSON, FhirBundle, FhirConsent, OperationOutcome
from clinvault_shared.auth import Permission, Principal
from clinvault_shared.errors import ClinvaultError
from clinvault_shared.web import RuntimeDep, SessionDep, require


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


class FhirRoute(APIRoute):
    """Renders errors (auth, validation, not found, unmappable) as OperationOutcome."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ClinvaultError as exc:
                issues = getattr(exc, "issues", None) or [exc.message]
                headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
                return FhirResponse(
                    operation_outcome(exc.status_code, issues), exc.status_code, headers=headers
                )
            except RequestValidationError as exc:
                issues = [
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()[:20]
                ]
                return FhirResponse(operation_outcome(422, issues), 422)

        return fhir_handler


def _outcomes(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": OperationOutcome,
            "description": "OperationOutcome",
            "content": {FHIR_JSON: {}},
        }
        for status in (401, *statuses)
    }


router = APIRouter(prefix="/fhir", tags=["fhir"], route_class=FhirRoute)
Reader = Annotated[Principal, Depends(require(Permission.CONSENTS_READ))]
Writer = Annotated[Principal, Depends(require(Permission.CONSENTS_WRITE))]


@router.get(
    "/Consent/{resource_id}",
    response_model=FhirConsent,
    response_class=FhirResponse,
    responses=_outcomes(403, 404),
    summary="Read a consent or authorization as FHIR R4 Consent",
)
async def read_consent(resource_id: str, session: SessionDep, principal: Reader) -> Response:
    """General consents and HIPAA authorizations share the Consent resource."""
    return FhirResponse(await service.read(session, principal, resource_id))


@router.get(
    "/Consent",
    response_model=FhirBundle,
    response_class=FhirResponse,
    responses=_outcomes(403, 422),
    summary="Search a patient's Consents (searchset Bundle)",
)
async def search_consents(
    request: Request,
    session: SessionDep,
    principal: Reader,
    patient: Annotated[str, Query(min_length=1, max_length=136, description="id or Patient/id")],
) -> Response:
    """Every consent and authorization of the patient, oldest first."""
    base = str(request.base_url).rstrip("/")
    return FhirResponse(await service.search(session, principal, patient, base))


@router.post(
    "/Consent",
    status_code=201,
    response_model=FhirConsent,
    response_class=FhirResponse,
    responses=_outcomes(403, 404, 422),
    summary="Import a FHIR R4 Consent from an EMR (422 OperationOutcome when it cannot map)",
)
async def import_consent(
    session: SessionDep,
    runtime: RuntimeDep,
    principal: Writer,
    resource: Annotated[dict[str, Any], Body(media_type=FHIR_JSON)],
) -> Response:
    """Maps category, provision.purpose/period/data/actor, performer and sourceAttachment."""
    created = await service.import_consent(session, principal, resource, runtime.settings)
    return FhirResponse(created, 201, headers={"Location": f"/fhir/Consent/{created['id']}"})
