"""Job: build a de-identified derivative for an authorization; result goes to pending_review."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from clinvault_scrub.worker import repository
from clinvault_scrub.worker.common import (
    RELEASED,
    attempt_object_id,
    discard_objects,
    read_hints,
    run_scrub,
    runtime_of,
    stale_before,
    transient_faults_retry,
)
from clinvault_shared.blobstore import BlobUnavailable, KeyDestroyed
from clinvault_shared.decisions import in_force
from clinvault_shared.faults import is_transient
from clinvault_shared.runtime import WorkerContext

KIND = "derivative"


async def build_derivative(ctx: WorkerContext | dict[str, Any], derivative_id: str) -> str:
    """Idempotent: a derivative past `processing` is left alone."""
    runtime = runtime_of(ctx)
    max_tries = runtime.settings.job_max_tries
    attempt: int | None = None

    async def release() -> None:
        if attempt is not None:
            async with runtime.session() as session:
                await repository.release_derivative(session, derivative_id, attempt, RELEASED)
                await session.commit()

    async with transient_faults_retry(ctx, release):
        async with runtime.session() as session:
            claim = await repository.claim_derivative(
                session, derivative_id, stale_before=stale_before(runtime), max_tries=max_tries
            )
            if claim.outcome == "exhausted":
                await repository.give_up_derivative(
                    session,
                    derivative_id,
                    f"de-identification did not finish after {max_tries} tries",
                )
            await session.commit()
        if claim.attempt is None:
            return claim.outcome
        attempt = claim.attempt
        async with runtime.session() as session:
            derivative = await repository.get_derivative(session, derivative_id)
            if derivative is None:
                return "done"
            image = await repository.get_image(session, derivative.image_id)
            authorization = await repository.get_authorization(
                session, derivative.tenant_id, derivative.authorization_id
            )
            leftovers = [attempt_object_id(KIND, derivative_id, n) for n in range(1, attempt)]
            if leftovers and await discard_objects(runtime, session, leftovers):
                await session.commit()
            if image is None or image.status != "ready" or image.original_object_id is None:
                await repository.finish_derivative(
                    session,
                    derivative_id,
                    attempt,
                    status="rejected",
                    reason="the source image is not available",
                )
                await session.commit()
                return "rejected"
            if not in_force(authorization, datetime.now(UTC)):
                await repository.finish_derivative(
                    session,
                    derivative_id,
                    attempt,
                    status="revoked",
                    reason="the authorization is no longer active",
                )
                await session.commit()
                return "revoked"
            try:
                data = await runtime.blobs.read_all(session, image.original_object_id)
                hints = await read_hints(runtime, session, image.hints_object_id)
            except BlobUnavailable as exc:
                if is_transient(exc):
                    raise
                await repository.finish_derivative(
                    session,
                    derivative_id,
                    attempt,
                    status="rejected",
                    reason="the source image could not be read",
                )
                await session.commit()
                return "rejected"
            tenant_id, patient_id = image.tenant_id, image.patient_id
            scope = f"auth:{derivative.authorization_id}"
            redactions, keep = list(derivative.redactions), list(derivative.keep)
            await session.rollback()  # no transaction held open while the engine runs
        result = await run_scrub(
            ctx, data, "deidentify", redactions=redactions, keep=keep, hints=hints
        )
        del data, hints
        findings: dict[str, Any] = {
            "faces_redacted": result.faces_redacted,
            "needs_review": result.needs_review,
            "review_reasons": result.review_reasons,
            "findings": [f.as_dict() for f in result.findings],
            "removed": result.removed,
            "record": result.record,
        }
        async with runtime.session() as session:
            if not result.ok or result.output is None:
                finished = await repository.finish_derivative(
                    session,
                    derivative_id,
                    attempt,
                    status="rejected",
                    reason=result.reason or "rejected by the scrubber",
                    findings=findings,
                )
                await session.commit()
                return "rejected" if finished else "lost_lease"
            try:
                stored = await runtime.blobs.put(
                    session,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    scope=scope,
                    data=result.output,
                    object_id=attempt_object_id(KIND, derivative_id, attempt),
                )
            except KeyDestroyed:
                # The authorization was revoked while we worked: nothing may be stored under it.
                await session.rollback()
                await repository.finish_derivative(
                    session,
                    derivative_id,
                    attempt,
                    status="revoked",
                    reason="the authorization was revoked",
                )
                await session.commit()
                return "revoked"
            findings.update(
                output_format=result.output_format, size=stored.size, sha256=stored.sha256
            )
            finished = await repository.finish_derivative(
                session,
                derivative_id,
                attempt,
                status="pending_review",
                reason=None,
                object_id=stored.object_id,
                findings=findings,
            )
            if not finished:
                await runtime.blobs.delete(session, stored.object_id)
            await session.commit()
            return "pending_review" if finished else "lost_lease"
