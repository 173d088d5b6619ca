"""The scrub service's jobs (arq in distributed mode, in-process in embedded mode)."""

from __future__ import annotations

from clinvault_scrub.worker.functions.build_derivative import build_derivative
from clinvault_scrub.worker.functions.make_care_copy import make_care_copy
from clinvault_scrub.worker.functions.reconcile import reconcile
from clinvault_scrub.worker.functions.shred_image import shred_image
from clinvault_shared import jobs
from clinvault_shared.queue import CronSpec, JobSpec
from clinvault_shared.settings import get_settings

# Tries per job in the queue; the `attempts` column bounds the total across re-enqueues.
JOBS: list[JobSpec] = [
    JobSpec(jobs.MAKE_CARE_COPY, make_care_copy, timeout_seconds=180, max_tries=8),
    JobSpec(jobs.BUILD_DERIVATIVE, build_derivative, timeout_seconds=300, max_tries=8),
    JobSpec(jobs.SHRED_IMAGE, shred_image, timeout_seconds=60, max_tries=20),
]


def crons() -> list[CronSpec]:
    """Periodic jobs, with the interval of the current settings."""
    return [
        CronSpec(jobs.RECONCILE, reconcile, every_seconds=get_settings().reconcile_interval_seconds)
    ]


def __getattr__(name: str) -> list[CronSpec]:
    # `CRONS` is read when a process composes its worker, after its settings are final.
    if name == "CRONS":
        return crons()
    raise AttributeError(name)


__all__ = ["CRONS", "JOBS", "crons"]
