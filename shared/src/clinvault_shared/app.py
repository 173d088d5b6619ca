"""Build a clinvault FastAPI app from service routers: lifespan, errors, health and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from clinvault_shared.cpu_pool import cpu_pool
from clinvault_shared.observability import (
    ObservabilityMiddleware,
    configure_logging,
    refresh_scrape_gauges,
)
from clinvault_shared.queue import CronSpec, InProcessQueue, JobSpec
from clinvault_shared.runtime import Runtime, WorkerContext
from clinvault_shared.settings import ConfigurationError, Settings, get_settings
from clinvault_shared.web import RuntimeDep, install_error_handlers


def build_app(
    *,
    title: str,
    routers: Sequence[APIRouter],
    embedded_jobs: Sequence[JobSpec] = (),
    embedded_crons: Sequence[CronSpec] = (),
    settings_factory: Callable[[], Settings] = get_settings,
    description: str = "",
) -> FastAPI:
    """An app serving `routers`; with `embedded_jobs` and no Redis it runs them in-process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = settings_factory()
        # Here rather than before uvicorn.run: uvicorn installs its own handlers at start.
        configure_logging()
        runtime = await Runtime.create(settings, migrate_database=settings.is_sqlite)
        pool: ProcessPoolExecutor | None = None
        if runtime.queue is None:
            if not embedded_jobs:
                raise ConfigurationError(
                    "this service enqueues jobs: set CLINVAULT_REDIS_URL "
                    "(or run `clinvault serve all`)"
                )
            pool = cpu_pool(settings.worker_concurrency)
            ctx: WorkerContext = {"runtime": runtime, "cpu_pool": pool}
            queue = InProcessQueue(
                jobs=embedded_jobs,
                crons=embedded_crons,
                concurrency=settings.worker_concurrency,
                ctx=dict(ctx),
            )
            await queue.start()
            runtime.queue = queue
        app.state.runtime = runtime
        try:
            yield
        finally:
            # uvicorn runs this on SIGTERM after in-flight requests finish; close the pool even
            # if closing a client fails, so the process exits instead of hanging on children.
            try:
                await runtime.close()
            finally:
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(ObservabilityMiddleware)
    app.include_router(health_router())
    for router in routers:
        app.include_router(router)
    return app


def health_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: database, queue and blob store answer")
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        checks: dict[str, str] = {}

        async def probe(name: str, check: Callable[[], Any]) -> None:
            try:
                async with asyncio.timeout(3):
                    await check()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"failing: {type(exc).__name__}"

        async def database() -> None:
            async with runtime.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def queue() -> None:
            if runtime.queue is None:
                raise RuntimeError("no queue")
            await runtime.queue.check()

        await probe("database", database)
        await probe("queue", queue)
        await probe("blob_store", runtime.blobs.check)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(runtime: RuntimeDep) -> Response:
        await refresh_scrape_gauges(runtime)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
