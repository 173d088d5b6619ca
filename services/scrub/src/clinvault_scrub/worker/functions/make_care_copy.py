"""Job: make an image's care copy (care profile) and mark it ready or rejected."""

from __future__ import annotations

import logging
from typing import Any

from clinvault_scrub.worker import repository
from clinvault_scrub.worker.common import (
    attempt_object_id,
    discard_objects,
    read_hints,
    run_scrub,
    runtime_of,
    stale_before,
    transient_faults_retry,
)
from clinvault_shared.blobstore import BlobUnavailable
from clinvault_shared.faults import is_transient
from clinvault_shared.runtime import WorkerContext

logger = logging.getLogger("clinvault.worker.care")
KIND = "care"


async def make_care_copy(ctx: WorkerContext | dict[str, Any], image_id: str) -> str:
    """Idempotent: a finished image is left alone; returns what happened (for logs and tests)."""
    runtime = runtime_of(ctx)
    max_tries = runtime.settings.job_max_tries
    attempt: int | None = None

    async def release() -> None:
        if attempt is not None:
            async with runtime.session() as session:
                await repository.release_image(session, image_id, attempt)
                await session.commit()

    async with transient_faults_retry(ctx, release):
        async with runtime.session() as session:
            claim = await repository.claim_image(
                session, image_id, stale_before=stale_before(runtime), max_tries=max_tries
            )
            if claim.outcome == "exhausted":
                await repository.give_up_image(
                    session, image_id, f"scrubbing did not finish after {max_tries} tries"
                )
            await session.commit()
        if claim.attempt is None:
            return claim.outcome
        attempt = claim.attempt
        async with runtime.session() as session:
            image = await repository.get_image(session, image_id)
            if image is None or image.original_object_id is None:
                return "done"
            # Objects that earlier, killed attempts may have written but never registered.
            leftovers = [attempt_object_id(KIND, image_id, n) for n in range(1, attempt)]
            if leftovers and await discard_objects(runtime, session, leftovers):
                await session.commit()
            try:
                data = await runtime.blobs.read_all(session, image.original_object_id)
                hints = await read_hints(runtime, session, image.hints_object_id)
            except BlobUnavailable as exc:
                if is_transient(exc):
                    raise
                await repository.finish_image(
                    session,
                    image_id,
                    attempt,
                    status="rejected",
                    reason="the original could not be read",
                )
                await session.commit()
                return "rejected"
            patient_id, tenant_id, client_captured = (
                image.patient_id,
                image.tenant_id,
                image.captured_at,
            )
            await session.rollback()  # no transaction held open while the engine runs
        result = await run_scrub(ctx, data, "care", hints=hints)
        del data, hints
        async with runtime.session() as session:
            if not result.ok or result.output is None:
                finished = await repository.finish_image(
                    session,
                    image_id,
                    attempt,
                    status="rejected",
                    reason=result.reason or "rejected by the scrubber",
                    removed=result.removed,
                    scrub_record=result.record,
                )
                await session.commit()
                return "rejected" if finished else "lost_lease"
            stored = await runtime.blobs.put(
                session,
                tenant_id=tenant_id,
                patient_id=patient_id,
                scope="care",
                data=result.output,
                object_id=attempt_object_id(KIND, image_id, attempt),
            )
            finished = await repository.finish_image(
                session,
                image_id,
                attempt,
                status="ready",
                reason=None,
                care_object_id=stored.object_id,
                care_size=stored.size,
                removed=result.removed,
                captured_at=client_captured or result.captured_at,
                scrub_record={
                    **result.record,
                    "care_sha256": stored.sha256,
                    "output_format": result.output_format,
                },
            )
            if not finished:
                # Another run took over (or the image was deleted): this copy must not survive.
                await runtime.blobs.delete(session, stored.object_id)
            await session.commit()
            return "ready" if finished else "lost_lease"
