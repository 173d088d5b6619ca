"""AES-256-GCM in a STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015), 1 MiB chunks.

Layout: header = magic (4) || nonce prefix (7); then the chunks, each `ciphertext || tag (16)`.
Chunk i's nonce is `prefix || i (32-bit big-endian) || last flag (1 byte)`, and its associated data
binds the object id, the scope and (again) the chunk index and flag. So:

- reordering or swapping chunks changes the index a chunk is opened with: fails;
- dropping the tail leaves a chunk that was sealed "not last" at the end: fails;
- moving ciphertext to another object or scope changes the associated data: fails.

Every chunk is authenticated before its plaintext is released, but a stream is only known to be
complete when the generator finishes: consumers that act on partial output must be ready for a
`DecryptionFailed` midway. Memory stays at about two chunks whatever the object size.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from typing_extensions import Buffer

from clinvault_shared.crypto.errors import (
    ChunkAuthenticationFailed,
    CryptoError,
    MalformedCiphertext,
    TruncatedCiphertext,
)

CHUNK_SIZE = 1 << 20
TAG_SIZE = 16
CIPHERTEXT_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
MAGIC = b"CVS1"
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = len(MAGIC) + NONCE_PREFIX_SIZE
MAX_CHUNKS = 1 << 32
_AAD_LABEL = b"clinvault/stream/v1\x00"
_INDEX = struct.Struct(">IB")
# A unit cut by the framer: a zero-copy slice of read-only input, or an accumulated buffer.
_Unit = memoryview | bytearray


def ciphertext_size(plaintext_size: int) -> int:
    """The stored size of an object of `plaintext_size` bytes."""
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def _aad_prefix(object_id: str, scope: str) -> bytes:
    oid, sc = object_id.encode(), scope.encode()
    return _AAD_LABEL + struct.pack(">H", len(oid)) + oid + struct.pack(">H", len(sc)) + sc


class _Framer:
    """Cuts a byte stream into units of `size`, holding back one full unit until it is known
    whether more follows (the last unit carries the last-chunk flag).

    Read-only input (`bytes`, obstore's `Bytes`) is sliced without a copy, which is what keeps the
    streaming path as fast as one-shot AES-GCM; writable buffers are copied once, since their owner
    may reuse them after handing them over.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._held: _Unit | None = None
        self._buf = bytearray()

    def push(self, data: Buffer) -> Iterator[_Unit]:
        """Yield every unit that is now known not to be the last one."""
        view = memoryview(data)
        if not view.readonly:
            view = memoryview(bytes(view))
        size = self._size
        while view:
            if self._held is not None:
                yield self._held
                self._held = None
            if not self._buf and len(view) >= size:
                self._held = view[:size]
                view = view[size:]
                continue
            take = min(size - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == size:
                self._held, self._buf = self._buf, bytearray()

    def finish(self) -> tuple[_Unit | None, _Unit]:
        """The units left at the end: (one more non-last unit or None, the last unit)."""
        if self._held is not None and self._buf:
            return self._held, self._buf
        if self._held is not None:
            return None, self._held
        return None, self._buf


class StreamEncryptor:
    """Push-style encryptor: `header`, then `update()` per piece of plaintext, then `finalize()`."""

    def __init__(self, key: bytes, *, object_id: str, scope: str) -> None:
        self._aead = AESGCM(key)
        self._prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
        self._aad = _aad_prefix(object_id, scope)
        self._index = 0
        self._framer = _Framer(CHUNK_SIZE)
        self.header = MAGIC + self._prefix

    def _seal(self, chunk: _Unit, *, last: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            raise CryptoError("object too large for one encrypted stream")
        tail = _INDEX.pack(self._index, last)
        self._index += 1
        return self._aead.encrypt(self._prefix + tail, chunk, self._aad + tail)

    def update(self, data: Buffer) -> Iterator[bytes]:
        """Encrypt what can be sealed so far."""
        for chunk in self._framer.push(data):
            yield self._seal(chunk, last=False)

    def finalize(self) -> Iterator[bytes]:
        """Seal the remaining chunks; the final one carries the last-chunk flag."""
        before_last, last = self._framer.finish()
        if before_last is not None:
            yield self._seal(before_last, last=False)
        yield self._seal(last, last=True)


class StreamDecryptor:
    """Push-style decryptor: `update()` per piece of ciphertext, then `finalize()`."""

    def __init__(self, key: bytes, *, object_id: str, scope: str) -> None:
        self._aead = AESGCM(key)
        self._aad = _aad_prefix(object_id, scope)
        self._header = bytearray()
        self._prefix: bytes | None = None
        self._index = 0
        self._framer = _Framer(CIPHERTEXT_CHUNK_SIZE)

    def _open(self, chunk: _Unit, *, last: bool) -> bytes:
        assert self._prefix is not None  # noqa: S101 -- set before any chunk reaches here
        tail = _INDEX.pack(self._index, last)
        try:
            plaintext = self._aead.decrypt(self._prefix + tail, chunk, self._aad + tail)
        except InvalidTag:
            if last and len(chunk) == CIPHERTEXT_CHUNK_SIZE:
                # A full chunk that opens as "not last" means the chunks after it are missing.
                other = _INDEX.pack(self._index, False)
                try:
                    self._aead.decrypt(self._prefix + other, chunk, self._aad + other)
                except InvalidTag:
                    pass
                else:
                    raise TruncatedCiphertext() from None
            raise ChunkAuthenticationFailed(
                f"chunk {self._index} failed authentication (altered, reordered, or moved "
                "from another object or scope)"
            ) from None
        self._index += 1
        return plaintext

    def update(self, data: Buffer) -> Iterator[bytes]:
        """Decrypt every chunk that is complete and known not to be the last."""
        if self._prefix is None:
            need = HEADER_SIZE - len(self._header)
            self._header += memoryview(data)[:need]
            data = memoryview(data)[need:]
            if len(self._header) < HEADER_SIZE:
                return
            if self._header[: len(MAGIC)] != MAGIC:
                raise MalformedCiphertext()
            self._prefix = bytes(self._header[len(MAGIC) :])
        for chunk in self._framer.push(data):
            yield self._open(chunk, last=False)

    def finalize(self) -> Iterator[bytes]:
        """Open the final chunk; raise if the stream stopped early."""
        if self._prefix is None:
            raise TruncatedCiphertext("stored content is truncated (no complete header)")
        before_last, last = self._framer.finish()
        if before_last is not None:
            yield self._open(before_last, last=False)
        if len(last) < TAG_SIZE:
            raise TruncatedCiphertext()
        yield self._open(last, last=True)


def encrypt_stream(
    key: bytes, plaintext: Iterable[Buffer], *, object_id: str, scope: str
) -> Iterator[bytes]:
    """Encrypt an iterable of plaintext pieces into header + sealed chunks."""
    encryptor = StreamEncryptor(key, object_id=object_id, scope=scope)
    yield encryptor.header
    for piece in plaintext:
        yield from encryptor.update(piece)
    yield from encryptor.finalize()


def decrypt_stream(
    key: bytes, ciphertext: Iterable[Buffer], *, object_id: str, scope: str
) -> Iterator[bytes]:
    """Decrypt and authenticate a stream made by `encrypt_stream`, chunk by chunk."""
    decryptor = StreamDecryptor(key, object_id=object_id, scope=scope)
    for piece in ciphertext:
        yield from decryptor.update(piece)
    yield from decryptor.finalize()


async def aencrypt_stream(
    key: bytes, plaintext: AsyncIterable[Buffer], *, object_id: str, scope: str
) -> AsyncIterator[bytes]:
    """`encrypt_stream` over an async iterable."""
    encryptor = StreamEncryptor(key, object_id=object_id, scope=scope)
    yield encryptor.header
    async for piece in plaintext:
        for chunk in encryptor.update(piece):
            yield chunk
    for chunk in encryptor.finalize():
        yield chunk


async def adecrypt_stream(
    key: bytes, ciphertext: AsyncIterable[Buffer], *, object_id: str, scope: str
) -> AsyncIterator[bytes]:
    """`decrypt_stream` over an async iterable."""
    decryptor = StreamDecryptor(key, object_id=object_id, scope=scope)
    async for piece in ciphertext:
        for chunk in decryptor.update(piece):
            yield chunk
    for chunk in decryptor.finalize():
        yield chunk
