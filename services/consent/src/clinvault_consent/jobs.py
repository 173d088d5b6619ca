"""The consent service's jobs: expire authorizations, lapse verbal consents, finish shreds.

Jobs take ids, never ORM objects, and are idempotent. Periodic work runs as arq crons (one
worker at a time) or on the in-process scheduler in embedded mode.
"""

from __future__ import annotations

import logging
from typing import Any

from clinvault_consent.authorizations import service as authorizations
from clinvault_consent.consents import service as consents
from clinvault_shared.jobs import (
    EXPIRE_AUTHORIZATIONS,
    LAPSE_VERBAL_CONSENTS,
    SHRED_AUTHORIZATION,
    job_id,
)
from clinvault_shared.queue import CronSpec, JobSpec, RetryLater
from clinvault_shared.runtime import Runtime

logger = logging.getLogger("clinvault.consent.jobs")

# "Retried until done": a shred waits out a long blob-store outage (backoff capped at 5 min,
# about a week of tries); the reconciler in expire_authorizations enqueues it again after that.
SHRED_MAX_TRIES = 2000
SHRED_MAX_DEFER_SECONDS = 300.0


def _runtime(ctx: dict[str, Any]) -> Runtime:
    runtime: Runtime = ctx["runtime"]
    return runtime


async def shred_authorization(ctx: dict[str, Any], authorization_id: str) -> bool:
    """Destroy an ended authorization's scope key; retried (with backoff) until it succeeds."""
    runtime = _runtime(ctx)
    try:
        async with runtime.session() as session:
            return await authorizations.shred(
                session, blobs=runtime.blobs, authorization_id=authorization_id
            )
    except Exception as exc:
        tries = int(ctx.get("job_try", 1))
        logger.warning("shred job failed (try %d): %s", tries, type(exc).__name__)
        raise RetryLater(min(SHRED_MAX_DEFER_SECONDS, 2.0 ** min(tries, 9))) from exc


async def expire_authorizations(ctx: dict[str, Any]) -> int:
    """Expire authorizations past `expires_at` and re-enqueue shreds that have not happened."""
    runtime = _runtime(ctx)
    async with runtime.session() as session:
        expired = await authorizations.expire_due(session, blobs=runtime.blobs, queue=runtime.queue)
    async with runtime.session() as session:
        pending = await authorizations.pending_shreds(session)
    if runtime.queue is not None:
        for authorization_id in pending:
            await runtime.queue.enqueue(
                SHRED_AUTHORIZATION,
                authorization_id,
                job_id=job_id(SHRED_AUTHORIZATION, authorization_id),
            )
    if expired or pending:
        logger.info("expired %d authorization(s); %d shred(s) pending", expired, len(pending))
    return expired


async def lapse_verbal_consents(ctx: dict[str, Any]) -> int:
    """Lapse verbal consents whose written record is overdue."""
    runtime = _runtime(ctx)
    async with runtime.session() as session:
        lapsed = await consents.lapse_overdue(session)
    if lapsed:
        logger.info("lapsed %d verbal consent(s)", lapsed)
    return lapsed


def make_crons(every_seconds: int = 60) -> list[CronSpec]:
    """The periodic jobs, at a given interval (tests use a short one)."""
    return [
        CronSpec(EXPIRE_AUTHORIZATIONS, expire_authorizations, every_seconds=every_seconds),
        CronSpec(LAPSE_VERBAL_CONSENTS, lapse_verbal_consents, every_seconds=every_seconds),
    ]


JOBS: list[JobSpec] = [
    JobSpec(
        SHRED_AUTHORIZATION, shred_authorization, timeout_seconds=60, max_tries=SHRED_MAX_TRIES
    ),
    JobSpec(EXPIRE_AUTHORIZATIONS, expire_authorizations, timeout_seconds=300, max_tries=3),
    JobSpec(LAPSE_VERBAL_CONSENTS, lapse_verbal_consents, timeout_seconds=300, max_tries=3),
]
CRONS: list[CronSpec] = make_crons()
