"""Job: after a delete, shred anything of the image that a racing job may have stored."""

from __future__ import annotations

from typing import Any

from clinvault_scrub.worker import repository
from clinvault_scrub.worker.common import (
    attempt_object_id,
    discard_objects,
    runtime_of,
    transient_faults_retry,
)
from clinvault_shared.runtime import WorkerContext


async def shred_image(ctx: WorkerContext | dict[str, Any], image_id: str) -> int:
    """Idempotent: destroys every key still live for the image and its derivatives."""
    runtime = runtime_of(ctx)
    async with transient_faults_retry(ctx), runtime.session() as session:
        image = await repository.get_image(session, image_id)
        if image is None or image.status != "deleted":
            return 0
        ids = [image.original_object_id, image.care_object_id, image.hints_object_id]
        ids += [attempt_object_id("care", image_id, n) for n in range(1, image.attempts + 1)]
        for derivative in await repository.derivatives_of(session, image_id):
            ids.append(derivative.object_id)
            ids += [
                attempt_object_id("derivative", derivative.id, n)
                for n in range(1, derivative.attempts + 1)
            ]
            if derivative.status != "revoked":
                derivative.status = "revoked"
                derivative.reason = "the source image was deleted"
        count = await discard_objects(runtime, session, [i for i in dict.fromkeys(ids) if i])
        await session.commit()
        return count
