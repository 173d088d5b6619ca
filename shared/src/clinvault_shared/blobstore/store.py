"""`EncryptedBlobStore`: envelope-encrypted objects keyed by consent scope (docs/keys.md).

    master key (KeyProvider, versioned) -> scope key (scope_keys row) -> object key (blob_objects
    row) -> object bytes (crypto.stream, in the blob store under a random id)

Blob I/O happens outside of database work where the order allows it: `put` uploads before it
touches the session, and `get` does all its database work before it returns the stream, so the
caller can end its transaction before reading.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import obstore
from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.blobstore.backend import (
    BACKEND_ERRORS,
    NOT_FOUND,
    object_path,
    store_from_url,
    validate_object_id,
)
from clinvault_shared.blobstore.errors import (
    BlobStoreUnreachable,
    CiphertextMissing,
    KeyDestroyed,
    ObjectNotFound,
)
from clinvault_shared.blobstore.ledger import ShredLedger
from clinvault_shared.crypto.errors import CryptoError
from clinvault_shared.crypto.master import (
    KeyProvider,
    key_provider_from_settings,
    unwrap_with,
    wrap_with,
)
from clinvault_shared.crypto.pseudonym import patient_ref
from clinvault_shared.crypto.stream import CHUNK_SIZE, CIPHERTEXT_CHUNK_SIZE, StreamDecryptor
from clinvault_shared.crypto.stream import aencrypt_stream as _aencrypt_stream
from clinvault_shared.db.base import new_id, utcnow
from clinvault_shared.db.models.blob_object import BlobObject
from clinvault_shared.db.models.scope_key import ScopeKey
from clinvault_shared.errors import Conflict
from clinvault_shared.observability import count_shred
from clinvault_shared.settings import Settings

if TYPE_CHECKING:
    from obstore.store import ObjectStore

logger = logging.getLogger("clinvault.blobstore")

KEY_BYTES = 32
# Multipart part size (S3 needs >= 5 MiB) and parts in flight: bounds upload memory to ~24 MiB.
PART_SIZE = 8 * 1024 * 1024
PART_CONCURRENCY = 2
_SCOPE_KEY_CONTEXT = b"clinvault/scope-key/v1\x00"
_DEK_LABEL = b"clinvault/object-key/v1\x00"
_ROTATE_BATCH = 500


@dataclass(frozen=True)
class StoredObject:
    """What `put` stored: the random object id, the plaintext size and its SHA-256 (hex)."""

    object_id: str
    size: int
    sha256: str
    scope_key_id: str


def validate_scope(scope: str) -> str:
    """A scope is `care` or `auth:<authorization id>`."""
    if scope == "care" or (scope.startswith("auth:") and 5 < len(scope) <= 64):
        return scope
    raise ValueError("scope must be 'care' or 'auth:<authorization id>'")


def _scope_context(scope_key_id: str) -> bytes:
    return _SCOPE_KEY_CONTEXT + scope_key_id.encode()


def _dek_aad(object_id: str, scope_key_id: str) -> bytes:
    return _DEK_LABEL + object_id.encode() + b"\x00" + scope_key_id.encode()


def _stream_scope(tenant_id: str, ref: str, scope: str) -> str:
    # What "scope" means in the stream's associated data: the whole (tenant, patient, scope).
    return f"{tenant_id}\x00{ref}\x00{scope}"


async def _pieces(data: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes | memoryview]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
        for start in range(0, len(view), CHUNK_SIZE):
            yield view[start : start + CHUNK_SIZE]
        return
    async for piece in data:
        yield piece


class EncryptedBlobStore:
    """Put, get and crypto-shred objects; see the module docstring for the key hierarchy."""

    def __init__(self, store: ObjectStore, keys: KeyProvider) -> None:
        self._store = store
        self._keys = keys
        self._ledger = ShredLedger(store)

    @classmethod
    def from_settings(cls, settings: Settings) -> EncryptedBlobStore:
        """The store that `CLINVAULT_BLOB_URL` and the master key settings describe."""
        return cls(
            store_from_url(settings.resolved_blob_url, settings),
            key_provider_from_settings(settings),
        )

    @property
    def object_store(self) -> ObjectStore:
        """The obstore backend (ciphertext and the shred ledger)."""
        return self._store

    @property
    def key_provider(self) -> KeyProvider:
        """The master key provider (for `kek rotate` and tests)."""
        return self._keys

    @property
    def ledger(self) -> ShredLedger:
        """The shred ledger kept beside the ciphertext, outside the database."""
        return self._ledger

    # -- keys -----------------------------------------------------------------------------

    async def _unwrap_scope_key(self, row: ScopeKey) -> bytes:
        if row.wrapped_key is None or row.kek_version is None or row.destroyed_at is not None:
            raise KeyDestroyed()
        return await self._keys.unwrap(
            row.wrapped_key, version=row.kek_version, context=_scope_context(row.id)
        )

    async def _live_scope_key(
        self, session: AsyncSession, tenant_id: str, ref: str, scope: str
    ) -> ScopeKey | None:
        result = await session.execute(
            select(ScopeKey).where(
                ScopeKey.tenant_id == tenant_id,
                ScopeKey.patient_ref == ref,
                ScopeKey.scope == scope,
                ScopeKey.destroyed_at.is_(None),
            )
        )
        return result.scalar_one_or_none()

    async def _scope_key_for_put(
        self, session: AsyncSession, tenant_id: str, ref: str, scope: str
    ) -> tuple[ScopeKey, bytes]:
        row = await self._live_scope_key(session, tenant_id, ref, scope)
        if row is None:
            if scope.startswith("auth:"):
                # An authorization's key is destroyed on revocation or expiry, for good: nothing
                # may be stored under that authorization again.
                destroyed = await session.execute(
                    select(ScopeKey.id).where(
                        ScopeKey.tenant_id == tenant_id,
                        ScopeKey.patient_ref == ref,
                        ScopeKey.scope == scope,
                    )
                )
                if destroyed.first() is not None:
                    raise KeyDestroyed("this authorization's key was destroyed")
            key = secrets.token_bytes(KEY_BYTES)
            key_id = new_id("sk")
            wrapped = await self._keys.wrap(key, context=_scope_context(key_id))
            values = {
                "id": key_id,
                "tenant_id": tenant_id,
                "patient_ref": ref,
                "scope": scope,
                "kek_version": wrapped.version,
                "wrapped_key": wrapped.blob,
                "created_at": utcnow(),
            }
            # Two first uploads for one scope at once: the live-key unique index lets one insert
            # win; the other does nothing and reads the winner's key.
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await session.execute(
                insert(ScopeKey)
                .values(**values)
                .on_conflict_do_nothing(
                    index_elements=["tenant_id", "patient_ref", "scope"],
                    index_where=ScopeKey.destroyed_at.is_(None),
                )
            )
            row = await self._live_scope_key(session, tenant_id, ref, scope)
            if row is None:  # pragma: no cover - the insert or the concurrent winner is visible
                raise KeyDestroyed("the scope key was destroyed while it was being created")
            if row.id == key_id:
                return row, key
        if await self._ledger.any_shredded(row.id):
            raise KeyDestroyed()
        return row, await self._unwrap_scope_key(row)

    # -- objects --------------------------------------------------------------------------

    async def put(
        self,
        session: AsyncSession,
        *,
        tenant_id: str,
        patient_id: str,
        scope: str,
        data: bytes | AsyncIterable[bytes],
        object_id: str | None = None,
    ) -> StoredObject:
        """Encrypt and store `data` under the scope's key; adds the row, the caller commits."""
        validate_scope(scope)
        path_checked = object_id is not None
        object_id = validate_object_id(object_id) if object_id else new_id("obj")
        path = object_path(object_id)
        if path_checked and await self._exists(path):
            raise Conflict("an object with this id already exists")
        ref = patient_ref(tenant_id, patient_id)
        dek = secrets.token_bytes(KEY_BYTES)
        digest = hashlib.sha256()
        size = 0

        async def plaintext() -> AsyncIterator[bytes | memoryview]:
            nonlocal size
            async for piece in _pieces(data):
                digest.update(piece)
                size += len(piece)
                yield piece

        # The upload needs only the object key, not the scope key, so it runs before any
        # database work: the caller's transaction is not held open across blob I/O.
        ciphertext = _aencrypt_stream(
            dek, plaintext(), object_id=object_id, scope=_stream_scope(tenant_id, ref, scope)
        )
        if isinstance(data, bytes) and len(data) < PART_SIZE:
            body = b"".join([chunk async for chunk in ciphertext])
            await obstore.put_async(self._store, path, body, use_multipart=False)
        else:
            await obstore.put_async(
                self._store,
                path,
                ciphertext,
                use_multipart=True,
                chunk_size=PART_SIZE,
                max_concurrency=PART_CONCURRENCY,
            )
        try:
            row, scope_key = await self._scope_key_for_put(session, tenant_id, ref, scope)
            session.add(
                BlobObject(
                    id=object_id,
                    scope_key_id=row.id,
                    wrapped_dek=wrap_with(scope_key, dek, aad=_dek_aad(object_id, row.id)),
                    plaintext_size=size,
                )
            )
            await session.flush()
        except BaseException:
            await self._delete_quietly(path)
            raise
        return StoredObject(object_id, size, digest.hexdigest(), row.id)

    async def _exists(self, path: str) -> bool:
        try:
            await obstore.head_async(self._store, path)
        except NOT_FOUND:
            return False
        return True

    async def _delete_quietly(self, path: str) -> None:
        try:
            await obstore.delete_async(self._store, path)
        except BACKEND_ERRORS:
            # Best effort: ciphertext whose key is gone is unreadable anyway.
            logger.warning("could not delete ciphertext at %s", path)

    async def _open_keys(self, session: AsyncSession, object_id: str) -> tuple[bytes, str]:
        result = await session.execute(
            select(BlobObject, ScopeKey)
            .join(ScopeKey, BlobObject.scope_key_id == ScopeKey.id)
            .where(BlobObject.id == object_id)
        )
        found = result.first()
        if found is None:
            raise ObjectNotFound()
        blob, scope_row = found
        if blob.wrapped_dek is None or blob.destroyed_at is not None:
            raise KeyDestroyed()
        if scope_row.wrapped_key is None or scope_row.destroyed_at is not None:
            raise KeyDestroyed()
        # A key that the database still holds but the ledger lists was restored from a backup.
        if await self._ledger.any_shredded(scope_row.id, blob.id):
            raise KeyDestroyed()
        scope_key = await self._unwrap_scope_key(scope_row)
        dek = unwrap_with(scope_key, blob.wrapped_dek, aad=_dek_aad(blob.id, scope_row.id))
        return dek, _stream_scope(scope_row.tenant_id, scope_row.patient_ref, scope_row.scope)

    async def get(self, session: AsyncSession, object_id: str) -> AsyncIterator[bytes]:
        """Stream an object's plaintext; key and existence errors raise here, not mid-stream.

        All database work is done when this returns, so the caller may end its transaction
        before consuming the stream.
        """
        dek, stream_scope = await self._open_keys(session, object_id)
        try:
            result = await obstore.get_async(self._store, object_path(object_id))
        except NOT_FOUND:
            raise CiphertextMissing() from None
        return self._decrypting(result.stream(CIPHERTEXT_CHUNK_SIZE), dek, object_id, stream_scope)

    @staticmethod
    async def _decrypting(
        ciphertext: AsyncIterable[bytes], dek: bytes, object_id: str, stream_scope: str
    ) -> AsyncIterator[bytes]:
        decryptor = StreamDecryptor(dek, object_id=object_id, scope=stream_scope)
        async for piece in ciphertext:
            for chunk in decryptor.update(piece):
                yield chunk
        for chunk in decryptor.finalize():
            yield chunk

    async def read_all(self, session: AsyncSession, object_id: str) -> bytes:
        """The whole plaintext of an object (for small objects)."""
        return b"".join([chunk async for chunk in await self.get(session, object_id)])

    async def discard_unregistered(self, object_id: str) -> bool:
        """Delete ciphertext that never got its database row (a put whose transaction rolled
        back, or a killed job's write). No key for it exists anywhere, so this is tidiness, not
        secrecy. Returns True if something was there."""
        path = object_path(object_id)
        try:
            await obstore.head_async(self._store, path)
        except NOT_FOUND:
            return False
        await self._delete_quietly(path)
        return True

    async def raw_ciphertext(self, object_id: str) -> bytes | None:
        """The stored ciphertext as is, or None (lets tests show what remains after a shred)."""
        try:
            result = await obstore.get_async(self._store, object_path(object_id))
        except NOT_FOUND:
            return None
        return bytes(await result.bytes_async())

    # -- crypto-shredding -----------------------------------------------------------------

    async def delete(self, session: AsyncSession, object_id: str) -> None:
        """Destroy the object's key (crypto-shred), then delete its ciphertext best effort."""
        blob = await session.get(BlobObject, object_id)
        if blob is None:
            raise ObjectNotFound()
        await self._ledger.mark(object_id, "object_key")
        if blob.destroyed_at is None:
            blob.destroyed_at = utcnow()
        blob.wrapped_dek = None
        await session.flush()
        count_shred("object_key")
        await self._delete_quietly(object_path(object_id))

    async def _shred_scope_key(self, session: AsyncSession, row: ScopeKey) -> int:
        # Ledger first: once it is written the key is refused everywhere, even if the caller
        # then rolls back its transaction (fail closed).
        await self._ledger.mark(row.id, "scope_key")
        now = utcnow()
        if row.destroyed_at is None:
            row.destroyed_at = now
        row.wrapped_key = None
        row.kek_version = None
        result = await session.execute(
            update(BlobObject)
            .where(BlobObject.scope_key_id == row.id, BlobObject.destroyed_at.is_(None))
            .values(destroyed_at=now, wrapped_dek=None)
            .execution_options(synchronize_session=False)
        )
        await session.flush()
        count_shred("scope_key")
        return int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE

    async def destroy_scope_key(self, session: AsyncSession, scope_key_id: str) -> int:
        """Crypto-shred one scope key; returns how many live objects became unreadable."""
        row = await session.get(ScopeKey, scope_key_id)
        if row is None:
            raise ObjectNotFound("no such scope key")
        return await self._shred_scope_key(session, row)

    async def destroy_scope(
        self, session: AsyncSession, *, tenant_id: str, patient_id: str, scope: str
    ) -> int:
        """Crypto-shred a (tenant, patient, scope) key; returns the objects made unreadable.

        An authorization scope that never held anything still gets a tombstone, so nothing can
        be stored under it afterwards.
        """
        validate_scope(scope)
        ref = patient_ref(tenant_id, patient_id)
        rows = (
            await session.scalars(
                select(ScopeKey).where(
                    ScopeKey.tenant_id == tenant_id,
                    ScopeKey.patient_ref == ref,
                    ScopeKey.scope == scope,
                    ScopeKey.destroyed_at.is_(None),
                )
            )
        ).all()
        if not rows and scope.startswith("auth:"):
            tombstone = ScopeKey(
                id=new_id("sk"), tenant_id=tenant_id, patient_ref=ref, scope=scope,
                kek_version=None, wrapped_key=None, destroyed_at=utcnow(),
            )  # fmt: skip
            session.add(tombstone)
            await self._ledger.mark(tombstone.id, "scope_key")
            await session.flush()
        return sum([await self._shred_scope_key(session, row) for row in rows])

    async def destroy_patient(
        self, session: AsyncSession, *, tenant_id: str, patient_id: str
    ) -> int:
        """Crypto-shred every scope key of a patient; returns the objects made unreadable."""
        ref = patient_ref(tenant_id, patient_id)
        rows = (
            await session.scalars(
                select(ScopeKey).where(
                    ScopeKey.tenant_id == tenant_id,
                    ScopeKey.patient_ref == ref,
                    ScopeKey.destroyed_at.is_(None),
                )
            )
        ).all()
        return sum([await self._shred_scope_key(session, row) for row in rows])

    async def reconcile_shreds(self, session: AsyncSession) -> int:
        """Tombstone again every key the ledger lists but the database holds (after a restore)."""
        shredded = await self._ledger.all_ids()
        if not shredded:
            return 0
        count = 0
        ids = sorted(shredded)
        for start in range(0, len(ids), _ROTATE_BATCH):
            batch = ids[start : start + _ROTATE_BATCH]
            for row in (
                await session.scalars(
                    select(ScopeKey).where(
                        ScopeKey.id.in_(batch),
                        ScopeKey.wrapped_key.is_not(None),
                    )
                )
            ).all():
                await self._shred_scope_key(session, row)
                count += 1
            result = await session.execute(
                update(BlobObject)
                .where(BlobObject.id.in_(batch), BlobObject.wrapped_dek.is_not(None))
                .values(wrapped_dek=None, destroyed_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            count += int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        await session.flush()
        return count

    # -- master key rotation --------------------------------------------------------------

    async def rotate_kek(self, session: AsyncSession) -> int:
        """Make a new master key version and re-wrap every live scope key; no blob is touched."""
        version = await self._keys.rotate()
        shredded = await self._ledger.all_ids()
        count = 0
        last_id = ""
        while True:
            rows = (
                await session.scalars(
                    select(ScopeKey)
                    .where(
                        and_(ScopeKey.wrapped_key.is_not(None), ScopeKey.destroyed_at.is_(None)),
                        ScopeKey.id > last_id,
                    )
                    .order_by(ScopeKey.id)
                    .limit(_ROTATE_BATCH)
                )
            ).all()
            if not rows:
                break
            last_id = rows[-1].id
            for row in rows:
                if row.id in shredded:
                    # Restored from a backup after it was shredded: tombstone, never re-wrap.
                    await self._shred_scope_key(session, row)
                    continue
                if row.kek_version == version:
                    continue
                key = await self._unwrap_scope_key(row)
                wrapped = await self._keys.wrap(key, context=_scope_context(row.id))
                row.wrapped_key, row.kek_version = wrapped.blob, wrapped.version
                count += 1
            await session.flush()
        return count

    async def retire_kek(self, session: AsyncSession, *, keep: int = 2) -> list[int]:
        """Destroy master key versions older than the newest `keep`; returns those destroyed.

        This bounds how long a database backup can bring a shredded key back even for someone
        holding the key file: scope keys in a backup are wrapped under versions that no longer
        exist once retired. Refuses while a live scope key is still wrapped under such a version
        (run `rotate_kek` first). Schedule it so `keep` rotations cover the backup retention.
        """
        if keep < 1:
            raise ValueError("keep at least the current master key version")
        current = self._keys.current_version
        retire = list(range(1, current - keep + 1))
        if not retire:
            return []
        still_used = await session.scalar(
            select(ScopeKey.id)
            .where(ScopeKey.wrapped_key.is_not(None), ScopeKey.kek_version.in_(retire))
            .limit(1)
        )
        if still_used is not None:
            raise CryptoError("live scope keys still use an old master key; run kek rotate first")
        return await self._keys.retire(retire)

    # -- health -----------------------------------------------------------------------------

    async def check(self) -> None:
        """Readiness: raise `BlobStoreUnreachable` unless the backend answers."""
        try:
            await obstore.head_async(self._store, "keystore/readiness-probe")
        except NOT_FOUND:
            return
        except BACKEND_ERRORS as exc:
            raise BlobStoreUnreachable() from exc


async def rotate_kek_command(settings: Settings) -> int:
    """`clinvault kek rotate`: new master key version, every live scope key re-wrapped under it."""
    from clinvault_shared.db.session import create_engine, create_sessionmaker, session_scope

    blobs = EncryptedBlobStore.from_settings(settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            return await blobs.rotate_kek(session)
    finally:
        await engine.dispose()
