"""API keys: random, shown once, stored as a hash, revocable; roles as permission sets."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from clinvault_shared.auth import (
    ROLE_PERMISSIONS,
    Permission,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
)
from clinvault_shared.db.models import ApiKey
from clinvault_shared.db.session import create_engine, create_sessionmaker
from clinvault_shared.errors import BadRequest, Forbidden, Unauthenticated


@pytest.fixture
async def sessionmaker(database_url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_key_round_trip_and_hash_only(sessionmaker) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        issued = await create_key(session, tenant_id="hosp-a", role="clinician")
        await session.commit()
    async with sessionmaker() as session:
        stored = (await session.scalars(select(ApiKey))).one()
        # Only a hash is kept: the secret (and its random part) appears in no column.
        secret_part = issued.secret.split(".", 1)[1]
        assert secret_part not in stored.secret_hash
        assert issued.secret not in repr(stored.__dict__)
        principal = await authenticate(session, issued.secret)
    assert principal.tenant_id == "hosp-a"
    assert principal.role == "clinician"
    assert principal.key_id == stored.id


async def test_two_keys_differ(sessionmaker) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        first = await create_key(session, tenant_id="t1", role="admin")
        second = await create_key(session, tenant_id="t1", role="admin")
        await session.commit()
    assert first.secret != second.secret
    assert first.key_id != second.key_id


@pytest.mark.parametrize(
    "presented",
    ["", "nonsense", "cvk_key_0000000000000000.wrong", "Bearer x"],
)
async def test_bad_keys_are_401(sessionmaker, presented: str) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        await create_key(session, tenant_id="t1", role="admin")
        await session.commit()
        with pytest.raises(Unauthenticated):
            await authenticate(session, presented)


async def test_tampered_secret_is_401(sessionmaker) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        issued = await create_key(session, tenant_id="t1", role="admin")
        await session.commit()
        tampered = issued.secret[:-1] + ("A" if issued.secret[-1] != "A" else "B")
        with pytest.raises(Unauthenticated):
            await authenticate(session, tampered)


async def test_revoked_key_is_401(sessionmaker) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        issued = await create_key(session, tenant_id="t1", role="emr")
        await session.commit()
        await revoke_key(session, issued.key_id)
        await session.commit()
        with pytest.raises(Unauthenticated):
            await authenticate(session, issued.secret)
        keys = await list_keys(session, "t1")
    assert [k.revoked_at is not None for k in keys] == [True]


async def test_unknown_role_and_bad_tenant_rejected(sessionmaker) -> None:  # type: ignore[no-untyped-def]
    async with sessionmaker() as session:
        with pytest.raises(BadRequest, match="unknown role"):
            await create_key(session, tenant_id="t1", role="superuser")
        with pytest.raises(BadRequest, match="tenant"):
            await create_key(session, tenant_id="bad tenant!", role="admin")


def test_roles_are_permission_sets() -> None:
    assert set(ROLE_PERMISSIONS) == {
        "emr",
        "telemedicine",
        "clinician",
        "consent_admin",
        "reviewer",
        "researcher",
        "auditor",
        "admin",
    }
    assert ROLE_PERMISSIONS["admin"] == frozenset(Permission)
    # A researcher reads approved derivatives, never originals; an auditor reads no images.
    assert Permission.IMAGES_CONTENT not in ROLE_PERMISSIONS["researcher"]
    assert Permission.IMAGES_CONTENT not in ROLE_PERMISSIONS["auditor"]
    assert Permission.DERIVATIVES_REVIEW in ROLE_PERMISSIONS["reviewer"]


def test_principal_require() -> None:
    from clinvault_shared.auth import Principal

    principal = Principal(key_id="key_x", tenant_id="t", role="auditor")
    principal.require(Permission.AUDIT_READ)
    with pytest.raises(Forbidden, match="images:write"):
        principal.require(Permission.IMAGES_WRITE)
