"""Fixtures for the real servers: PostgreSQL and Redis on this machine, SQLite files in tmp dirs."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from sqlalchemy import text

from clinvault_shared.db import migrate
from clinvault_shared.db.base import Base
from clinvault_shared.db.session import create_engine

PG_ADMIN_DSN = os.environ.get("CLINVAULT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_HOST_URL = os.environ.get(
    "CLINVAULT_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432"
)
T = TypeVar("T")
pytest_plugins = ["tests.s3"]
REDIS_TEST_URL = os.environ.get("CLINVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def in_thread(func: Callable[[], T]) -> T:
    """Run blocking setup (which may start its own event loop) off the test's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(func).result()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped afterwards."""
    name = f"clinvault_test_{secrets.token_hex(4)}"
    url = f"{PG_HOST_URL}/{name}"
    in_thread(lambda: asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"')))
    in_thread(lambda: migrate.upgrade(url))
    yield url
    in_thread(lambda: asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    """A fresh SQLite file, migrated to head."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'clinvault.db'}"
    in_thread(lambda: migrate.upgrade(url))
    return url


async def truncate_all(url: str) -> None:
    """Empty every table (tests share one migrated PostgreSQL database)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture
async def pg_url(pg_database_url: str) -> AsyncIterator[str]:
    """The session's PostgreSQL database, emptied before the test."""
    await truncate_all(pg_database_url)
    return pg_database_url


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'clinvault.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        yield url
    else:
        url = request.getfixturevalue("pg_database_url")
        await truncate_all(url)
        yield url


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database on the real server, flushed before the test."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_TEST_URL)
    await client.flushdb()
    await client.aclose()
    return REDIS_TEST_URL


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts from the embedded defaults inside its own data directory."""
    from clinvault_shared.settings import get_settings

    for key in list(os.environ):
        if key.startswith("CLINVAULT_") and not key.startswith("CLINVAULT_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CLINVAULT_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
