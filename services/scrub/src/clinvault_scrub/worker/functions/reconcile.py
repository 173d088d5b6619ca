"""Cron: re-enqueue work whose job was lost (the database, not the queue, is the ledger)."""

from __future__ import annotations

import logging
import time
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


async def _enqueue(queue: Any, function: str, object_id: str, attempts: int, window: int) -> bool:
    """The attempt's job, or, if the queue still holds that id, one more for this window.

    The queue refuses an id it knows: a job waiting behind others, or one a killed worker had
    started, whose id arq holds for the longest job timeout plus 10 s (310 s here). The
    row has been quiet for stale_work_seconds, so the work may be lost: one more job per such
    window goes in under its own id (a duplicate finds the lease taken and does nothing).
    """
    if await queue.enqueue(function, object_id, job_id=retry_job_id(function, object_id, attempts)):
        return True
    again = jobs.job_id(function, f"{object_id}.{attempts}.w{window}")
    return bool(await queue.enqueue(function, object_id, job_id=again))


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
    window = int(time.time() // runtime.settings.stale_work_seconds)
    count = 0
    for function, rows in ((jobs.MAKE_CARE_COPY, images), (jobs.BUILD_DERIVATIVE, derivatives)):
        for object_id, attempts in rows:
            if await _enqueue(queue, function, object_id, attempts, window):
                count += 1
    if count:
        logger.info("re-enqueued %d stale jobs", count)
    return count
