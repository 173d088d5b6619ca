"""The encrypted blob store contract, on a local folder and a real S3, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import S3Store
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from tests.s3 import S3TestServer

from clinvault_shared.blobstore import (
    BlobStoreUnreachable,
    BlobUnavailable,
    EncryptedBlobStore,
    KeyDestroyed,
    ObjectNotFound,
    rotate_kek_command,
)
from clinvault_shared.blobstore.backend import object_path
from clinvault_shared.crypto.errors import (
    ChunkAuthenticationFailed,
    CryptoError,
    DecryptionFailed,
    MasterKeyUnavailable,
)
from clinvault_shared.crypto.master import LocalKeyProvider
from clinvault_shared.crypto.pseudonym import patient_ref
from clinvault_shared.crypto.stream import CHUNK_SIZE
from clinvault_shared.db.base import new_id
from clinvault_shared.db.models import BlobObject, ScopeKey
from clinvault_shared.db.session import create_engine, create_sessionmaker
from clinvault_shared.errors import Conflict
from clinvault_shared.settings import Settings, get_settings

TENANT = "tenant-a"
PATIENT = "MRN-0042-DOE-JANE"  # stands in for PHI: it must appear in no name and no blob


@pytest.fixture(params=["local", "s3"])
def blob_settings(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """Settings for the local folder or the real S3 (a fresh prefix per test)."""
    if request.param == "s3":
        server: S3TestServer = request.getfixturevalue("s3_settings")
        prefix: str = request.getfixturevalue("s3_prefix")
        for name, value in server.env(prefix).items():
            monkeypatch.setenv(name, value)
    else:
        monkeypatch.setenv("CLINVAULT_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
def blobs(blob_settings: Settings) -> EncryptedBlobStore:
    return EncryptedBlobStore.from_settings(blob_settings)


async def _put(
    blobs: EncryptedBlobStore,
    maker: async_sessionmaker[AsyncSession],
    data: bytes,
    *,
    scope: str = "care",
    patient: str = PATIENT,
) -> str:
    async with maker() as session, session.begin():
        stored = await blobs.put(
            session, tenant_id=TENANT, patient_id=patient, scope=scope, data=data
        )
    return stored.object_id


async def _put_rolled_back(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession], data: bytes
) -> str:
    """A put whose caller's transaction rolls back: ciphertext stored, no row for it."""
    async with maker() as session:
        stored = await blobs.put(
            session, tenant_id=TENANT, patient_id=PATIENT, scope="care", data=data
        )
        await session.rollback()
    return stored.object_id


async def _read(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession], oid: str
) -> bytes:
    async with maker() as session:
        return await blobs.read_all(session, oid)


async def _all_paths(blobs: EncryptedBlobStore) -> list[str]:
    return [m["path"] async for batch in obstore.list(blobs.object_store) for m in batch]


# ---- put / get ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1])
async def test_put_then_get_round_trips(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession], size: int
) -> None:
    data = os.urandom(size)
    async with maker() as session, session.begin():
        stored = await blobs.put(
            session, tenant_id=TENANT, patient_id=PATIENT, scope="care", data=data
        )
    assert stored.size == size
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await _read(blobs, maker, stored.object_id) == data
    raw = await blobs.raw_ciphertext(stored.object_id)
    assert raw is not None
    assert len(raw) > size
    if size >= 16:
        assert data[:64] not in raw


async def test_streaming_put_and_get_stay_chunked(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    piece = os.urandom(700_000)
    count = 30  # ~20 MiB: several multipart parts on S3

    async def source() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    async with maker() as session, session.begin():
        stored = await blobs.put(
            session, tenant_id=TENANT, patient_id=PATIENT, scope="care", data=source()
        )
    assert stored.size == len(piece) * count
    assert stored.sha256 == hashlib.sha256(piece * count).hexdigest()
    async with maker() as session:
        stream = await blobs.get(session, stored.object_id)
    # The session is closed: reading needs no database any more.
    digest = hashlib.sha256()
    sizes = []
    async for chunk in stream:
        digest.update(chunk)
        sizes.append(len(chunk))
    assert digest.hexdigest() == stored.sha256
    assert max(sizes) <= CHUNK_SIZE
    assert len(sizes) == -(-stored.size // CHUNK_SIZE)


async def test_names_and_bytes_carry_no_phi(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    oid = await _put(blobs, maker, b"x" * 1000)
    async with maker() as session, session.begin():
        await blobs.destroy_scope(session, tenant_id=TENANT, patient_id=PATIENT, scope="care")
    paths = await _all_paths(blobs)
    assert object_path(oid) in paths
    assert any(p.startswith("keystore/shredded/") for p in paths)
    for path in paths:
        assert PATIENT not in path
        assert TENANT not in path
        raw = bytes(await (await obstore.get_async(blobs.object_store, path)).bytes_async())
        assert PATIENT.encode() not in raw
    async with maker() as session:
        rows = (await session.scalars(select(ScopeKey))).all()
    assert [r.patient_ref for r in rows] == [patient_ref(TENANT, PATIENT)]


async def test_unknown_object_is_not_found(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    async with maker() as session:
        with pytest.raises(ObjectNotFound) as info:
            await blobs.get(session, "obj_000000000000000000000000")
        with pytest.raises(ObjectNotFound):
            await blobs.delete(session, "obj_000000000000000000000000")
    assert isinstance(info.value, BlobUnavailable)
    assert info.value.status_code == 404


async def test_object_ids_must_be_random_ids(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    async with maker() as session:
        with pytest.raises(ValueError, match="new_id"):
            await blobs.put(
                session, tenant_id=TENANT, patient_id=PATIENT, scope="care", data=b"x",
                object_id="jane-doe-wound.jpg",
            )  # fmt: skip
        with pytest.raises(ValueError, match="scope"):
            await blobs.put(session, tenant_id=TENANT, patient_id=PATIENT, scope="x", data=b"x")


async def test_an_existing_object_id_is_never_overwritten(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    oid = await _put(blobs, maker, b"first")
    async with maker() as session:
        with pytest.raises(Conflict):
            await blobs.put(
                session, tenant_id=TENANT, patient_id=PATIENT, scope="care", data=b"second",
                object_id=oid,
            )  # fmt: skip
    assert await _read(blobs, maker, oid) == b"first"


async def test_caller_rollback_leaves_no_readable_object(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    oid = await _put_rolled_back(blobs, maker, b"abc")
    async with maker() as session:
        with pytest.raises(ObjectNotFound):
            await blobs.get(session, oid)


async def test_unregistered_ciphertext_can_be_discarded(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    # What a rolled-back put (or a killed job) leaves behind; absent ids are not an error.
    oid = await _put_rolled_back(blobs, maker, b"orphan")
    assert await blobs.raw_ciphertext(oid) is not None
    assert await blobs.discard_unregistered(oid) is True
    assert await blobs.raw_ciphertext(oid) is None
    assert await blobs.discard_unregistered(oid) is False
    assert await blobs.discard_unregistered(new_id("obj")) is False


async def test_one_scope_key_per_scope_even_when_first_puts_race(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    async def one(i: int) -> str:
        async with maker() as session, session.begin():
            stored = await blobs.put(
                session, tenant_id=TENANT, patient_id=PATIENT, scope="care", data=bytes([i]) * 10
            )
        return stored.scope_key_id

    key_ids = await asyncio.gather(*(one(i) for i in range(4)))
    assert len(set(key_ids)) == 1
    async with maker() as session:
        assert len((await session.scalars(select(ScopeKey))).all()) == 1


# ---- tampering in storage ---------------------------------------------------------------------


async def test_ciphertext_altered_or_moved_in_storage_fails(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    a = await _put(blobs, maker, os.urandom(3000))
    b = await _put(blobs, maker, os.urandom(3000))
    raw_a = await blobs.raw_ciphertext(a)
    assert raw_a is not None
    altered = raw_a[:-5] + bytes([raw_a[-5] ^ 1]) + raw_a[-4:]
    await obstore.put_async(blobs.object_store, object_path(b), raw_a)
    with pytest.raises(DecryptionFailed):
        await _read(blobs, maker, b)
    await obstore.put_async(blobs.object_store, object_path(a), altered)
    with pytest.raises(ChunkAuthenticationFailed):
        await _read(blobs, maker, a)


# ---- crypto-shredding ---------------------------------------------------------------------------


async def test_destroying_a_scope_makes_its_objects_unreadable_at_once(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    care = await _put(blobs, maker, b"care copy")
    derived = [await _put(blobs, maker, b"derivative %d" % i, scope="auth:az_1") for i in range(2)]
    other_patient = await _put(blobs, maker, b"other", scope="auth:az_1", patient="MRN-7")
    async with maker() as session, session.begin():
        n = await blobs.destroy_scope(
            session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_1"
        )
    assert n == 2
    for oid in derived:
        async with maker() as session:
            with pytest.raises(KeyDestroyed) as info:
                await blobs.get(session, oid)
        assert info.value.status_code == 410
        assert await blobs.raw_ciphertext(oid) is not None  # ciphertext remains, no key opens it
    assert await _read(blobs, maker, care) == b"care copy"
    assert await _read(blobs, maker, other_patient) == b"other"
    async with maker() as session:
        row = (await session.scalars(select(ScopeKey).where(ScopeKey.scope == "auth:az_1"))).first()
        assert row is not None
    # Nothing can be stored under a revoked authorization again.
    async with maker() as session:
        with pytest.raises(KeyDestroyed):
            await blobs.put(
                session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_1", data=b"late"
            )


async def test_revoking_an_unused_authorization_still_blocks_later_puts(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    async with maker() as session, session.begin():
        n = await blobs.destroy_scope(
            session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_9"
        )
    assert n == 0
    async with maker() as session:
        with pytest.raises(KeyDestroyed):
            await blobs.put(
                session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_9", data=b"late"
            )


async def test_destroy_scope_key_by_id(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    async with maker() as session, session.begin():
        stored = await blobs.put(
            session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_2", data=b"d"
        )
    async with maker() as session, session.begin():
        assert await blobs.destroy_scope_key(session, stored.scope_key_id) == 1
    async with maker() as session:
        key = await session.get(ScopeKey, stored.scope_key_id)
        assert key is not None
        assert key.wrapped_key is None
        assert key.destroyed_at is not None
        with pytest.raises(KeyDestroyed):
            await blobs.get(session, stored.object_id)
        with pytest.raises(ObjectNotFound):
            await blobs.destroy_scope_key(session, "sk_000000000000000000000000")


async def test_deleting_an_object_shreds_its_key_and_ciphertext(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    gone = await _put(blobs, maker, b"delete me")
    kept = await _put(blobs, maker, b"keep me")
    async with maker() as session, session.begin():
        await blobs.delete(session, gone)
    async with maker() as session:
        with pytest.raises(KeyDestroyed):
            await blobs.get(session, gone)
        row = await session.get(BlobObject, gone)
        assert row is not None
        assert row.wrapped_dek is None
    assert await blobs.raw_ciphertext(gone) is None
    assert await _read(blobs, maker, kept) == b"keep me"


async def test_erasing_a_patient_destroys_every_scope_and_allows_a_fresh_start(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    oids = [
        await _put(blobs, maker, b"1"),
        await _put(blobs, maker, b"2", scope="auth:az_3"),
        await _put(blobs, maker, b"3", scope="auth:az_4"),
    ]
    someone_else = await _put(blobs, maker, b"4", patient="MRN-9")
    async with maker() as session, session.begin():
        assert await blobs.destroy_patient(session, tenant_id=TENANT, patient_id=PATIENT) == 3
    for oid in oids:
        async with maker() as session:
            with pytest.raises(KeyDestroyed):
                await blobs.get(session, oid)
    assert await _read(blobs, maker, someone_else) == b"4"
    fresh = await _put(blobs, maker, b"new upload after erasure")
    assert await _read(blobs, maker, fresh) == b"new upload after erasure"


# ---- master key rotation --------------------------------------------------------------------


async def test_rotating_the_master_key_rewraps_scope_keys_and_touches_no_blob(
    blobs: EncryptedBlobStore,
    maker: async_sessionmaker[AsyncSession],
    blob_settings: Settings,
) -> None:
    oids = [await _put(blobs, maker, b"a"), await _put(blobs, maker, b"b", scope="auth:az_5")]
    await _put(blobs, maker, b"c", scope="auth:az_6")
    async with maker() as session, session.begin():
        await blobs.destroy_scope(session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_6")
    before = {oid: await blobs.raw_ciphertext(oid) for oid in oids}
    async with maker() as session:
        old_wrapped = {r.id: r.wrapped_key for r in (await session.scalars(select(ScopeKey))).all()}
    async with maker() as session, session.begin():
        assert await blobs.rotate_kek(session) == 2
    async with maker() as session:
        rows = (await session.scalars(select(ScopeKey))).all()
    live = [r for r in rows if r.destroyed_at is None]
    assert len(live) == 2
    assert all(r.kek_version == 2 for r in live)
    assert all(r.wrapped_key != old_wrapped[r.id] for r in live)
    assert all(r.wrapped_key is None for r in rows if r.destroyed_at is not None)
    assert {oid: await blobs.raw_ciphertext(oid) for oid in oids} == before
    # A fresh process (new provider from the key file) reads old blobs through the new version.
    reopened = EncryptedBlobStore.from_settings(blob_settings)
    assert [await _read(reopened, maker, oid) for oid in oids] == [b"a", b"b"]
    assert isinstance(reopened.key_provider, LocalKeyProvider)
    assert reopened.key_provider.versions == [1, 2]


async def test_kek_rotate_command(
    blob_settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINVAULT_DATABASE_URL", database_url)
    get_settings.cache_clear()
    settings = get_settings()
    blobs = EncryptedBlobStore.from_settings(settings)
    engine = create_engine(database_url)
    try:
        maker = create_sessionmaker(engine)
        oid = await _put(blobs, maker, b"rotate me")
        assert await rotate_kek_command(settings) == 1
        assert await rotate_kek_command(settings) == 1
        assert await _read(EncryptedBlobStore.from_settings(settings), maker, oid) == b"rotate me"
        async with maker() as session:
            assert [r.kek_version for r in (await session.scalars(select(ScopeKey))).all()] == [3]
    finally:
        await engine.dispose()


# ---- a database backup restored after a shred must not bring keys back --------------------


async def test_restored_backup_does_not_resurrect_shredded_keys(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    revoked = await _put(blobs, maker, b"derivative", scope="auth:az_7")
    deleted = await _put(blobs, maker, b"deleted image")
    kept = await _put(blobs, maker, b"kept image")
    # "Backup": the key rows as they are now.
    async with maker() as session:
        scope_rows = [_row(r) for r in (await session.scalars(select(ScopeKey))).all()]
        blob_rows = [_row(r) for r in (await session.scalars(select(BlobObject))).all()]
    raw_deleted = await blobs.raw_ciphertext(deleted)
    async with maker() as session, session.begin():
        await blobs.destroy_scope(session, tenant_id=TENANT, patient_id=PATIENT, scope="auth:az_7")
        await blobs.delete(session, deleted)
    # "Restore": every key row back as it was in the backup; a copy of the ciphertext elsewhere.
    async with maker() as session, session.begin():
        for values in scope_rows:
            await session.execute(
                update(ScopeKey).where(ScopeKey.id == values["id"]).values(values)
            )
        for values in blob_rows:
            await session.execute(
                update(BlobObject).where(BlobObject.id == values["id"]).values(values)
            )
    assert raw_deleted is not None
    await obstore.put_async(blobs.object_store, object_path(deleted), raw_deleted)
    async with maker() as session:
        restored = (
            await session.scalars(select(ScopeKey).where(ScopeKey.scope == "auth:az_7"))
        ).one()
        assert restored.wrapped_key is not None
        assert restored.destroyed_at is None
        # The threat is real: the restored row still unwraps under the master key...
        assert restored.kek_version is not None
        await blobs.key_provider.unwrap(
            restored.wrapped_key,
            version=restored.kek_version,
            context=b"clinvault/scope-key/v1\x00" + restored.id.encode(),
        )
        # ...but the shred ledger, kept outside the database, refuses it.
        for oid in (revoked, deleted):
            with pytest.raises(KeyDestroyed):
                await blobs.get(session, oid)
    # A fresh process (empty ledger cache) refuses it too, and reconciling tombstones it again.
    fresh = EncryptedBlobStore(blobs.object_store, blobs.key_provider)
    async with maker() as session, session.begin():
        with pytest.raises(KeyDestroyed):
            await fresh.get(session, revoked)
        assert await fresh.reconcile_shreds(session) == 2
    async with maker() as session, session.begin():
        assert await fresh.rotate_kek(session) == 1  # only the care key; nothing resurrected
        rows = {r.id: r for r in (await session.scalars(select(ScopeKey))).all()}
        blob = await session.get(BlobObject, deleted)
    assert blob is not None
    assert blob.wrapped_dek is None
    assert [r.scope for r in rows.values() if r.wrapped_key is not None] == ["care"]
    assert await _read(fresh, maker, kept) == b"kept image"


async def test_retiring_old_master_keys_bounds_what_an_old_backup_can_open(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    oid = await _put(blobs, maker, b"derivative", scope="auth:az_8")
    async with maker() as session:
        backup = (await session.scalars(select(ScopeKey))).one()
        backup_wrapped, backup_version = backup.wrapped_key, backup.kek_version
    assert backup_wrapped is not None
    assert backup_version == 1
    async with maker() as session, session.begin():
        await blobs.rotate_kek(session)
    async with maker() as session:
        assert await blobs.retire_kek(session, keep=2) == []  # v1 is within the kept window
        assert await blobs.retire_kek(session, keep=1) == [1]
    # The live object still reads (its scope key is under v2)...
    assert await _read(blobs, maker, oid) == b"derivative"
    # ...but the scope key copied into an old backup no longer unwraps, even with the key file.
    reopened = LocalKeyProvider.from_file(get_settings().resolved_master_key_file)
    with pytest.raises(MasterKeyUnavailable):
        await reopened.unwrap(
            backup_wrapped,
            version=backup_version,
            context=b"clinvault/scope-key/v1\x00" + backup.id.encode(),
        )


async def test_retiring_is_refused_while_a_live_key_needs_the_old_version(
    blobs: EncryptedBlobStore, maker: async_sessionmaker[AsyncSession]
) -> None:
    await _put(blobs, maker, b"x")
    await blobs.key_provider.rotate()  # a new version, but nothing re-wrapped yet
    async with maker() as session:
        with pytest.raises(CryptoError, match="kek rotate"):
            await blobs.retire_kek(session, keep=1)


def _row(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


# ---- health ---------------------------------------------------------------------------------


async def test_check_passes_on_a_live_backend(blobs: EncryptedBlobStore) -> None:
    await blobs.check()


async def test_check_raises_when_s3_is_unreachable(tmp_path: Path) -> None:
    store = S3Store(
        "nowhere",
        config={
            "endpoint": "http://127.0.0.1:9",
            "access_key_id": "x",
            "secret_access_key": "y",
            "region": "us-east-1",
        },
        client_options={"allow_http": True, "connect_timeout": "1s", "timeout": "2s"},
        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1)},
    )
    blobs = EncryptedBlobStore(store, LocalKeyProvider.from_file(tmp_path / "master.key"))
    with pytest.raises(BlobStoreUnreachable):
        await blobs.check()
