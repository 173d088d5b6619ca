"""One error hierarchy: every failure a client sees has a code, a status and a PHI-free message."""

from __future__ import annotations

from typing import ClassVar


class ClinvaultError(Exception):
    """Base of every error that is rendered as `{"error": {"code", "message"}}`."""

    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class BadRequest(ClinvaultError):
    code = "bad_request"
    status_code = 400
    default_message = "the request is malformed"


class Unauthenticated(ClinvaultError):
    code = "unauthenticated"
    status_code = 401
    default_message = "a valid API key is required (Authorization: Bearer <key>)"


class Forbidden(ClinvaultError):
    code = "forbidden"
    status_code = 403
    default_message = "this key is not allowed to do that"


class NotFound(ClinvaultError):
    code = "not_found"
    status_code = 404
    default_message = "not found"


class Conflict(ClinvaultError):
    code = "conflict"
    status_code = 409
    default_message = "the request conflicts with the current state"


class Gone(ClinvaultError):
    code = "gone"
    status_code = 410
    default_message = "this content has been destroyed"


class PayloadTooLarge(ClinvaultError):
    code = "payload_too_large"
    status_code = 413
    default_message = "the upload is larger than the configured limit"


class UnsupportedMediaType(ClinvaultError):
    code = "unsupported_media_type"
    status_code = 415
    default_message = "this file type is not accepted"


class Unprocessable(ClinvaultError):
    code = "validation_error"
    status_code = 422
    default_message = "the request body is invalid"


class TooManyRequests(ClinvaultError):
    code = "rate_limited"
    status_code = 429
    default_message = "too many requests; try again later"


class ServiceUnavailable(ClinvaultError):
    code = "unavailable"
    status_code = 503
    default_message = "a dependency is unavailable; try again later"
