"""Expiry on schedule: the in-process scheduler (embedded mode) expires an authorization when
its date passes and shreds what was made under it; the compliance report warns ahead."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from clinvault_consent.authorizations.service import expire_due
from clinvault_consent.jobs import make_crons
from clinvault_shared import audit
from clinvault_shared.blobstore import KeyDestroyed
from clinvault_shared.queue import CronSpec
from tests.consent.conftest import ConsentApi, authorization_body

TENANT = "hospital-a"
PATIENT = "mrn-300"


@pytest.fixture
def crons() -> Sequence[CronSpec]:
    """The real periodic jobs, every second."""
    return make_crons(every_seconds=1)


async def test_scheduler_expires_and_shreds(consent_api: ConsentApi) -> None:
    image_id = await consent_api.image(TENANT, PATIENT)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    async with await consent_api.client(TENANT, "admin") as client:
        created = (
            await client.post(
                "/v1/authorizations",
                json=authorization_body(
                    PATIENT, image_ids=[image_id], expires_at=expires.isoformat()
                ),
            )
        ).json()
        async with consent_api.runtime.session() as session:
            stored = await consent_api.runtime.blobs.put(
                session,
                tenant_id=TENANT,
                patient_id=PATIENT,
                scope=f"auth:{created['id']}",
                data=b"derivative",
            )
            await session.commit()
        report = (await client.get("/v1/compliance/report")).json()
        assert [a["id"] for a in report["expiring_authorizations"]] == [created["id"]]

        status = created["status"]
        async with asyncio.timeout(20):
            while status != "expired":
                await asyncio.sleep(0.2)
                status = (await client.get(f"/v1/authorizations/{created['id']}")).json()["status"]
        assert datetime.now(UTC) >= expires
    async with consent_api.runtime.session() as session:
        with pytest.raises(KeyDestroyed):
            await consent_api.runtime.blobs.read_all(session, stored.object_id)
        entries = await audit.list_entries(session, tenant_id=TENANT, object_id=created["id"])
    assert [e.action for e in entries] == ["authorization.create", "authorization.expire"]
    assert entries[-1].detail["shred"] == "done"
    assert entries[-1].detail["objects_shredded"] == 1


async def test_expiry_with_a_frozen_clock(consent_api: ConsentApi) -> None:
    image_id = await consent_api.image(TENANT, PATIENT)
    expires = datetime.now(UTC) + timedelta(days=40)
    async with await consent_api.client(TENANT, "admin") as client:
        created = (
            await client.post(
                "/v1/authorizations",
                json=authorization_body(
                    PATIENT, image_ids=[image_id], expires_at=expires.isoformat()
                ),
            )
        ).json()
        report = (await client.get("/v1/compliance/report")).json()
        assert report["expiring_authorizations"] == []  # 40 days out: beyond the 30-day window
    runtime = consent_api.runtime
    async with runtime.session() as session:
        assert (
            await expire_due(
                session, blobs=runtime.blobs, queue=None, at=expires - timedelta(seconds=1)
            )
            == 0
        )
    async with runtime.session() as session:
        assert await expire_due(session, blobs=runtime.blobs, queue=None, at=expires) == 1
    async with await consent_api.client(TENANT, "admin") as client:
        fetched = (await client.get(f"/v1/authorizations/{created['id']}")).json()
    assert fetched["status"] == "expired"
