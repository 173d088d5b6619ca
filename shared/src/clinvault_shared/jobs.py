"""Names of the asynchronous jobs: the contract between the services that enqueue and run them."""

from __future__ import annotations

MAKE_CARE_COPY = "make_care_copy"
BUILD_DERIVATIVE = "build_derivative"
SHRED_IMAGE = "shred_image"
SHRED_AUTHORIZATION = "shred_authorization"
EXPIRE_AUTHORIZATIONS = "expire_authorizations"
LAPSE_VERBAL_CONSENTS = "lapse_verbal_consents"
RECONCILE = "reconcile"


def job_id(function: str, object_id: str) -> str:
    """Deterministic job id: enqueueing the same work twice yields one job."""
    return f"{function}:{object_id}"
