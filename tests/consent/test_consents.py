"""General consent over the API: methods, the verbal lifecycle (provisional -> active, and
provisional -> lapsed by the job), validation and the audit entries every change leaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from clinvault_consent.consents.service import lapse_overdue
from clinvault_consent.jobs import lapse_verbal_consents
from clinvault_shared import audit
from clinvault_shared.db.models import Consent
from tests.consent.conftest import ConsentApi

TENANT = "hospital-a"


def body(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "patient_id": "mrn-100",
        "purposes": ["treatment", "payment"],
        "method": "written",
        "signed_by": "the patient",
        "signed_at": datetime.now(UTC).isoformat(),
    }
    value.update(overrides)
    return value


async def decision(
    client: Any, patient_id: str = "mrn-100", purpose: str = "treatment"
) -> dict[str, Any]:
    response = await client.get(
        "/v1/decisions", params={"patient_id": patient_id, "purpose": purpose}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_written_consent_is_active_and_permits(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post("/v1/consents", json=body())
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["status"] == "active"
        assert created["documentation_due_at"] is None
        assert (await decision(client))["basis"] == f"consent:{created['id']}"
        assert (await decision(client, purpose="operations"))["permit"] is False
        fetched = await client.get(f"/v1/consents/{created['id']}")
        assert fetched.json()["purposes"] == ["treatment", "payment"]
        listed = await client.get("/v1/consents", params={"patient_id": "mrn-100"})
        assert [c["id"] for c in listed.json()["items"]] == [created["id"]]


async def test_verbal_consent_needs_a_witness(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post("/v1/consents", json=body(method="verbal"))
        assert response.status_code == 422
        assert "witness" in response.json()["error"]["message"]


async def test_general_consent_refuses_secondary_purposes(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post("/v1/consents", json=body(purposes=["treatment", "research"]))
        assert response.status_code == 422
        assert "research" in response.json()["error"]["message"]
        assert "authorization" in response.json()["error"]["message"]


async def test_verbal_provisional_then_documented_active(consent_api: ConsentApi) -> None:
    signed = datetime.now(UTC) - timedelta(hours=1)
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post(
            "/v1/consents",
            json=body(
                method="verbal",
                witness="RN on duty",
                signed_at=signed.isoformat(),
                purposes=["treatment"],
            ),
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["status"] == "provisional"
        due = datetime.fromisoformat(created["documentation_due_at"])
        assert due == signed + timedelta(hours=72)
        permitted = await decision(client)
        assert permitted["permit"] is True
        assert "provisional" in permitted["reason"]

        response = await client.post(
            f"/v1/consents/{created['id']}/documentation", json={"documentation_ref": "doc-77"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "active"
        assert response.json()["documented_at"] is not None
        again = await client.post(
            f"/v1/consents/{created['id']}/documentation", json={"documentation_ref": "doc-78"}
        )
        assert again.status_code == 409
        assert (await decision(client))["reason"].startswith("active general consent")

    async with consent_api.runtime.session() as session:
        entries = await audit.list_entries(session, tenant_id=TENANT, object_id=created["id"])
    assert [e.action for e in entries] == ["consent.create", "consent.document"]


async def test_verbal_lapses_when_overdue_and_documentation_restores(
    consent_api: ConsentApi,
) -> None:
    signed = datetime.now(UTC) - timedelta(hours=10)
    async with await consent_api.client(TENANT, "consent_admin") as client:
        created = (
            await client.post(
                "/v1/consents",
                json=body(method="verbal", witness="RN", signed_at=signed.isoformat()),
            )
        ).json()
        assert created["status"] == "provisional"
        # Frozen clock: the lapse run as of one second past the deadline.
        due = datetime.fromisoformat(created["documentation_due_at"])
        async with consent_api.runtime.session() as session:
            assert await lapse_overdue(session, at=due - timedelta(seconds=1)) == 0
        async with consent_api.runtime.session() as session:
            assert await lapse_overdue(session, at=due + timedelta(seconds=1)) == 1
        fetched = (await client.get(f"/v1/consents/{created['id']}")).json()
        assert fetched["status"] == "lapsed"
        assert (await decision(client))["permit"] is False
        report = (await client.get("/v1/compliance/report")).json()
        assert [c["id"] for c in report["lapsed_verbal_consents"]] == [created["id"]]

        documented = await client.post(
            f"/v1/consents/{created['id']}/documentation", json={"documentation_ref": "late scan"}
        )
        assert documented.json()["status"] == "active"
        assert (await decision(client))["permit"] is True
    async with consent_api.runtime.session() as session:
        entries = await audit.list_entries(session, tenant_id=TENANT, object_id=created["id"])
    assert [e.action for e in entries] == ["consent.create", "consent.lapse", "consent.document"]
    assert entries[2].detail["from"] == "lapsed"


async def test_lapse_job_and_overdue_report(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        created = (
            await client.post("/v1/consents", json=body(method="verbal", witness="RN"))
        ).json()
        # Overdue but not yet lapsed (the job has not run): the report shows it as overdue, and
        # the decision already refuses it.
        async with consent_api.runtime.session() as session:
            await session.execute(
                update(Consent)
                .where(Consent.id == created["id"])
                .values(documentation_due_at=datetime.now(UTC) - timedelta(minutes=1))
            )
            await session.commit()
        report = (await client.get("/v1/compliance/report")).json()
        assert [c["id"] for c in report["overdue_verbal_consents"]] == [created["id"]]
        assert (await decision(client))["permit"] is False
        assert await lapse_verbal_consents({"runtime": consent_api.runtime}) == 1
        assert await lapse_verbal_consents({"runtime": consent_api.runtime}) == 0
        report = (await client.get("/v1/compliance/report")).json()
        assert report["overdue_verbal_consents"] == []
        assert [c["id"] for c in report["lapsed_verbal_consents"]] == [created["id"]]


async def test_revoked_consent_permits_nothing(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        created = (await client.post("/v1/consents", json=body())).json()
        response = await client.post(f"/v1/consents/{created['id']}/revoke")
        assert response.json()["status"] == "revoked"
        assert (await client.post(f"/v1/consents/{created['id']}/revoke")).status_code == 409
        assert (await decision(client))["permit"] is False


async def test_roles_are_enforced(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "auditor") as client:
        assert (await client.post("/v1/consents", json=body())).status_code == 403
    async with await consent_api.client(TENANT, "reviewer") as client:
        response = await client.get("/v1/consents", params={"patient_id": "mrn-100"})
        assert response.status_code == 403
