"""Tenant isolation across every consent route, the compliance report, the accounting of
disclosures, the chain check, and the OpenAPI contract of every route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from clinvault_shared import audit
from tests.consent.conftest import ConsentApi, authorization_body

A, B = "hospital-a", "hospital-b"
PATIENT = "mrn-500"


async def seed_a(api: ConsentApi) -> dict[str, str]:
    image_id = await api.image(A, PATIENT)
    async with await api.client(A, "admin") as client:
        consent = (
            await client.post(
                "/v1/consents",
                json={
                    "patient_id": PATIENT,
                    "purposes": ["treatment"],
                    "method": "verbal",
                    "signed_by": "p",
                    "signed_at": datetime.now(UTC).isoformat(),
                    "witness": "w",
                },
            )
        ).json()
        authorization = (
            await client.post(
                "/v1/authorizations", json=authorization_body(PATIENT, image_ids=[image_id])
            )
        ).json()
    return {"consent": consent["id"], "authorization": authorization["id"], "image": image_id}


async def test_another_tenants_objects_are_404_on_every_route(consent_api: ConsentApi) -> None:
    ids = await seed_a(consent_api)
    c, a = ids["consent"], ids["authorization"]
    object_calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/consents/{c}", {}),
        ("POST", f"/v1/consents/{c}/documentation", {"json": {"documentation_ref": "d"}}),
        ("POST", f"/v1/consents/{c}/revoke", {}),
        ("GET", f"/v1/authorizations/{a}", {}),
        ("POST", f"/v1/authorizations/{a}/revoke", {"json": {"reason": "r"}}),
        (
            "GET",
            "/v1/decisions",
            {"params": {"patient_id": PATIENT, "purpose": "education", "authorization_id": a}},
        ),
        (
            "GET",
            "/v1/decisions",
            {"params": {"patient_id": PATIENT, "purpose": "treatment", "image_id": ids["image"]}},
        ),
        ("GET", f"/fhir/Consent/{c.replace('_', '-')}", {}),
        ("GET", f"/fhir/Consent/{a}", {}),
        (
            "POST",
            "/v1/authorizations",
            {"json": authorization_body(PATIENT, image_ids=[ids["image"]])},
        ),
    ]
    covered: set[tuple[str, str]] = set()
    async with await consent_api.client(B, "admin") as other:
        for method, url, kwargs in object_calls:
            response = await other.request(method, url, **kwargs)
            assert response.status_code == 404, (method, url, response.text)
            covered.add((method, _template(url)))
        # Collection routes: tenant B sees nothing of tenant A's patient.
        listing_calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/v1/consents", {"params": {"patient_id": PATIENT}}),
            ("GET", "/v1/authorizations", {"params": {"patient_id": PATIENT}}),
            ("GET", "/fhir/Consent", {"params": {"patient": PATIENT}}),
            ("GET", "/v1/audit", {"params": {"patient_id": PATIENT}}),
            ("GET", "/v1/compliance/report", {}),
        ]
        for method, url, kwargs in listing_calls:
            response = await other.request(method, url, **kwargs)
            assert response.status_code == 200, (url, response.text)
            body = response.text
            assert c not in body
            assert a not in body
            assert c.replace("_", "-") not in body
            covered.add((method, url))
        verify = await other.get("/v1/audit/verify")
        assert verify.json()["entries"] == 0
        covered.add(("GET", "/v1/audit/verify"))
        # Creating records in B is allowed and stays in B (not a 404 route).
        covered.update({("POST", "/v1/consents"), ("POST", "/fhir/Consent")})
    # Tenant A's records are untouched by B's attempts.
    async with await consent_api.client(A, "admin") as client:
        assert (await client.get(f"/v1/consents/{c}")).json()["status"] == "provisional"
        assert (await client.get(f"/v1/authorizations/{a}")).json()["status"] == "active"
    routes = consent_routes(consent_api)
    assert len(routes) == 16
    assert routes <= covered, f"routes not walked: {routes - covered}"


def consent_routes(api: ConsentApi) -> set[tuple[str, str]]:
    """(METHOD, path) of every consent route, from the served OpenAPI (not the router objects:
    FastAPI may include routers lazily)."""
    operations = ("get", "post", "put", "patch", "delete")
    return {
        (method.upper(), path)
        for path, item in api.app.openapi()["paths"].items()
        if path not in ("/healthz", "/readyz", "/metrics")
        for method in item
        if method in operations
    }


def _template(url: str) -> str:
    parts = url.split("/")
    names = {
        "consents": "{consent_id}",
        "authorizations": "{authorization_id}",
        "Consent": "{resource_id}",
    }
    for index in range(1, len(parts)):
        if parts[index - 1] in names and parts[index]:
            parts[index] = names[parts[index - 1]]
    return "/".join(parts)


async def test_compliance_report_and_accounting(consent_api: ConsentApi) -> None:
    ids = await seed_a(consent_api)
    insecure = await consent_api.image(A, PATIENT, source="insecure_channel")
    old_insecure = await consent_api.image(
        A, PATIENT, source="insecure_channel", created_at=datetime.now(UTC) - timedelta(days=90)
    )
    async with consent_api.runtime.session() as session:
        # What ingest records for a break-glass read and an ordinary one.
        await audit.record(
            session,
            tenant_id=A,
            actor_key_id="key_er",
            action="image.read_content",
            outcome="allowed",
            object_id=ids["image"],
            patient_id=PATIENT,
            purpose="treatment",
            detail={"break_glass": True},
        )
        await audit.record(
            session,
            tenant_id=A,
            actor_key_id="key_gp",
            action="image.read_content",
            outcome="allowed",
            object_id=ids["image"],
            patient_id=PATIENT,
            purpose="treatment",
            detail={"basis": "consent:x"},
        )
        await session.commit()
    async with await consent_api.client(A, "auditor") as client:
        report = (await client.get("/v1/compliance/report")).json()
        assert [r["actor_key_id"] for r in report["break_glass_reads"]] == ["key_er"]
        assert [i["image_id"] for i in report["insecure_channel_intakes"]] == [insecure]
        assert old_insecure not in str(report)
        assert [x["id"] for x in report["expiring_authorizations"]] == []
        # The accounting of disclosures for the patient: who, what, when, for what purpose.
        page = (await client.get("/v1/audit", params={"patient_id": PATIENT})).json()
        actions = [e["action"] for e in page["entries"]]
        assert actions == [
            "consent.create",
            "authorization.create",
            "image.read_content",
            "image.read_content",
        ]
        reads = [e for e in page["entries"] if e["action"] == "image.read_content"]
        assert {e["actor_key_id"] for e in reads} == {"key_er", "key_gp"}
        assert all(e["purpose"] == "treatment" for e in reads)
        paged = (await client.get("/v1/audit", params={"patient_id": PATIENT, "limit": 2})).json()
        assert len(paged["entries"]) == 2
        rest = (
            await client.get(
                "/v1/audit", params={"patient_id": PATIENT, "after_seq": paged["next_after_seq"]}
            )
        ).json()
        assert [e["action"] for e in rest["entries"]] == actions[2:]
        verify = (await client.get("/v1/audit/verify")).json()
        assert verify["ok"] is True
        assert verify["entries"] == 4
        # The report is read only and the auditor cannot write.
        assert (await client.post("/v1/consents", json={})).status_code == 403


async def test_every_route_is_documented(consent_api: ConsentApi) -> None:
    spec = consent_api.app.openapi()
    ours = {path for _, path in consent_routes(consent_api)}
    assert len(ours) == 13
    for path in ours:
        for method, operation in spec["paths"][path].items():
            assert operation.get("summary"), (method, path)
            assert "401" in operation["responses"], (method, path)
            assert any(code.startswith("2") for code in operation["responses"]), (method, path)
            success = next(v for k, v in operation["responses"].items() if k.startswith("2"))
            assert success.get("content"), (method, path)
            if method == "post" and path != "/v1/consents/{consent_id}/revoke":
                assert "requestBody" in operation, (method, path)
