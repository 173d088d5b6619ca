"""Fixtures of the consent tests: a consent app on a real database, keys per tenant and role,
and helpers that put rows straight into the tables other services own (images, derivatives)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from clinvault_consent.api import router
from clinvault_consent.jobs import JOBS
from clinvault_shared.app import build_app
from clinvault_shared.auth import create_key
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import Image, Tenant
from clinvault_shared.queue import CronSpec
from clinvault_shared.runtime import Runtime
from clinvault_shared.settings import get_settings

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class ConsentApi:
    """A running consent app and ways to call it as a tenant's key."""

    app: FastAPI
    runtime: Runtime

    async def key(self, tenant_id: str, role: str = "admin") -> str:
        async with self.runtime.session() as session:
            issued = await create_key(session, tenant_id=tenant_id, role=role)
            await session.commit()
        return issued.secret

    async def client(self, tenant_id: str, role: str = "admin") -> httpx.AsyncClient:
        secret = await self.key(tenant_id, role)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://consent.test",
            headers={"Authorization": f"Bearer {secret}"},
        )

    async def image(
        self,
        tenant_id: str,
        patient_id: str,
        *,
        encounter_id: str | None = None,
        source: str = "emr",
        created_at: datetime | None = None,
    ) -> str:
        """An image row as ingest would write it (the consent service only reads them)."""
        image_id = new_id("img")
        async with self.runtime.session() as session:
            if await session.get(Tenant, tenant_id) is None:
                session.add(Tenant(id=tenant_id))
                await session.flush()
            values: dict[str, Any] = {}
            if created_at is not None:
                values["created_at"] = created_at
            session.add(
                Image(
                    id=image_id,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    source=source,
                    encounter_id=encounter_id,
                    status="ready",
                    sha256=hashlib.sha256(image_id.encode()).hexdigest(),
                    size=10,
                    **values,
                )
            )
            await session.commit()
        return image_id


@pytest.fixture
def crons() -> Sequence[CronSpec]:
    """No periodic jobs unless a test asks (they would race with what the test checks)."""
    return []


@asynccontextmanager
async def running_app(
    url: str, monkeypatch: pytest.MonkeyPatch, crons: Sequence[CronSpec]
) -> AsyncIterator[ConsentApi]:
    """The consent routes on `build_app` with the embedded queue, on the given database."""
    monkeypatch.setenv("CLINVAULT_DATABASE_URL", url)
    get_settings.cache_clear()
    app = build_app(
        title="clinvault consent (test)",
        routers=[router],
        embedded_jobs=JOBS,
        embedded_crons=crons,
    )
    async with LifespanManager(app):
        yield ConsentApi(app=app, runtime=app.state.runtime)


@pytest.fixture
async def consent_api(
    database_url: str, monkeypatch: pytest.MonkeyPatch, crons: Sequence[CronSpec]
) -> AsyncIterator[ConsentApi]:
    """The consent app, once on SQLite and once on PostgreSQL."""
    async with running_app(database_url, monkeypatch, crons) as api:
        yield api


@pytest.fixture
async def pg_consent_api(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ConsentApi]:
    """The consent app on PostgreSQL only (row-lock races)."""
    async with running_app(pg_url, monkeypatch, []) as api:
        yield api


def authorization_body(patient_id: str, **overrides: Any) -> dict[str, Any]:
    """A complete, valid authorization request (each test removes what it is about)."""
    body: dict[str, Any] = {
        "patient_id": patient_id,
        "purposes": ["education"],
        "description": "Photographs of the left forearm lesion, before and after excision",
        "disclosed_by": "Dermatology department",
        "recipients": ["Grand rounds attendees"],
        "expires_at": (datetime.now(UTC) + timedelta(days=365)).isoformat(),
        "internet_disclosure_acknowledged": True,
        "right_to_revoke_acknowledged": True,
        "redisclosure_acknowledged": True,
        "signed_by": "the patient",
        "signed_at": datetime.now(UTC).isoformat(),
        "method": "written",
        "image_ids": [],
        "encounter_id": "enc-1",
    }
    body.update(overrides)
    return body
