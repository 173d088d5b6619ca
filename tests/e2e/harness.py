"""One harness, two modes: the same end-to-end tests drive the embedded and distributed forms."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from PIL import Image as PILImage

from clinvault_ingest.api import router as ingest_router
from clinvault_scrub import worker as scrub_worker
from clinvault_shared.app import build_app
from clinvault_shared.auth import create_key
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import Authorization, Consent
from clinvault_shared.queue import arq_worker_settings
from clinvault_shared.runtime import Runtime
from clinvault_shared.settings import get_settings


def make_jpeg(
    seed: int = 0, size: tuple[int, int] = (48, 32), *, artist: str = "Dr Canary"
) -> bytes:
    """A small JPEG with EXIF that names a person (the care scrub must remove it)."""
    picture = PILImage.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 120))
    exif = PILImage.Exif()
    exif[0x013B] = artist  # Artist
    exif[0x0112] = 1  # Orientation
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def ingest_app() -> FastAPI:
    """The ingest API with the scrub jobs (in-process when no Redis is configured)."""
    return build_app(
        title="clinvault ingest (test)",
        routers=[ingest_router],
        embedded_jobs=scrub_worker.JOBS,
        embedded_crons=scrub_worker.crons(),
    )


@dataclass
class Harness:
    mode: str
    app: FastAPI
    client: httpx.AsyncClient
    keys: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def key(self, tenant: str = "t1", role: str = "admin") -> str:
        if (tenant, role) not in self.keys:
            async with self.runtime.session() as session:
                issued = await create_key(session, tenant_id=tenant, role=role)
                await session.commit()
            self.keys[(tenant, role)] = issued.secret
        return self.keys[(tenant, role)]

    async def headers(self, tenant: str = "t1", role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.key(tenant, role)}"}

    async def upload(
        self,
        data: bytes,
        *,
        patient_id: str = "p-1",
        tenant: str = "t1",
        role: str = "admin",
        extra: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        filename: str = "photo.jpg",
    ) -> httpx.Response:
        fields = {"patient_id": patient_id, "source": "emr", **(extra or {})}
        return await self.client.post(
            "/v1/images",
            data=fields,
            files={"file": (filename, data, "image/jpeg")},
            headers={**await self.headers(tenant, role), **(headers or {})},
        )

    async def wait(
        self, path: str, until: set[str], *, tenant: str = "t1", wait_seconds: float = 90
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            response = await self.client.get(path, headers=await self.headers(tenant))
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in until:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{path} stuck in {body['status']}")
            await asyncio.sleep(0.1)

    async def add_consent(self, *, tenant: str = "t1", patient_id: str = "p-1") -> str:
        """A written general consent for treatment (the consent service's table, set directly)."""
        consent_id = new_id("con")
        async with self.runtime.session() as session:
            session.add(
                Consent(
                    id=consent_id,
                    tenant_id=tenant,
                    patient_id=patient_id,
                    purposes=["treatment", "payment", "operations"],
                    method="written",
                    signed_by="patient",
                    signed_at=datetime.now(UTC) - timedelta(minutes=5),
                    status="active",
                )
            )
            await session.commit()
        return consent_id

    async def add_authorization(
        self,
        image_ids: list[str],
        *,
        tenant: str = "t1",
        patient_id: str = "p-1",
        purpose: str = "education",
    ) -> str:
        authorization_id = new_id("auth")
        async with self.runtime.session() as session:
            session.add(
                Authorization(
                    id=authorization_id,
                    tenant_id=tenant,
                    patient_id=patient_id,
                    purposes=[purpose],
                    description="teaching file",
                    recipients=["residents"],
                    expires_at=datetime.now(UTC) + timedelta(days=30),
                    internet_disclosure_acknowledged=True,
                    right_to_revoke_acknowledged=True,
                    redisclosure_acknowledged=True,
                    signed_by="patient",
                    signed_at=datetime.now(UTC) - timedelta(minutes=5),
                    method="written",
                    image_ids=image_ids,
                    status="active",
                )
            )
            await session.commit()
        return authorization_id


@contextlib.asynccontextmanager
async def serve(mode: str, *, in_process_worker: bool = True) -> AsyncIterator[Harness]:
    """Start the app's lifespan (and, distributed, a real arq worker) for one test."""
    get_settings.cache_clear()
    app = ingest_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=60
        ) as client:
            harness = Harness(mode=mode, app=app, client=client)
            if mode == "embedded" or not in_process_worker:
                yield harness
                return
            async with arq_worker() as _:
                yield harness


@contextlib.asynccontextmanager
async def arq_worker() -> AsyncIterator[Any]:
    """A real arq worker on the test's event loop, polling the test Redis."""
    from arq.worker import Worker

    settings = get_settings()
    assert settings.redis_url

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["runtime"] = await Runtime.create(settings)
        ctx["cpu_pool"] = ProcessPoolExecutor(max_workers=1)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["runtime"].close()
        ctx["cpu_pool"].shutdown(wait=True)

    options = arq_worker_settings(
        redis_url=settings.redis_url,
        jobs=scrub_worker.JOBS,
        crons=scrub_worker.crons(),
        on_startup=startup,
        on_shutdown=shutdown,
        concurrency=2,
    )
    options["handle_signals"] = False
    options["poll_delay"] = 0.05
    worker = Worker(**options)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        try:
            await worker.close()
        except asyncio.CancelledError:
            # arq cancels the jobs still running and gathers them: their cancellation surfaces
            # here. Escaping a fixture's teardown, it broke every later test of the session.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
