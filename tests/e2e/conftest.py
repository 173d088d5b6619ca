"""Fixtures for the end-to-end suite: `harness` runs each test in both modes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from tests.conftest import REDIS_TEST_URL, in_thread, truncate_all
from tests.e2e.harness import Harness, serve

MODES = [
    pytest.param("embedded", id="embedded"),
    pytest.param(
        "distributed",
        id="distributed",
        marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3],
    ),
]


def _flush_redis(url: str) -> None:
    from redis import Redis

    client = Redis.from_url(url)
    client.flushdb()
    client.close()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the settings at the mode's components (sync, so it can resolve session fixtures)."""
    if request.param == "distributed":
        pg_url: str = request.getfixturevalue("pg_database_url")
        in_thread(lambda: asyncio.run(truncate_all(pg_url)))
        _flush_redis(REDIS_TEST_URL)
        s3 = request.getfixturevalue("s3_settings")
        monkeypatch.setenv("CLINVAULT_DATABASE_URL", pg_url)
        monkeypatch.setenv("CLINVAULT_REDIS_URL", REDIS_TEST_URL)
        for name, value in s3.env(f"e2e-{secrets.token_hex(4)}").items():
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLINVAULT_WORKER_CONCURRENCY", "1")
    monkeypatch.setenv("CLINVAULT_MAX_UPLOAD_BYTES", str(2 * 1024 * 1024))
    monkeypatch.setenv("CLINVAULT_RECONCILE_INTERVAL_SECONDS", "2")
    return str(request.param)


@pytest.fixture
async def harness(mode: str) -> AsyncIterator[Harness]:
    """The ingest API and its workers: SQLite + folder + in-process queue, or PostgreSQL +
    Redis + S3 (SeaweedFS) + a real arq worker."""
    async with serve(mode) as harness:
        yield harness
