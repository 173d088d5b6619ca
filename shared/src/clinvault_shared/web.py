"""FastAPI plumbing shared by the APIs: error rendering, the runtime, sessions and auth."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException

from clinvault_shared.auth import Permission, Principal, authenticate
from clinvault_shared.errors import ClinvaultError, ServiceUnavailable, Unauthenticated
from clinvault_shared.faults import is_transient
from clinvault_shared.runtime import Runtime

logger = logging.getLogger("clinvault.web")


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error shape: `{"error": {"code", "message"}}`."""
    return {"error": {"code": code, "message": message}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/json": {"example": error_body(code, description)}},
    }
    for status, code, description in [
        (400, "bad_request", "The request is malformed"),
        (401, "unauthenticated", "A valid API key is required"),
        (403, "forbidden", "The key's role or the patient's consent does not allow this"),
        (404, "not_found", "No such object for this tenant"),
        (409, "conflict", "The object is not in a state that allows this"),
        (410, "gone", "The content was crypto-shredded"),
        (413, "payload_too_large", "The upload is larger than the configured limit"),
        (415, "unsupported_media_type", "The file type is not accepted (the message names it)"),
        (422, "validation_error", "The body or parameters are invalid"),
        (503, "unavailable", "A dependency (database, queue, blob store) is unavailable"),
    ]
}


def _validation_message(exc: RequestValidationError) -> str:
    # Only locations and messages: pydantic's "input" would echo submitted values (possible PHI).
    parts = []
    for error in exc.errors()[:10]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure as JSON with the right status; never a traceback."""

    @app.exception_handler(ClinvaultError)
    async def _clinvault(_: Request, exc: ClinvaultError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("validation_error", _validation_message(exc)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            error_body(codes.get(exc.status_code, "http_error"), message), exc.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            # A database, queue or blob store outage: tell the client to retry, not "bug".
            logger.warning("dependency unavailable: %s", type(exc).__name__)
            return JSONResponse(
                error_body("unavailable", ServiceUnavailable.default_message),
                503,
                headers={"Retry-After": "2"},
            )
        # Log the type only: exception text may quote data (PHI) from the request.
        logger.error("unhandled %s", type(exc).__name__)
        return JSONResponse(error_body("internal_error", "internal error"), 500)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """A session per request; services commit explicitly, anything uncommitted rolls back."""
    async with runtime.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller behind `Authorization: Bearer <key>`; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated()
    async with runtime.session() as session:
        principal = await authenticate(session, token)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and checks one permission: `Depends(require(P.X))`."""

    async def dependency(principal: PrincipalDep) -> Principal:
        principal.require(permission)
        return principal

    return dependency
