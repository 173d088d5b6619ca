"""Authorizations: the 164.508(c) core elements, tiers, revocation with crypto-shredding (a
derivative-like object under `auth:<id>`), a deferred shred, and the revocation race."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from clinvault_consent.authorizations import service
from clinvault_consent.jobs import shred_authorization
from clinvault_shared import audit
from clinvault_shared.auth import Principal
from clinvault_shared.blobstore import EncryptedBlobStore, KeyDestroyed
from clinvault_shared.blobstore.backend import store_from_url
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import Derivative
from clinvault_shared.decisions import decide
from tests.consent.conftest import ConsentApi, authorization_body

TENANT = "hospital-a"
PATIENT = "mrn-200"
PLAINTEXT = b"de-identified derivative pixels" * 100


async def create(api: ConsentApi, **overrides: Any) -> dict[str, Any]:
    image_id = await api.image(TENANT, PATIENT, encounter_id="enc-1")
    async with await api.client(TENANT, "consent_admin") as client:
        response = await client.post(
            "/v1/authorizations",
            json=authorization_body(PATIENT, image_ids=[image_id], **overrides),
        )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def store_derivative(api: ConsentApi, authorization_id: str) -> str:
    """What ingest's derivative job does: encrypt under the authorization's scope key."""
    async with api.runtime.session() as session:
        stored = await api.runtime.blobs.put(
            session,
            tenant_id=TENANT,
            patient_id=PATIENT,
            scope=f"auth:{authorization_id}",
            data=PLAINTEXT,
        )
        await session.commit()
    return stored.object_id


async def read_for(api: ConsentApi, authorization_id: str, object_id: str) -> bytes:
    """The derivative read path: decide and decrypt in one transaction (decide holds the row)."""
    async with api.runtime.session() as session:
        decision = await decide(
            session,
            tenant_id=TENANT,
            patient_id=PATIENT,
            purpose="education",
            authorization_id=authorization_id,
            hold=True,
        )
        if not decision.permit:
            raise PermissionError(decision.reason)
        data = await api.runtime.blobs.read_all(session, object_id)
        await session.commit()
    return data


MISSING_CASES = [
    ({"description": None}, "description"),
    ({"image_ids": [], "encounter_id": None}, "image_ids or encounter_id"),
    ({"disclosed_by": None}, "disclosed_by"),
    ({"recipients": []}, "recipients"),
    ({"purposes": []}, "purposes"),
    ({"purposes": ["treatment"]}, "need(s) a general consent"),
    ({"expires_at": None}, "expires_at or expiration_event"),
    ({"expires_at": "2001-01-01T00:00:00Z"}, "already past"),
    ({"signed_by": None}, "signed_by"),
    ({"signed_at": None}, "signed_at"),
    ({"signer_is_representative": True}, "signer_authority"),
    ({"right_to_revoke_acknowledged": False}, "right_to_revoke_acknowledged"),
    ({"redisclosure_acknowledged": False}, "redisclosure_acknowledged"),
    ({"internet_disclosure_acknowledged": False}, "internet_disclosure_acknowledged"),
    ({"method": "verbal"}, "a verbal agreement never makes an authorization"),
    ({"method": None}, "method"),
]


@pytest.mark.parametrize(("overrides", "named"), MISSING_CASES, ids=[c[1] for c in MISSING_CASES])
async def test_each_missing_core_element_is_named(
    consent_api: ConsentApi, overrides: dict[str, Any], named: str
) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        body = authorization_body(PATIENT, **overrides)
        response = await client.post("/v1/authorizations", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "authorization_incomplete"
    assert named in error["message"]
    assert "164.508(c)" in error["message"]
    # Only what is wrong is named: a complete body with this one change has one problem.
    assert error["message"].count(";") == 0


async def test_all_missing_elements_in_one_answer(consent_api: ConsentApi) -> None:
    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post(
            "/v1/authorizations", json={"patient_id": PATIENT, "purposes": ["publication"]}
        )
    message = response.json()["error"]["message"]
    for element in (
        "description",
        "image_ids or encounter_id",
        "disclosed_by",
        "recipients",
        "expires_at or expiration_event",
        "signed_by",
        "signed_at",
        "right_to_revoke_acknowledged",
        "redisclosure_acknowledged",
        "internet_disclosure_acknowledged",
        "method",
    ):
        assert element in message


async def test_research_needs_no_internet_acknowledgement_and_event_expiry_is_enough(
    consent_api: ConsentApi,
) -> None:
    created = await create(
        consent_api,
        purposes=["research"],
        internet_disclosure_acknowledged=False,
        expires_at=None,
        expiration_event="end of the study",
        signer_is_representative=True,
        signer_authority="legal guardian",
    )
    assert created["status"] == "active"
    assert created["signer_authority"] == "legal guardian"


async def test_images_of_another_patient_or_tenant_are_not_on_file(consent_api: ConsentApi) -> None:
    other_patient = await consent_api.image(TENANT, "someone-else")
    other_tenant = await consent_api.image("hospital-b", PATIENT)
    async with await consent_api.client(TENANT, "consent_admin") as client:
        for image_id in (other_patient, other_tenant):
            response = await client.post(
                "/v1/authorizations", json=authorization_body(PATIENT, image_ids=[image_id])
            )
            assert response.status_code == 404


async def test_revocation_shreds_at_once_and_keeps_the_reason(consent_api: ConsentApi) -> None:
    created = await create(consent_api)
    object_id = await store_derivative(consent_api, created["id"])
    assert await read_for(consent_api, created["id"], object_id) == PLAINTEXT
    # Something was already disclosed in reliance on it (as ingest records a derivative read).
    derivative_id = new_id("drv")
    async with consent_api.runtime.session() as session:
        session.add(
            Derivative(
                id=derivative_id,
                tenant_id=TENANT,
                image_id=created["image_ids"][0],
                authorization_id=created["id"],
                purpose="education",
                status="approved",
                object_id=object_id,
            )
        )
        await audit.record(
            session,
            tenant_id=TENANT,
            actor_key_id="key_reader",
            action="derivative.read_content",
            outcome="allowed",
            object_id=derivative_id,
            purpose="education",
            patient_id=PATIENT,
        )
        await session.commit()

    async with await consent_api.client(TENANT, "consent_admin") as client:
        response = await client.post(
            f"/v1/authorizations/{created['id']}/revoke", json={"reason": "patient changed mind"}
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["shred"] == "done"
        assert result["objects_shredded"] == 1
        assert result["disclosed_before_revocation"] == 1
        assert result["authorization"]["status"] == "revoked"
        fetched = (await client.get(f"/v1/authorizations/{created['id']}")).json()
        assert fetched["revocation_reason"] == "patient changed mind"
        again = await client.post(
            f"/v1/authorizations/{created['id']}/revoke", json={"reason": "twice"}
        )
        assert again.status_code == 409

    # Right after: no key opens it, the ciphertext is still there, the decision refuses.
    async with consent_api.runtime.session() as session:
        with pytest.raises(KeyDestroyed):
            await consent_api.runtime.blobs.read_all(session, object_id)
    ciphertext = await consent_api.runtime.blobs.raw_ciphertext(object_id)
    assert ciphertext is not None
    assert PLAINTEXT[:32] not in ciphertext
    with pytest.raises(PermissionError, match="revoked"):
        await read_for(consent_api, created["id"], object_id)
    # Nothing can be stored under it again.
    with pytest.raises(KeyDestroyed):
        await store_derivative(consent_api, created["id"])

    async with consent_api.runtime.session() as session:
        entries = await audit.list_entries(session, tenant_id=TENANT, object_id=created["id"])
    revoke_entry = entries[-1]
    assert revoke_entry.action == "authorization.revoke"
    reliance = revoke_entry.detail["disclosed_in_reliance"]
    assert reliance["approved_derivatives"] == [derivative_id]
    assert [d["object_id"] for d in reliance["disclosures"]] == [derivative_id]
    # The free-text reason is on the row, not in the audit chain.
    assert "changed mind" not in str(revoke_entry.detail)


async def test_unreachable_store_defers_the_shred_but_reads_stop(
    consent_api: ConsentApi, tmp_path: Path
) -> None:
    created = await create(consent_api)
    object_id = await store_derivative(consent_api, created["id"])
    # A blob store that cannot write (its root became a regular file after it was opened):
    # the ledger write that starts every shred fails, as it would with S3 down.
    root = tmp_path / "broken-blobs"
    broken = EncryptedBlobStore(
        store_from_url(f"file://{root}", consent_api.runtime.settings),
        consent_api.runtime.blobs.key_provider,
    )
    shutil.rmtree(root)
    root.write_bytes(b"")
    principal = Principal(key_id="key_admin", tenant_id=TENANT, role="consent_admin")
    async with consent_api.runtime.session() as session:
        result = await service.revoke(
            session, principal, created["id"], "withdrawn", blobs=broken, queue=None
        )
    assert result.shred == "pending"
    assert result.authorization.status == "revoked"
    # The key still exists, but the read path refuses on the committed status.
    with pytest.raises(PermissionError, match="revoked"):
        await read_for(consent_api, created["id"], object_id)
    async with consent_api.runtime.session() as session:
        assert await service.pending_shreds(session) == [created["id"]]
    # The retried job: fails while the store is down, then finishes.
    with pytest.raises(Exception, match="retry"):
        await shred_authorization(
            {"runtime": _with_blobs(consent_api, broken), "job_try": 1}, created["id"]
        )
    assert await shred_authorization({"runtime": consent_api.runtime, "job_try": 2}, created["id"])
    async with consent_api.runtime.session() as session:
        with pytest.raises(KeyDestroyed):
            await consent_api.runtime.blobs.read_all(session, object_id)
        assert await service.pending_shreds(session) == []
    # Idempotent.
    assert await shred_authorization({"runtime": consent_api.runtime, "job_try": 1}, created["id"])


def _with_blobs(api: ConsentApi, blobs: EncryptedBlobStore) -> Any:
    from dataclasses import replace

    return replace(api.runtime, blobs=blobs)


@pytest.mark.postgres
async def test_reads_racing_the_revocation_never_return_plaintext_after_it_commits(
    pg_consent_api: ConsentApi,
) -> None:
    api = pg_consent_api
    created = await create(api)
    object_id = await store_derivative(api, created["id"])
    revoked_at: list[float] = []
    outcomes: list[tuple[float, float, str]] = []  # (started, finished, result)
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                data = await read_for(api, created["id"], object_id)
                result = "plaintext" if data == PLAINTEXT else "garbage"
            except PermissionError:
                result = "refused"
            except KeyDestroyed:
                result = "destroyed"
            outcomes.append((started, time.monotonic(), result))

    async def revoker() -> None:
        await asyncio.sleep(0.3)
        async with await api.client(TENANT, "consent_admin") as client:
            response = await client.post(
                f"/v1/authorizations/{created['id']}/revoke", json={"reason": "race"}
            )
        assert response.status_code == 200
        revoked_at.append(time.monotonic())
        await asyncio.sleep(0.3)
        stop.set()

    await asyncio.gather(*(reader() for _ in range(6)), revoker())
    committed = revoked_at[0]
    before = [o for o in outcomes if o[2] == "plaintext"]
    after = [o for o in outcomes if o[0] > committed]
    assert before, "no read succeeded before the revocation: the race was not exercised"
    assert after, "no read started after the revocation"
    assert "garbage" not in {o[2] for o in outcomes}
    # Every plaintext was produced before the revocation returned (it waited for the readers'
    # row locks), and every read that started after it was refused.
    assert all(finished <= committed for _, finished, _ in before)
    assert {o[2] for o in after} <= {"refused", "destroyed"}
