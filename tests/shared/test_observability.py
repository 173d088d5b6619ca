"""Logs without PHI, metrics labelled by route template, /metrics, request ids, clean shutdown."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY
from tests.processes import free_port, wait_healthy

from clinvault_shared import observability as obs
from clinvault_shared.app import build_app
from clinvault_shared.queue import JobSpec, RetryLater

PHI_VALUES = [
    "jane.doe@example.org",
    "+1 (555) 010-4477",
    "555-010-4477",
    "1984-03-07",
    "07/03/1984",
    "7.3.1984",
    "Bearer cvk_abc123.s3cr3tS3CR3T",
    "cvk_key01.zzzzzzzzzzzzzzzz",
    "203.0.113.77",
]


# ------------------------------------------------------------------ the PHI filter


def run_filter(event: dict[str, Any]) -> dict[str, Any]:
    return dict(obs.scrub_phi(None, "info", dict(event)))


@pytest.mark.parametrize(
    "key",
    [
        "patient_id",
        "Patient-ID",
        "name",
        "dob",
        "date_of_birth",
        "token",
        "Authorization",
        "api_key",
        "email",
        "phone",
        "signed_by",
        "x-break-glass-reason",
    ],
)
def test_sensitive_keys_are_masked(key: str) -> None:
    out = run_filter({"event": "x", key: "Harold Example 1950"})
    assert out[key] == obs.REDACTED


def test_sensitive_keys_are_masked_inside_nested_values() -> None:
    out = run_filter({"event": "x", "detail": {"form": [{"patient_name": "Harold", "ok": 1}]}})
    assert out["detail"] == {"form": [{"patient_name": obs.REDACTED, "ok": 1}]}


@pytest.mark.parametrize("value", PHI_VALUES)
def test_phi_looking_values_are_masked_in_any_field_and_the_message(value: str) -> None:
    out = run_filter({"event": f"upload from {value} done", "hint": f"seen {value}"})
    rendered = json.dumps(out)
    assert value not in rendered
    # Nothing of the secret part of a credential survives either.
    assert "s3cr3t" not in rendered.lower()
    assert "zzzz" not in rendered


@pytest.mark.parametrize(
    "value",
    [
        "img_01HZX3K9",
        "2026-11-01T12:30:00+00:00",
        "2026-11-01 12:30:00",
        "status=ready",
        "took 1234 ms",
        "version 1.2.24",
        "scrub_image",
    ],
)
def test_operational_values_are_kept(value: str) -> None:
    out = run_filter({"event": value, "image_id": value})
    assert out == {"event": value, "image_id": value}


def test_numbers_and_booleans_pass_through() -> None:
    assert run_filter({"event": "e", "count": 5551234567, "ok": True}) == {
        "event": "e",
        "count": 5551234567,
        "ok": True,
    }


def test_object_reprs_are_masked() -> None:
    class Holder:
        def __repr__(self) -> str:
            return "Holder(email=jane.doe@example.org)"

    out = run_filter({"event": "e", "obj": Holder()})
    assert "jane.doe" not in out["obj"]


# ------------------------------------------------------------------ JSON logs


@pytest.fixture
def log_stream() -> AsyncIterator[io.StringIO]:
    stream = io.StringIO()
    obs.configure_logging("INFO", stream=stream)
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "clinvault-json":
            root.removeHandler(handler)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_stdlib_and_structlog_lines_are_json_and_filtered(log_stream: io.StringIO) -> None:
    logging.getLogger("some.library").warning("mail to %s failed", "jane.doe@example.org")
    obs.get_logger("clinvault.test").info("image_received", patient_id="MRN-77", size=10)
    first, second = lines(log_stream)
    assert first["event"] == "mail to [email] failed"
    assert first["level"] == "warning"
    assert first["logger"] == "some.library"
    assert "timestamp" in first
    assert second["event"] == "image_received"
    assert second["patient_id"] == obs.REDACTED
    assert second["size"] == 10
    assert "MRN-77" not in log_stream.getvalue()


def test_exception_text_in_tracebacks_is_masked(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("bad date of birth 1950-02-03 for jane.doe@example.org")
    except ValueError:
        logging.getLogger("clinvault.test").exception("failed")
    (line,) = lines(log_stream)
    assert "ValueError" in line["exception"]
    assert "1950-02-03" not in line["exception"]
    assert "jane.doe" not in line["exception"]


def test_logged_exceptions_keep_types_and_frames_but_no_messages(
    log_stream: io.StringIO,
) -> None:
    # A patient id in a message matches no pattern: only dropping messages keeps it out.
    try:
        try:
            raise KeyError("MRN-55123 Harold Smith")
        except KeyError as inner:
            raise RuntimeError("while storing MRN-55123") from inner
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    (line,) = lines(log_stream)
    assert "builtins.RuntimeError at " in line["exception"]
    assert "caused by builtins.KeyError" in line["exception"]
    assert "test_observability.py" in line["exception"]
    assert "MRN-55123" not in log_stream.getvalue()
    assert "Harold" not in log_stream.getvalue()


async def test_job_id_is_bound_inside_observe_job(log_stream: io.StringIO) -> None:
    async with obs.observe_job("scrub_image", "job-abc-123"):
        obs.get_logger().info("inside")
    obs.get_logger().info("outside")
    inside, outside = lines(log_stream)
    assert inside["job_id"] == "job-abc-123"
    assert inside["job"] == "scrub_image"
    assert "job_id" not in outside


# ------------------------------------------------------------------ metric helpers


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    "value",
    ["jane.doe@example.org", "Harold Smith", "MRN-0042", "img_01234567", "1984-03-07", "x" * 80],
)
def test_label_values_that_are_not_code_words_become_other(value: str) -> None:
    assert obs.safe_label("test_kind", value) == "other"


def test_label_cardinality_is_capped() -> None:
    kept = {
        obs.safe_label("capped_kind", f"word_{chr(97 + i // 26)}{chr(97 + i % 26)}")
        for i in range(100)
    }
    assert "other" in kept
    assert len(kept) == 65  # 64 distinct values, then "other"


def test_count_decision_and_shred() -> None:
    before = sample("clinvault_decisions_total", {"outcome": "permit"})
    other = sample("clinvault_decisions_total", {"outcome": "other"})
    obs.count_decision("permit")
    obs.count_decision("patient MRN-1234")
    assert sample("clinvault_decisions_total", {"outcome": "permit"}) == before + 1
    assert sample("clinvault_decisions_total", {"outcome": "other"}) == other + 1
    shreds = sample("clinvault_shreds_total", {"kind": "authorization"})
    obs.count_shred("authorization", 3)
    assert sample("clinvault_shreds_total", {"kind": "authorization"}) == shreds + 3


async def test_observe_job_counts_outcomes() -> None:
    def count(outcome: str) -> float:
        return sample("clinvault_jobs_total", {"job": "test_job", "outcome": outcome})

    before = {o: count(o) for o in obs.JOB_OUTCOMES}
    async with obs.observe_job("test_job"):
        pass
    with pytest.raises(RetryLater):
        async with obs.observe_job("test_job"):
            raise RetryLater(1)
    with pytest.raises(KeyError):
        async with obs.observe_job("test_job"):
            raise KeyError("x")
    assert count("success") == before["success"] + 1
    assert count("retry") == before["retry"] + 1
    assert count("failure") == before["failure"] + 1
    assert (
        sample("clinvault_job_duration_seconds_count", {"job": "test_job", "outcome": "success"})
        >= 1
    )


async def test_instrument_job_wraps_a_jobspec() -> None:
    calls: list[tuple[Any, ...]] = []

    async def job(ctx: dict[str, Any], image_id: str) -> str:
        calls.append((ctx["job_id"], image_id))
        return "done"

    spec = obs.instrument_job(JobSpec("wrapped_job", job, timeout_seconds=7))
    assert spec.name == "wrapped_job"
    assert spec.timeout_seconds == 7
    before = sample("clinvault_jobs_total", {"job": "wrapped_job", "outcome": "success"})
    assert await spec.coroutine({"job_id": "j1"}, "img_1") == "done"
    assert calls == [("j1", "img_1")]
    assert (
        sample("clinvault_jobs_total", {"job": "wrapped_job", "outcome": "success"}) == before + 1
    )


# ------------------------------------------------------------------ the app: middleware, /metrics


async def _noop_job(ctx: dict[str, Any]) -> None:
    return None


def make_app() -> FastAPI:
    router = APIRouter()

    @router.get("/v1/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        structlog.stdlib.get_logger("clinvault.test").info("thing_read")
        return {"ok": "yes"}

    @router.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("boom for jane.doe@example.org")

    return build_app(title="test", routers=[router], embedded_jobs=[JobSpec("noop", _noop_job)])


@pytest.fixture
def app() -> FastAPI:
    return make_app()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
    structlog.contextvars.clear_contextvars()


async def test_latency_is_labelled_with_the_route_template_never_the_path(
    client: httpx.AsyncClient,
) -> None:
    labels = {"route": "/v1/things/{thing_id}", "method": "GET", "status": "200"}
    before = sample("clinvault_http_request_duration_seconds_count", labels)
    response = await client.get("/v1/things/MRN-0042-Harold")
    assert response.status_code == 200
    assert sample("clinvault_http_request_duration_seconds_count", labels) == before + 1
    missing = await client.get("/no/such/path-MRN-0043")
    assert missing.status_code == 404
    boom = await client.get("/v1/boom")
    assert boom.status_code == 500
    text = (await client.get("/metrics")).text
    assert 'route="unmatched"' in text
    assert 'route="/v1/boom",status="500"' in text
    assert "MRN-004" not in text
    assert "jane.doe" not in text


async def test_metrics_exposes_every_metric_name(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in [
        "clinvault_http_request_duration_seconds_bucket",
        "clinvault_queue_depth",
        "clinvault_job_duration_seconds",
        "clinvault_jobs_total",
        "clinvault_images",
        "clinvault_shreds_total",
        "clinvault_decisions_total",
    ]:
        assert f"\n# TYPE {name.removesuffix('_bucket').removesuffix('_total')}" in response.text
    # Images by status are read from the (empty) database at scrape time.
    assert 'clinvault_images{status="ready"} 0.0' in response.text


async def test_images_by_status_come_from_the_database(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    from clinvault_shared.db.models.image import Image
    from clinvault_shared.db.models.tenant import Tenant

    runtime = app.state.runtime
    async with runtime.session() as session:
        session.add(Tenant(id="t_obs"))
        await session.flush()
        for i, status in enumerate(["ready", "ready", "rejected"]):
            session.add(
                Image(
                    id=f"img_obs{i}",
                    tenant_id="t_obs",
                    patient_id="p",
                    source="emr",
                    status=status,
                    sha256="0" * 64,
                    size=1,
                )
            )
        await session.commit()
    text = (await client.get("/metrics")).text
    assert 'clinvault_images{status="ready"} 2.0' in text
    assert 'clinvault_images{status="rejected"} 1.0' in text
    assert 'clinvault_images{status="processing"} 0.0' in text


async def test_request_ids_are_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "req-0123456789"})
    assert given.headers["x-request-id"] == "req-0123456789"
    made = await client.get("/healthz", headers={"X-Request-ID": "jane.doe@example.org\n"})
    assert made.headers["x-request-id"] != "jane.doe@example.org\n"
    assert len(made.headers["x-request-id"]) == 32
    other = await client.get("/healthz")
    assert other.headers["x-request-id"] not in (made.headers["x-request-id"], "")


async def test_request_id_is_bound_to_log_lines(client: httpx.AsyncClient) -> None:
    stream = io.StringIO()
    obs.configure_logging("INFO", stream=stream)  # the lifespan configured stderr; swap stream
    await client.get("/v1/things/x", headers={"X-Request-ID": "req-abcdef123"})
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines() if "thing_read" in x]
    assert line["request_id"] == "req-abcdef123"


# ------------------------------------------------------------------ graceful shutdown


SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from fastapi import APIRouter
    from clinvault_shared.app import build_app
    from clinvault_shared.queue import JobSpec

    async def noop(ctx): return None

    app = build_app(title="t", routers=[APIRouter()], embedded_jobs=[JobSpec("noop", noop)])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
    """
)


def test_api_exits_cleanly_on_sigterm_with_json_logs(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CLINVAULT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if not wait_healthy(f"http://127.0.0.1:{port}", proc):
            pytest.fail(
                "server did not become ready: "
                + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
            )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn re-raises the signal once shutdown is complete, so -SIGTERM is the clean exit.
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = [r["event"] for r in records]
    assert "Application shutdown complete." in events
    assert any(e.startswith("Finished server process") for e in events)
    assert not any("color_message" in r for r in records)
    # After the lifespan configured logging, every line uvicorn printed is JSON.
    after = stderr.split("Application startup complete.", 1)[1]
    assert all(
        line.startswith(("{", '"', ",")) or not line.strip() for line in after.splitlines()[1:]
    ), after
