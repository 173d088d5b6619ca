"""Logs and metrics for every clinvault process: JSON logs without PHI, Prometheus metrics.

Logs: `configure_logging()` routes structlog and the standard library (uvicorn, arq, sqlalchemy)
through one JSON renderer. Every event passes `scrub_phi` first: values under keys that name
patient data or credentials are masked, and string values are searched for things that look like
e-mail addresses, phone numbers, dates of birth, bearer tokens and clinvault API keys. Request ids
(HTTP) and job ids (workers) are bound as context variables, so every line of a request or a job
carries its id without the code passing it around.

Metrics: module-level collectors on the default registry, labelled only with values from a small
closed vocabulary (route templates, methods, status codes, job names, outcomes); `safe_label`
turns anything else into "other", so a mistaken caller cannot put an id or a name into a label.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from clinvault_shared.queue import JobSpec
    from clinvault_shared.runtime import Runtime

logger = logging.getLogger("clinvault.observability")

# --------------------------------------------------------------------------------------------
# PHI filter
# --------------------------------------------------------------------------------------------

REDACTED = "[redacted]"

# Keys whose values are masked wherever they appear (compared lower-case, '-' read as '_').
SENSITIVE_KEYS = frozenset(
    {
        "patient_id",
        "patient",
        "patient_name",
        "name",
        "first_name",
        "last_name",
        "given_name",
        "family_name",
        "full_name",
        "dob",
        "date_of_birth",
        "birth_date",
        "birthdate",
        "email",
        "phone",
        "telephone",
        "address",
        "mrn",
        "ssn",
        "signed_by",
        "witness",
        "token",
        "access_token",
        "authorization",
        "api_key",
        "secret",
        "password",
        "cookie",
        "set_cookie",
        "x_break_glass_reason",
        "break_glass_reason",
        "note",
        "description",
        "reason_text",
        "identifier",
        "identifiers",
        "filename",
        "file_name",
    }
)

_VALUE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Credentials first, so the later patterns do not chew them up piecemeal.
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer " + REDACTED),
    (re.compile(r"\bcvk_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"), "cvk_" + REDACTED),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[email]"),
    # A calendar date standing alone (a date of birth); a date followed by a time is a
    # timestamp, which logs need, so it is left alone.
    (re.compile(r"\b(?:19|20)\d{2}-[01]\d-[0-3]\d\b(?![T ]?\d{2}:)"), "[date]"),
    (re.compile(r"\b\d{1,2}([/.])\d{1,2}\1(?:19|20)\d{2}\b"), "[date]"),
    (re.compile(r"\b\d{1,2}/\d{1,2}/\d{2}\b"), "[date]"),
    # IP addresses are identifiers under HIPAA (a patient's, on the portal).
    (re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"), "[ip]"),
    # Phone numbers and national identifiers: 9+ digits, optionally grouped.
    (re.compile(r"(?<![\w.:])\+?\d(?:[\s().-]{0,2}\d){8,}(?![\w.:])"), "[number]"),
]


def _normal_key(key: object) -> str:
    return str(key).lower().replace("-", "_")


def mask_text(text: str) -> str:
    """`text` with e-mails, phone numbers, dates of birth and credentials masked."""
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return REDACTED
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if _normal_key(k) in SENSITIVE_KEYS else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else (exceptions, ORM objects, bytes) is rendered to text and masked: an object's
    # repr may quote the data it holds.
    return mask_text(repr(value))


def _drop_duplicate_message(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # stdlib records carry the formatted text twice (`event` and `message`); uvicorn adds a
    # copy with terminal colours. Keep one.
    if event_dict.get("message") == event_dict.get("event"):
        event_dict.pop("message", None)
    event_dict.pop("color_message", None)
    return event_dict


def scrub_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask PHI-looking keys and values in every event."""
    for key in list(event_dict):
        if _normal_key(key) in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
        elif key not in ("_record", "_from_structlog"):
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


# --------------------------------------------------------------------------------------------
# Logging setup
# --------------------------------------------------------------------------------------------


def _exception_without_messages(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Render a logged exception as its types and frames only.

    Exception messages quote whatever the failing code held (a form value, a patient id in a
    driver error); the type and the frames are what an operator needs to find the bug.
    """
    exc_info = event_dict.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not exc_info or not isinstance(exc_info, tuple) or exc_info[0] is None:
        return event_dict
    import traceback

    parts: list[str] = []
    error: BaseException | None = exc_info[1]
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frames = traceback.extract_tb(error.__traceback__)[-8:]
        where = " <- ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(frames))
        parts.append(f"{type(error).__module__}.{type(error).__qualname__} at {where}")
        error = error.__cause__ or error.__context__
    event_dict["exception"] = " | caused by ".join(parts)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_duplicate_message,
        _exception_without_messages,
        structlog.processors.format_exc_info,
        # After exceptions are rendered (a traceback quotes messages), before the timestamp is
        # added by the formatter (a bare date would be masked; a timestamp is not, but why risk it).
        scrub_phi,
    ]


def configure_logging(level: str | int = "INFO", *, stream: Any = None) -> None:
    """Route structlog and stdlib logging to one JSON-lines handler with the PHI filter.

    Idempotent; call it at start of every process (the API lifespan does; workers call it from
    their startup hook). Replaces handlers that uvicorn installed on its own loggers so their
    lines go through the same filter.
    """
    processors = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Foreign records arrive with the message already formatted; scrub it again.
            scrub_phi,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("clinvault-json")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "clinvault-json":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "arq", "arq.worker"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    # uvicorn's access line quotes the raw path and query (upload-link tokens, `?patient_id=`):
    # it is off, and ObservabilityMiddleware logs each request by its route template instead.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


def get_logger(name: str = "clinvault") -> Any:
    """A structlog logger: `get_logger(__name__).info("image_scrubbed", image_id=...)`."""
    return structlog.stdlib.get_logger(name)


def bind_request_id(request_id: str) -> None:
    """Attach `request_id` to every log line of the current task (the middleware does this)."""
    structlog.contextvars.bind_contextvars(request_id=request_id)


@contextmanager
def bound_job(job_id: str | None, job: str | None = None) -> Iterator[None]:
    """Attach `job_id` (and the job's name) to every log line inside the block."""
    values = {k: v for k, v in (("job_id", job_id), ("job", job)) if v}
    with structlog.contextvars.bound_contextvars(**values):
        yield


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

_LABEL_OK = re.compile(r"^[a-z][a-z0-9_.:-]{0,47}$")
_DIGIT_RUN = re.compile(r"\d{4,}")
_MAX_VALUES_PER_LABEL = 64
_seen_label_values: dict[str, set[str]] = {}


def safe_label(kind: str, value: object) -> str:
    """`value` if it reads as a code word (lower-case, short, no long digit runs), else "other".

    A label keeps at most 64 distinct values per kind; later new values become "other", so a
    caller passing ids by mistake cannot grow the series (or leak them) without bound.
    """
    text = str(value)
    if not _LABEL_OK.match(text) or _DIGIT_RUN.search(text) or "@" in text:
        return "other"
    seen = _seen_label_values.setdefault(kind, set())
    if text not in seen:
        if len(seen) >= _MAX_VALUES_PER_LABEL:
            return "other"
        seen.add(text)
    return text


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

HTTP_REQUEST_DURATION = Histogram(
    "clinvault_http_request_duration_seconds",
    "HTTP request latency by route template (never the raw path), method and status.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "clinvault_queue_depth",
    "Jobs in the queue (arq:queue sorted set: waiting, deferred and running), read at scrape.",
)
JOB_DURATION = Histogram(
    "clinvault_job_duration_seconds",
    "Job run time by job name and outcome.",
    ["job", "outcome"],
    buckets=_JOB_BUCKETS,
)
JOBS = Counter("clinvault_jobs", "Job runs by job name and outcome.", ["job", "outcome"])
IMAGES = Gauge(
    "clinvault_images", "Images by status, counted in the database at scrape.", ["status"]
)
SHREDS = Counter("clinvault_shreds", "Crypto-shreds (keys destroyed) by kind.", ["kind"])
DECISIONS = Counter("clinvault_decisions", "Consent decisions by outcome.", ["outcome"])

IMAGE_STATUSES = ("received", "processing", "ready", "rejected", "deleted")
JOB_OUTCOMES = ("success", "retry", "failure", "cancelled")


def count_decision(outcome: str) -> None:
    """Count one consent decision (`permit`, `deny`, ...)."""
    DECISIONS.labels(outcome=safe_label("decision", outcome)).inc()


def count_shred(kind: str, count: int = 1) -> None:
    """Count destroyed keys by kind (`image`, `authorization`, `patient`, `scope_key`, ...)."""
    SHREDS.labels(kind=safe_label("shred", kind)).inc(count)


def set_image_counts(counts: dict[str, int]) -> None:
    """Set the images-by-status gauge (statuses not given read 0)."""
    for status in {*IMAGE_STATUSES, *counts}:
        IMAGES.labels(status=safe_label("image_status", status)).set(counts.get(status, 0))


@asynccontextmanager
async def observe_job(name: str, job_id: str | None = None) -> AsyncIterator[None]:
    """Time a job and count its outcome; binds the job id to log lines inside.

    Outcomes: success, retry (RetryLater or arq's Retry), cancelled, failure. Exceptions pass
    through unchanged.
    """
    from clinvault_shared.queue import RetryLater

    job = safe_label("job", name)
    outcome = "failure"
    started = time.perf_counter()
    with bound_job(job_id, job):
        try:
            yield
            outcome = "success"
        except RetryLater:
            outcome = "retry"
            raise
        except BaseException as exc:
            if type(exc).__name__ == "Retry":  # arq.worker.Retry, without importing arq here
                outcome = "retry"
            elif isinstance(exc, asyncio.CancelledError):
                outcome = "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - started
            JOB_DURATION.labels(job=job, outcome=outcome).observe(elapsed)
            JOBS.labels(job=job, outcome=outcome).inc()


def instrument_job(spec: JobSpec) -> JobSpec:
    """The same job, wrapped in `observe_job` with the job id from arq's ctx."""
    from dataclasses import replace

    inner = spec.coroutine

    async def run(ctx: dict[str, Any], *args: Any) -> Any:
        async with observe_job(spec.name, ctx.get("job_id")):
            return await inner(ctx, *args)

    run.__qualname__ = spec.name
    return replace(spec, coroutine=run)


async def refresh_scrape_gauges(runtime: Runtime) -> None:
    """Read queue depth and images by status just before a scrape (each bounded to 2 s)."""
    from sqlalchemy import func, select

    from clinvault_shared.db.models.image import Image

    if runtime.queue is not None:
        try:
            async with asyncio.timeout(2):
                QUEUE_DEPTH.set(await runtime.queue.depth())
        except Exception as exc:
            logger.warning("queue depth unavailable: %s", type(exc).__name__)
    try:
        async with asyncio.timeout(2), runtime.session() as session:
            rows = await session.execute(select(Image.status, func.count()).group_by(Image.status))
            set_image_counts({str(status): int(count) for status, count in rows.all()})
    except Exception as exc:
        logger.warning("image counts unavailable: %s", type(exc).__name__)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104  (scraped from other pods)
    """Serve /metrics on `port` from a thread (workers, which have no HTTP app)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr)


# --------------------------------------------------------------------------------------------
# HTTP middleware
# --------------------------------------------------------------------------------------------

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
REQUEST_ID_HEADER = "x-request-id"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ObservabilityMiddleware:
    """Pure ASGI middleware: a request id per request (bound to logs, echoed in X-Request-ID)
    and the latency histogram labelled with the matched route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"")
        candidate = incoming.decode("latin-1")
        request_id = candidate if _REQUEST_ID_OK.match(candidate) else uuid.uuid4().hex
        method = str(scope.get("method", ""))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = route_template(scope)
                method_label = method if method in _METHODS else "other"
                HTTP_REQUEST_DURATION.labels(
                    route=route, method=method_label, status=str(status)
                ).observe(elapsed)
                _access_log.info(
                    "request",
                    route=route,
                    method=method_label,
                    status=status,
                    duration_ms=round(elapsed * 1000, 1),
                )


# One line per request, by route template: never the raw path or query string.
_access_log = structlog.stdlib.get_logger("clinvault.access")


def route_template(scope: Scope) -> str:
    """The path template of the route that matched (`/v1/images/{image_id}`), or "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"
