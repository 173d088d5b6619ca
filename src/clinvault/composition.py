"""Compose the services into runnable apps and workers (the only place that imports them all)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from clinvault_shared.app import build_app
from clinvault_shared.cpu_pool import cpu_pool
from clinvault_shared.observability import configure_logging, instrument_job, start_metrics_server
from clinvault_shared.queue import CronSpec, JobSpec, arq_worker_settings
from clinvault_shared.runtime import Runtime
from clinvault_shared.settings import get_settings

logger = logging.getLogger("clinvault.worker")


def all_jobs() -> tuple[list[JobSpec], list[CronSpec]]:
    """Every job and periodic job of every service."""
    from clinvault_consent import jobs as consent_jobs
    from clinvault_scrub import worker as scrub_worker

    jobs = [instrument_job(spec) for spec in (*scrub_worker.JOBS, *consent_jobs.JOBS)]
    return jobs, [*scrub_worker.CRONS, *consent_jobs.CRONS]


def create_all_app() -> FastAPI:
    """Ingest + consent APIs and an in-process worker (the embedded mode, `clinvault serve`)."""
    from clinvault_consent.api import router as consent_router
    from clinvault_ingest.api import router as ingest_router

    jobs, crons = all_jobs()
    return build_app(
        title="clinvault",
        description="Clinical photographs: de-identified, encrypted under consent, audited.",
        routers=[ingest_router, consent_router],
        embedded_jobs=jobs,
        embedded_crons=crons,
    )


def create_ingest_app() -> FastAPI:
    """The ingest API alone (distributed mode: jobs go to Redis)."""
    from clinvault_ingest.api import router

    return build_app(title="clinvault ingest", routers=[router])


def create_consent_app() -> FastAPI:
    """The consent API alone (distributed mode: jobs go to Redis)."""
    from clinvault_consent.api import router

    return build_app(title="clinvault consent", routers=[router])


async def _worker_startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging()
    if settings.worker_metrics_port:
        try:
            start_metrics_server(settings.worker_metrics_port)
        except OSError:
            # Several workers on one host (make up): the first one serves the port.
            logger.warning(
                "metrics port %d is busy; this worker serves no /metrics",
                settings.worker_metrics_port,
            )
    ctx["runtime"] = await Runtime.create(settings)
    ctx["cpu_pool"] = cpu_pool(settings.worker_concurrency)


async def _worker_shutdown(ctx: dict[str, Any]) -> None:
    await ctx["runtime"].close()
    ctx["cpu_pool"].shutdown(wait=True)


def worker_settings() -> dict[str, Any]:
    """arq Worker keyword arguments for `clinvault worker`."""
    settings = get_settings()
    if not settings.redis_url:
        from clinvault_shared.settings import ConfigurationError

        raise ConfigurationError("`clinvault worker` needs CLINVAULT_REDIS_URL")
    jobs, crons = all_jobs()
    return arq_worker_settings(
        redis_url=settings.redis_url,
        jobs=jobs,
        crons=crons,
        on_startup=_worker_startup,
        on_shutdown=_worker_shutdown,
        concurrency=settings.worker_concurrency,
        shutdown_grace_seconds=settings.worker_shutdown_grace_seconds,
    )
