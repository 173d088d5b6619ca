"""Routes of the patient portal: the page, its form post and its two static files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from clinvault_ingest.portal import service
from clinvault_shared.errors import ClinvaultError, Gone, NotFound, TooManyRequests
from clinvault_shared.web import RuntimeDep, SessionDep, error_body

HERE = Path(__file__).parent
TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
)
STATIC = {
    "portal.js": ("application/javascript; charset=utf-8", (HERE / "static" / "portal.js")),
    "portal.css": ("text/css; charset=utf-8", (HERE / "static" / "portal.css")),
}
SECURITY_HEADERS = {
    # No inline script or style, nothing from elsewhere; the form posts only to this origin.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Permissions-Policy": "camera=(self), geolocation=(), microphone=()",
}

router = APIRouter(tags=["patient portal"], include_in_schema=False)


def _html(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _unavailable(error: ClinvaultError) -> HTMLResponse:
    if isinstance(error, TooManyRequests):
        heading, explanation = "Please wait a few minutes", error.message.capitalize() + "."
    elif isinstance(error, NotFound):
        heading = "This upload link does not work"
        explanation = "The link is not valid. It may have been typed or copied incompletely."
    else:
        heading = "This upload link can no longer be used"
        explanation = (
            "The link has expired, was cancelled, or has already been used for all the photos "
            "it allows."
        )
    return _html("unavailable.html", error.status_code, heading=heading, explanation=explanation)


def _secure_cookie(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


@router.get("/portal/{token}", response_class=HTMLResponse)
async def portal_page(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    """The patient upload page for an invitation link."""
    try:
        service.limit(token, request.client.host if request.client else None)
        context = await service.page_context(session, token)
    except (NotFound, Gone, TooManyRequests) as error:
        return _unavailable(error)
    return _upload_page(request, token, context)


@router.post("/portal/{token}/upload")
async def portal_upload(
    token: str, request: Request, runtime: RuntimeDep, session: SessionDep
) -> Response:
    """Photos posted from the page (one per request with JavaScript, all at once without)."""
    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        service.limit(token, request.client.host if request.client else None)
        accepted, remaining = await service.receive(
            runtime,
            session,
            token,
            body=request.stream(),
            content_type=request.headers.get("content-type"),
            csrf_cookie=request.cookies.get(service.CSRF_COOKIE),
        )
    except ClinvaultError as error:
        if wants_json:
            return JSONResponse(
                error_body(error.code, error.message), error.status_code, headers=SECURITY_HEADERS
            )
        if isinstance(error, NotFound | Gone | TooManyRequests):
            return _unavailable(error)
        return await _page_with_error(request, session, token, error)
    if wants_json:
        return JSONResponse(
            {"received": len(accepted), "remaining": remaining}, 202, headers=SECURITY_HEADERS
        )
    return _html("received.html", 200, count=len(accepted), remaining=remaining, token=token)


async def _page_with_error(
    request: Request, session: SessionDep, token: str, error: ClinvaultError
) -> HTMLResponse:
    try:
        context = await service.page_context(session, token)
    except (NotFound, Gone) as spent:
        return _unavailable(spent)
    return _upload_page(request, token, context, error)


def _upload_page(
    request: Request,
    token: str,
    context: service.PageContext,
    error: ClinvaultError | None = None,
) -> HTMLResponse:
    """The upload page, with this browser's CSRF cookie (kept if it has one) and its field."""
    cookie = request.cookies.get(service.CSRF_COOKIE) or service.new_csrf_cookie()
    response = _html(
        "upload.html",
        error.status_code if error else 200,
        token=token,
        csrf=service.csrf_field(cookie, token),
        requested_by=context.requested_by,
        remaining=context.remaining,
        expires_text=context.expires_text,
        max_mb=request.app.state.runtime.settings.max_upload_bytes // (1024 * 1024),
        error=error.message if error else None,
    )
    response.set_cookie(
        service.CSRF_COOKIE,
        cookie,
        httponly=True,
        samesite="strict",
        secure=_secure_cookie(request),
        path="/portal/",
    )
    return response


@router.get("/portal-static/{name}")
async def portal_static(name: str) -> Response:
    """The page's stylesheet and script (served here: no CDN, nothing from elsewhere)."""
    entry = STATIC.get(name)
    if entry is None:
        raise NotFound("no such file")
    media_type, path = entry
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(path.read_bytes(), media_type=media_type, headers=headers)
