"""Cron: re-enqueue work whose job was lost (the database, not the queue, is the ledger)."""

from __future__ import annotations

import logging
from typing import Any

from clinvault_scrub.worker import repository
from clinvault_scrub.worker.common import runtime_of, stale_before
from clinvault_shared import jobs
from clinvault_shared.faults import is_transient
from clinvault_shared.runtime import WorkerContext

logger = logging.getLogger("clinvault.worker.reconcile")
BATCH = 500


def retry_job_id(function: str, object_id: str, attempts: int) -> str:
    """Deterministic per attempt: a job stuck in the queue of a killed worker keeps its id, so a
    re-enqueue under the same id would be dropped; the lease makes the duplicate harmless."""
    return jobs.job_id(function, f"{object_id}.{attempts}")


async def reconcile(ctx: WorkerContext | dict[str, Any]) -> int:
    """Enqueue images and derivatives untouched for `stale_work_seconds`; returns how many."""
    runtime = runtime_of(ctx)
    queue = runtime.queue
    if queue is None:  # pragma: no cover - both runtimes provide a queue
        return 0
    before = stale_before(runtime)
    try:
        async with runtime.session() as session:
            images = await repository.stale_images(session, before, BATCH)
            derivatives = await repository.stale_derivatives(session, before, BATCH)
    except Exception as exc:
        if not is_transient(exc):
            raise
        # The next tick tries again; an outage is not an error of the reconciler.
        logger.warning("reconcile skipped: %s", type(exc).__name__)
        return 0
    count = 0
    for image_id, attempts in images:
        if await queue.enqueue(
            jobs.MAKE_CARE_COPY,
            image_id,
            job_id=retry_job_id(jobs.MAKE_CARE_COPY, image_id, attempts),
        ):
            count += 1
    for derivative_id, attempts in derivatives:
        if await queue.enqueue(
            jobs.BUILD_DERIVATIVE,
            derivative_id,
            job_id=retry_job_id(jobs.BUILD_DERIVATIVE, derivative_id, attempts),
        ):
            count += 1
    if count:
        logger.info("re-enqueued %d stale jobs", count)
    return count
