"""Fault tests (issue 4): killed workers, a restarted Redis, PostgreSQL unreachable.

They run on private copies of what they break (a redis-server of their own, a TCP proxy in front
of PostgreSQL), so other suites sharing the machine's servers are not disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import obstore
import pytest
from sqlalchemy import func, select

from clinvault_shared.blobstore.backend import store_from_url
from clinvault_shared.db.models import BlobObject, Image
from tests.conftest import REDIS_TEST_URL, in_thread, truncate_all
from tests.e2e.faults import PrivateRedis, TcpProxy
from tests.e2e.harness import Harness, make_jpeg, serve

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
IMAGES = 200


def _start_worker(log: Path) -> subprocess.Popen[bytes]:
    clinvault = Path(sys.executable).parent / "clinvault"
    return subprocess.Popen(
        [str(clinvault), "worker"],
        env=dict(os.environ),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def _upload_all(h: Harness, count: int, on_half: asyncio.Event) -> list[str]:
    gate = asyncio.Semaphore(8)
    ids: list[str] = []

    async def one(seed: int) -> None:
        async with gate:
            response = await h.upload(make_jpeg(seed, (16, 16)), patient_id=f"p-{seed % 7}")
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
        if len(ids) == count // 2:
            on_half.set()

    await asyncio.gather(*(one(seed) for seed in range(count)))
    return ids


@pytest.mark.s3
@pytest.mark.timeout(600)
async def test_killed_workers_and_a_redis_restart_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database_url: str, s3_settings: object
) -> None:
    await asyncio.to_thread(in_thread, lambda: asyncio.run(truncate_all(pg_database_url)))
    redis = PrivateRedis(tmp_path)
    redis.start()
    monkeypatch.setenv("CLINVAULT_DATABASE_URL", pg_database_url)
    monkeypatch.setenv("CLINVAULT_REDIS_URL", redis.url)
    for name, value in s3_settings.env(f"faults-{secrets.token_hex(4)}").items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLINVAULT_STALE_WORK_SECONDS", "3")
    monkeypatch.setenv("CLINVAULT_RECONCILE_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("CLINVAULT_JOB_MAX_TRIES", "50")
    monkeypatch.setenv("CLINVAULT_WORKER_CONCURRENCY", "2")
    log = tmp_path / "worker.log"
    kills = 0
    worker: subprocess.Popen[bytes] | None = None
    try:
        async with serve("distributed", in_process_worker=False) as h:
            await h.key()  # creates the master key file before the worker starts
            worker = _start_worker(log)
            stop_killing = asyncio.Event()

            async def killer() -> None:
                nonlocal worker, kills
                while not stop_killing.is_set():
                    await asyncio.sleep(2.5)
                    assert worker is not None
                    worker.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(worker.wait)
                    kills += 1
                    worker = _start_worker(log)

            half = asyncio.Event()

            async def restart_redis() -> None:
                await half.wait()
                redis.stop()
                await asyncio.sleep(1)
                redis.start()

            killing = asyncio.create_task(killer())
            restarting = asyncio.create_task(restart_redis())
            ids = await _upload_all(h, IMAGES, half)
            await restarting
            await asyncio.sleep(6)  # keep killing while the backlog is worked off
            stop_killing.set()
            await killing

            async def ready_count() -> int:
                async with h.runtime.session() as session:
                    return int(
                        await session.scalar(
                            select(func.count()).select_from(Image).where(Image.status == "ready")
                        )
                        or 0
                    )

            async with asyncio.timeout(240):
                while await ready_count() < IMAGES:  # noqa: ASYNC110  (polling the database)
                    await asyncio.sleep(0.5)

            assert kills >= 3
            assert len(set(ids)) == IMAGES
            async with h.runtime.session() as session:
                images = list((await session.scalars(select(Image))).all())
                assert {i.status for i in images} == {"ready"}
                for image in images:
                    assert image.care_object_id is not None
                    care = await h.runtime.blobs.read_all(session, image.care_object_id)
                    assert hashlib.sha256(care).hexdigest() == image.scrub_record["care_sha256"]
                live = set(
                    (
                        await session.scalars(
                            select(BlobObject.id).where(BlobObject.wrapped_dek.is_not(None))
                        )
                    ).all()
                )
            referenced = {i.original_object_id for i in images} | {i.care_object_id for i in images}
            # Exactly one original and one care copy per image; every duplicate was shredded.
            assert live == referenced
            assert len(live) == 2 * IMAGES
            # No orphan ciphertext: everything in the store is one of those objects.
            store = store_from_url(h.runtime.settings.resolved_blob_url, h.runtime.settings)
            stored = set()
            async for batch in obstore.list(store, prefix="objects/"):
                stored |= {entry["path"].rsplit("/", 1)[-1] for entry in batch}
            assert stored == live
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(worker.wait), 20)
            except TimeoutError:
                worker.kill()
        redis.stop()


@pytest.mark.timeout(120)
async def test_postgres_outage_answers_503_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database_url: str
) -> None:
    await asyncio.to_thread(in_thread, lambda: asyncio.run(truncate_all(pg_database_url)))
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_TEST_URL)
    await client.flushdb()
    await client.aclose()
    proxy = TcpProxy()
    await proxy.start()
    host, name = pg_database_url.rsplit("/", 1)
    proxied = f"{host.rsplit(':', 1)[0]}:{proxy.port}/{name}"
    monkeypatch.setenv("CLINVAULT_DATABASE_URL", proxied)
    monkeypatch.setenv("CLINVAULT_REDIS_URL", REDIS_TEST_URL)
    monkeypatch.setenv("CLINVAULT_STALE_WORK_SECONDS", "3")
    monkeypatch.setenv("CLINVAULT_RECONCILE_INTERVAL_SECONDS", "1")
    stack = contextlib.AsyncExitStack()
    try:
        h = await stack.enter_async_context(serve("distributed", in_process_worker=False))
        await h.key()  # the master key file exists before the worker starts
        worker = _start_worker(tmp_path / "worker.log")
        stack.callback(worker.kill)
        before = await h.upload(make_jpeg(1, (16, 16)))
        assert before.status_code == 202
        await proxy.cut()
        for seed in range(5):
            async with asyncio.timeout(15):  # an answer, not a hang
                response = await h.upload(make_jpeg(10 + seed, (16, 16)))
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable"
        async with asyncio.timeout(15):
            status = await h.client.get(
                f"/v1/images/{before.json()['id']}", headers=await h.headers()
            )
        assert status.status_code == 503
        await asyncio.sleep(2)
        await proxy.start()
        after = []
        for seed in range(3):
            response = await h.upload(make_jpeg(20 + seed, (16, 16)))
            assert response.status_code == 202, response.text
            after.append(response.json()["id"])
        for image_id in [before.json()["id"], *after]:
            done = await h.wait(f"/v1/images/{image_id}", {"ready", "rejected"}, wait_seconds=60)
            assert done["status"] == "ready"
        # Drop the proxied connections before shutdown so closing the pools cannot wait on them.
        await proxy.cut()
    finally:
        # Closing pools whose connections went through the cut proxy can wait on a socket that
        # never answers; the assertions are done, so the shutdown is bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stack.aclose(), 20)


@pytest.mark.s3
@pytest.mark.timeout(120)
async def test_reconcile_gets_past_a_job_a_killed_worker_still_holds(
    monkeypatch: pytest.MonkeyPatch, pg_database_url: str, s3_settings: object
) -> None:
    """arq holds the id of a job whose worker was killed mid-run for the longest job timeout
    plus 10 s; re-enqueued under that id, the work would wait that long. Found as a stall of the
    fault test above: the reconciler now adds one job per stale window under its own id."""
    from datetime import UTC, datetime, timedelta

    from redis.asyncio import Redis
    from sqlalchemy import update

    from clinvault_scrub.worker.functions.reconcile import reconcile, retry_job_id
    from clinvault_shared import jobs

    await asyncio.to_thread(in_thread, lambda: asyncio.run(truncate_all(pg_database_url)))
    redis = Redis.from_url(REDIS_TEST_URL)
    await redis.flushdb()
    monkeypatch.setenv("CLINVAULT_DATABASE_URL", pg_database_url)
    monkeypatch.setenv("CLINVAULT_REDIS_URL", REDIS_TEST_URL)
    for name, value in s3_settings.env(f"faults-{secrets.token_hex(4)}").items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    try:
        async with serve("distributed", in_process_worker=False) as h:
            response = await h.upload(make_jpeg(7, (16, 16)))
            assert response.status_code == 202, response.text
            image_id = response.json()["id"]
            async with h.runtime.session() as session:
                image = await session.get(Image, image_id)
                assert image is not None
                attempts = image.attempts
                await session.execute(  # quiet for an hour: its work is presumed lost
                    update(Image)
                    .where(Image.id == image_id)
                    .values(updated_at=datetime.now(UTC) - timedelta(hours=1))
                )
                await session.commit()
            held = retry_job_id(jobs.MAKE_CARE_COPY, image_id, attempts)
            assert h.runtime.queue is not None
            assert await h.runtime.queue.enqueue(jobs.MAKE_CARE_COPY, image_id, job_id=held)
            await redis.set(f"arq:in-progress:{held}", b"1", px=310_000)  # a killed worker's
            ctx = {"runtime": h.runtime}
            assert await reconcile(ctx) == 1  # one more job, under an id of its own
            assert await reconcile(ctx) == 0  # and no more in the same window
            queued = {key.decode() async for key in redis.scan_iter(f"arq:job:*{image_id}*")}
            assert len(queued) == 3  # the upload's job, the held one, the new one
    finally:
        await redis.flushdb()
        await redis.aclose()
