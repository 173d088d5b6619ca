"""The consent jobs run by a real arq burst worker on the real Redis and PostgreSQL.

The other consent tests run these jobs on the in-process scheduler; this one proves the arq side
of the queue seam carries them too (enqueue by name, ctx with the runtime, follow-up enqueue).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Worker
from sqlalchemy import select

from clinvault_consent import jobs as consent_jobs
from clinvault_shared.blobstore import KeyDestroyed
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import Authorization, Consent, Tenant
from clinvault_shared.jobs import (
    EXPIRE_AUTHORIZATIONS,
    LAPSE_VERBAL_CONSENTS,
    SHRED_AUTHORIZATION,
    job_id,
)
from clinvault_shared.queue import ArqQueue, arq_worker_settings
from clinvault_shared.runtime import Runtime
from clinvault_shared.settings import get_settings

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def runtime(
    pg_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Runtime]:
    monkeypatch.setenv("CLINVAULT_DATABASE_URL", pg_url)
    monkeypatch.setenv("CLINVAULT_REDIS_URL", redis_url)
    monkeypatch.setenv("CLINVAULT_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    get_settings.cache_clear()
    running = await Runtime.create(get_settings())
    yield running
    await running.close()


async def _burst(runtime: Runtime) -> None:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["runtime"] = runtime

    async def shutdown(ctx: dict[str, Any]) -> None:
        return None

    settings = arq_worker_settings(
        redis_url=str(runtime.settings.redis_url),
        jobs=consent_jobs.JOBS,
        crons=[],
        on_startup=startup,
        on_shutdown=shutdown,
        concurrency=2,
    )
    worker = Worker(**{**settings, "burst": True, "poll_delay": 0, "handle_signals": False})
    try:
        await worker.main()
    finally:
        await worker.close()


async def test_expiry_and_its_shred_run_on_a_burst_worker(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    authorization_id = new_id("auth")
    async with runtime.session() as session:
        session.add(Tenant(id="hosp"))
        await session.flush()  # no ORM relationship orders the tenant's insert first
        session.add(
            Authorization(
                id=authorization_id, tenant_id="hosp", patient_id="mrn-9", purposes=["education"],
                description="wound photos of the left forearm", recipients=["teaching staff"],
                expires_at=now - timedelta(minutes=1), signed_by="patient",
                signed_at=now - timedelta(days=3), method="written", image_ids=["img_x"],
                status="active", internet_disclosure_acknowledged=True,
                right_to_revoke_acknowledged=True, redisclosure_acknowledged=True,
            )
        )  # fmt: skip
        session.add(
            Consent(
                id=new_id("cns"), tenant_id="hosp", patient_id="mrn-9", purposes=["treatment"],
                method="verbal", signed_by="patient", signed_at=now - timedelta(days=5),
                witness="nurse on duty", status="provisional",
                documentation_due_at=now - timedelta(days=2),
            )
        )  # fmt: skip
        stored = await runtime.blobs.put(
            session, tenant_id="hosp", patient_id="mrn-9", scope=f"auth:{authorization_id}",
            data=b"a de-identified derivative",
        )  # fmt: skip
        await session.commit()

    queue = runtime.queue
    assert isinstance(queue, ArqQueue)
    assert await queue.enqueue(EXPIRE_AUTHORIZATIONS, job_id="expire-now")
    assert await queue.enqueue(LAPSE_VERBAL_CONSENTS, job_id=job_id(LAPSE_VERBAL_CONSENTS, "now"))
    await _burst(runtime)

    async with runtime.session() as session:
        authorization = await session.get(Authorization, authorization_id)
        assert authorization is not None
        assert authorization.status == "expired"
        consent = (await session.scalars(select(Consent))).one()
        assert consent.status == "lapsed"
        with pytest.raises(KeyDestroyed):
            await runtime.blobs.read_all(session, stored.object_id)
    assert await queue.depth() == 0


async def test_pending_shred_finishes_on_a_burst_worker(runtime: Runtime) -> None:
    # A revocation whose shred could not run in its transaction (blob store down) leaves the
    # authorization revoked with its key alive; the shred job, retried until done, finishes it.
    now = datetime.now(UTC)
    authorization_id = new_id("auth")
    async with runtime.session() as session:
        session.add(Tenant(id="hosp"))
        await session.flush()
        session.add(
            Authorization(
                id=authorization_id, tenant_id="hosp", patient_id="mrn-10",
                purposes=["publication"], description="photos of the rash", recipients=["journal"],
                expires_at=now + timedelta(days=30), signed_by="patient",
                signed_at=now - timedelta(days=3), method="written", image_ids=["img_y"],
                status="revoked", revoked_at=now, revocation_reason="patient asked",
            )
        )  # fmt: skip
        stored = await runtime.blobs.put(
            session, tenant_id="hosp", patient_id="mrn-10", scope=f"auth:{authorization_id}",
            data=b"derivative made before the revocation",
        )  # fmt: skip
        await session.commit()
    queue = runtime.queue
    assert isinstance(queue, ArqQueue)
    assert await queue.enqueue(
        SHRED_AUTHORIZATION, authorization_id, job_id=job_id(SHRED_AUTHORIZATION, authorization_id)
    )
    await _burst(runtime)
    async with runtime.session() as session:
        with pytest.raises(KeyDestroyed):
            await runtime.blobs.read_all(session, stored.object_id)
    assert await runtime.blobs.raw_ciphertext(stored.object_id) is not None  # bytes remain
