"""FHIR R4 Consent: every export validates against fhir.resources (R4B, R4's Consent), search
gives a Bundle, import round-trips, and shapes that cannot map get a 422 OperationOutcome."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent as R4Consent
from fhir.resources.R4B.operationoutcome import OperationOutcome

from tests.consent.conftest import ConsentApi, authorization_body

TENANT = "hospital-a"
PATIENT = "mrn-400"
FHIR = {"Content-Type": "application/fhir+json"}


async def seed(api: ConsentApi) -> dict[str, Any]:
    image_id = await api.image(TENANT, PATIENT, encounter_id="enc-9")
    signed = datetime.now(UTC) - timedelta(hours=2)
    async with await api.client(TENANT, "consent_admin") as client:
        written = (
            await client.post(
                "/v1/consents",
                json={
                    "patient_id": PATIENT,
                    "purposes": ["treatment", "operations"],
                    "method": "written",
                    "signed_by": "the patient",
                    "signed_at": signed.isoformat(),
                    "documentation_ref": "https://emr.example/docs/1",
                },
            )
        ).json()
        verbal = (
            await client.post(
                "/v1/consents",
                json={
                    "patient_id": PATIENT,
                    "purposes": ["treatment"],
                    "method": "verbal",
                    "signed_by": "the patient",
                    "signed_at": signed.isoformat(),
                    "witness": "charge nurse",
                },
            )
        ).json()
        by_image = (
            await client.post(
                "/v1/authorizations",
                json=authorization_body(
                    PATIENT,
                    purposes=["education", "publication"],
                    image_ids=[image_id],
                    encounter_id=None,
                ),
            )
        ).json()
        by_event = (
            await client.post(
                "/v1/authorizations",
                json=authorization_body(
                    PATIENT,
                    purposes=["research"],
                    expires_at=None,
                    expiration_event="end of study",
                    internet_disclosure_acknowledged=False,
                    signer_is_representative=True,
                    signer_authority="parent",
                ),
            )
        ).json()
        revoked = (
            await client.post(
                "/v1/authorizations", json=authorization_body(PATIENT, purposes=["ai_training"])
            )
        ).json()
        await client.post(f"/v1/authorizations/{revoked['id']}/revoke", json={"reason": "x"})
    return {
        "written": written,
        "verbal": verbal,
        "by_image": by_image,
        "by_event": by_event,
        "revoked": revoked,
        "image_id": image_id,
    }


async def test_every_export_is_a_valid_r4_consent(consent_api: ConsentApi) -> None:
    records = await seed(consent_api)
    async with await consent_api.client(TENANT, "auditor") as client:
        exported = {}
        for name in ("written", "verbal", "by_image", "by_event", "revoked"):
            response = await client.get(f"/fhir/Consent/{records[name]['id']}")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/fhir+json")
            resource = R4Consent.model_validate(response.json())
            assert resource.id == records[name]["id"].replace("_", "-")
            exported[name] = response.json()
    assert exported["written"]["status"] == "active"
    assert exported["verbal"]["status"] == "proposed"
    assert exported["revoked"]["status"] == "inactive"
    assert exported["by_image"]["provision"]["data"] == [
        {"meaning": "instance", "reference": {"reference": f"Media/{records['image_id']}"}}
    ]
    assert {c["code"] for c in exported["by_image"]["provision"]["purpose"]} >= {
        "education",
        "publication",
    }
    assert exported["by_event"]["scope"]["coding"][0]["code"] == "research"
    assert exported["written"]["patient"] == {"reference": f"Patient/{PATIENT}"}


async def test_search_by_patient_is_a_valid_bundle(consent_api: ConsentApi) -> None:
    records = await seed(consent_api)
    async with await consent_api.client(TENANT, "auditor") as client:
        for patient in (PATIENT, f"Patient/{PATIENT}"):
            response = await client.get("/fhir/Consent", params={"patient": patient})
            assert response.status_code == 200
            bundle = Bundle.model_validate(response.json())
            assert bundle.type == "searchset"
            assert bundle.total == 5
            ids = {entry.resource.id for entry in bundle.entry}
            assert ids == {
                records[n]["id"].replace("_", "-")
                for n in ("written", "verbal", "by_image", "by_event", "revoked")
            }
        empty = (await client.get("/fhir/Consent", params={"patient": "nobody"})).json()
        assert empty["total"] == 0


def _comparable(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.pop("id")
    return out


async def test_import_round_trip(consent_api: ConsentApi) -> None:
    records = await seed(consent_api)
    async with await consent_api.client(TENANT, "consent_admin") as client:
        for name in ("written", "verbal", "by_image", "by_event"):
            exported = (await client.get(f"/fhir/Consent/{records[name]['id']}")).json()
            incoming = copy.deepcopy(exported)
            incoming.pop("id")
            response = await client.post("/fhir/Consent", json=incoming, headers=FHIR)
            assert response.status_code == 201, response.text
            created = response.json()
            assert created["id"] != exported["id"]
            assert response.headers["location"] == f"/fhir/Consent/{created['id']}"
            R4Consent.model_validate(created)
            assert _comparable(created) == _comparable(exported), name
        # The imported records decide like the originals.
        decision = (
            await client.get(
                "/v1/decisions",
                params={
                    "patient_id": PATIENT,
                    "purpose": "publication",
                    "image_id": records["image_id"],
                },
            )
        ).json()
        assert decision["permit"] is True


async def test_import_from_an_emr_with_v3_codes(consent_api: ConsentApi) -> None:
    resource = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "treatment",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/emr-17"},
        "dateTime": "2025-01-01T09:00:00+01:00",
        "performer": [{"reference": "Patient/emr-17", "display": "J. Doe"}],
        "sourceAttachment": {"url": "https://emr.example/consents/17.pdf"},
        "provision": {
            "type": "permit",
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"},
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HPAYMT"},
            ],
        },
    }
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post("/fhir/Consent", json=resource, headers=FHIR)
        assert response.status_code == 201, response.text
        record_id = response.json()["id"].replace("-", "_", 1)
        consent = (await client.get(f"/v1/consents/{record_id}")).json()
    assert consent["purposes"] == ["treatment", "payment"]
    assert consent["method"] == "written"
    assert consent["signed_by"] == "J. Doe"
    assert consent["documentation_ref"] == "https://emr.example/consents/17.pdf"
    assert consent["status"] == "active"


GOOD = {
    "resourceType": "Consent",
    "status": "active",
    "scope": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}
        ]
    },
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/emr-18"},
    "dateTime": "2025-01-01T09:00:00Z",
    "performer": [{"display": "J. Doe"}],
    "provision": {
        "type": "permit",
        "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
        ],
    },
}


def variant(**changes: Any) -> dict[str, Any]:
    resource = copy.deepcopy(GOOD)
    for path, value in changes.items():
        target = resource
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return resource


UNMAPPABLE = [
    ("deny provision", variant(provision__type="deny"), "only permit provisions"),
    ("nested provision", variant(provision__provision=[{"type": "deny"}]), "nested provisions"),
    (
        "unknown purpose",
        variant(provision__purpose=[{"system": "urn:x", "code": "ZZZ"}]),
        "urn:x|ZZZ has no clinvault purpose",
    ),
    ("no category", variant(category=[{"text": "consent"}]), "cannot tell a general consent"),
    ("draft", variant(status="draft"), "only active or proposed"),
    ("patient is a group", variant(patient={"reference": "Group/1"}), "Patient/<id>"),
    (
        "general consent with an end",
        variant(provision__period={"end": "2031-01-01T00:00:00Z"}),
        "no end date",
    ),
    (
        "data of another type",
        variant(
            provision__data=[{"meaning": "instance", "reference": {"reference": "Observation/1"}}]
        ),
        "provision.data",
    ),
    ("actions", variant(provision__action=[{"text": "access"}]), "provision.action"),
    ("date without zone", variant(dateTime="2025-01-01"), "timezone"),
    (
        "secondary purpose in a general consent",
        variant(
            provision__purpose=[
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}
            ]
        ),
        "need(s) an authorization",
    ),
    ("not R4", variant(status=17), "status"),
    ("not a Consent", {"resourceType": "Patient"}, "must be Consent"),
]


@pytest.mark.parametrize(
    ("shape", "expected"), [(u[1], u[2]) for u in UNMAPPABLE], ids=[u[0] for u in UNMAPPABLE]
)
async def test_unmappable_shapes_get_an_operation_outcome(
    consent_api: ConsentApi, shape: dict[str, Any], expected: str
) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        assert (await client.post("/fhir/Consent", json=GOOD, headers=FHIR)).status_code == 201
        response = await client.post("/fhir/Consent", json=shape, headers=FHIR)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = OperationOutcome.model_validate(response.json())
    diagnostics = " | ".join(issue.diagnostics or "" for issue in outcome.issue)
    assert expected in diagnostics


async def test_incomplete_authorization_import_names_the_elements(consent_api: ConsentApi) -> None:
    resource = variant(
        category=[{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
        provision={
            "type": "permit",
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HMARKT"}
            ],
        },
    )
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post("/fhir/Consent", json=resource, headers=FHIR)
    assert response.status_code == 422
    diagnostics = OperationOutcome.model_validate(response.json()).issue[0].diagnostics or ""
    for element in ("recipients", "description", "internet_disclosure_acknowledged"):
        assert element in diagnostics


async def test_fhir_errors_are_operation_outcomes(consent_api: ConsentApi) -> None:
    records = await seed(consent_api)
    async with await consent_api.client("hospital-b", "admin") as other:
        response = await other.get(f"/fhir/Consent/{records['written']['id']}")
        assert response.status_code == 404
        assert OperationOutcome.model_validate(response.json()).issue[0].code == "not-found"
    async with await consent_api.client(TENANT, "reviewer") as reviewer:
        response = await reviewer.get(f"/fhir/Consent/{records['written']['id']}")
        assert response.status_code == 403
        OperationOutcome.model_validate(response.json())
