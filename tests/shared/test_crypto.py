"""The STREAM construction and the master key provider, against every tamper case."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import stat
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinvault_shared.crypto.errors import (
    ChunkAuthenticationFailed,
    CryptoError,
    DecryptionFailed,
    KeyUnwrapFailed,
    MalformedCiphertext,
    MasterKeyUnavailable,
    TruncatedCiphertext,
)
from clinvault_shared.crypto.master import LocalKeyProvider, key_provider_from_settings
from clinvault_shared.crypto.stream import (
    CHUNK_SIZE,
    CIPHERTEXT_CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    adecrypt_stream,
    aencrypt_stream,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
)
from clinvault_shared.settings import get_settings

KEY = bytes(range(32))
OID = "obj_00112233445566778899aabb"
SCOPE = "tenant\x00ref\x00care"


def _seal(data: bytes, *, key: bytes = KEY, oid: str = OID, scope: str = SCOPE) -> bytes:
    return b"".join(encrypt_stream(key, [data], object_id=oid, scope=scope))


def _open(blob: bytes, *, key: bytes = KEY, oid: str = OID, scope: str = SCOPE) -> bytes:
    return b"".join(decrypt_stream(key, [blob], object_id=oid, scope=scope))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _chunks(blob: bytes) -> list[bytes]:
    body = blob[HEADER_SIZE:]
    return [body[i : i + CIPHERTEXT_CHUNK_SIZE] for i in range(0, len(body), CIPHERTEXT_CHUNK_SIZE)]


# Sizes around every interesting boundary: empty, one byte, one chunk +/- a little, several chunks.
_BOUNDARY_SIZES = st.sampled_from([0, 1, 2, 15, 16, 17]) | st.builds(
    lambda k, d: max(0, k * CHUNK_SIZE + d),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=-17, max_value=17),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=_BOUNDARY_SIZES,
    seed=st.integers(min_value=0, max_value=2**32),
    in_cuts=st.lists(st.integers(min_value=0), max_size=5),
    out_cuts=st.lists(st.integers(min_value=0), max_size=5),
)
def test_round_trip_at_chunk_boundaries(
    size: int, seed: int, in_cuts: list[int], out_cuts: list[int]
) -> None:
    data = random.Random(seed).randbytes(size)
    blob = b"".join(encrypt_stream(KEY, _split(data, in_cuts), object_id=OID, scope=SCOPE))
    assert len(blob) == ciphertext_size(size)
    if size >= 64:
        assert data[:64] not in blob
    plain = b"".join(decrypt_stream(KEY, _split(blob, out_cuts), object_id=OID, scope=SCOPE))
    assert plain == data


async def test_async_round_trip() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)

    async def pieces(buf: bytes, step: int) -> AsyncIterator[bytes]:
        for i in range(0, len(buf), step):
            yield buf[i : i + step]

    sealed = b"".join(
        [c async for c in aencrypt_stream(KEY, pieces(data, 300_000), object_id=OID, scope=SCOPE)]
    )
    opened = b"".join(
        [c async for c in adecrypt_stream(KEY, pieces(sealed, 77_777), object_id=OID, scope=SCOPE)]
    )
    assert opened == data


def test_each_encryption_uses_a_fresh_nonce_prefix() -> None:
    data = b"same bytes"
    assert _seal(data)[:HEADER_SIZE] != _seal(data)[:HEADER_SIZE]


def test_writable_input_is_copied_before_the_caller_reuses_it() -> None:
    buf = bytearray(os.urandom(CHUNK_SIZE))
    expected = bytes(buf)
    gen = encrypt_stream(KEY, iter([buf, b"tail"]), object_id=OID, scope=SCOPE)
    out = [next(gen)]  # header
    out.append(next(gen))  # first chunk is sealed only once "tail" arrives; buf is consumed
    buf[:] = bytes(len(buf))
    out.extend(gen)
    assert _open(b"".join(out)) == expected + b"tail"


# ---- tampering: each case must fail with a specific DecryptionFailed -----------------------

DATA = random.Random(7).randbytes(2 * CHUNK_SIZE + CHUNK_SIZE // 2)  # three chunks, last short
BLOB = _seal(DATA)
HEADER = BLOB[:HEADER_SIZE]
C0, C1, C2 = _chunks(BLOB)


def _flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


TAMPERS: dict[str, tuple[bytes, type[DecryptionFailed]]] = {
    "magic altered": (_flip(BLOB, 0), MalformedCiphertext),
    "nonce prefix altered": (_flip(BLOB, 6), ChunkAuthenticationFailed),
    "first chunk body altered": (_flip(BLOB, HEADER_SIZE + 100), ChunkAuthenticationFailed),
    "middle chunk tag altered": (
        _flip(BLOB, HEADER_SIZE + 2 * CIPHERTEXT_CHUNK_SIZE - 1),
        ChunkAuthenticationFailed,
    ),
    "last chunk altered": (_flip(BLOB, len(BLOB) - 20), ChunkAuthenticationFailed),
    "last chunk dropped": (HEADER + C0 + C1, TruncatedCiphertext),
    "two chunks dropped": (HEADER + C0, TruncatedCiphertext),
    "cut inside the last chunk": (BLOB[:-100], ChunkAuthenticationFailed),
    "cut to fewer bytes than a tag": (HEADER + C0 + C1 + C2[:10], TruncatedCiphertext),
    "only the header": (HEADER, TruncatedCiphertext),
    "cut inside the header": (HEADER[:5], TruncatedCiphertext),
    "empty": (b"", TruncatedCiphertext),
    "chunks reordered": (HEADER + C1 + C0 + C2, ChunkAuthenticationFailed),
    "chunk duplicated": (HEADER + C0 + C0 + C1 + C2, ChunkAuthenticationFailed),
    "chunk appended after the last": (HEADER + C0 + C1 + C2 + C2, ChunkAuthenticationFailed),
    "bytes appended": (BLOB + b"\x00" * 16, ChunkAuthenticationFailed),
    "chunk swapped in from another stream of the same object": (
        HEADER + _chunks(_seal(DATA))[0] + C1 + C2,
        ChunkAuthenticationFailed,
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_tampering_fails_clearly(case: str) -> None:
    blob, expected = TAMPERS[case]
    with pytest.raises(expected) as info:
        _open(blob)
    assert isinstance(info.value, DecryptionFailed)
    assert info.value.code == "integrity_error"


def test_ciphertext_moved_to_another_object_fails() -> None:
    with pytest.raises(ChunkAuthenticationFailed, match="chunk 0"):
        _open(BLOB, oid="obj_ffffffffffffffffffffffff")


def test_ciphertext_moved_to_another_scope_fails() -> None:
    with pytest.raises(ChunkAuthenticationFailed):
        _open(BLOB, scope="tenant\x00ref\x00auth:az_1")


def test_wrong_key_fails() -> None:
    with pytest.raises(ChunkAuthenticationFailed):
        _open(BLOB, key=bytes(32))


def test_plaintext_before_a_bad_chunk_is_authenticated_chunk_by_chunk() -> None:
    tampered = _flip(BLOB, HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE + 3)
    stream = decrypt_stream(KEY, [tampered], object_id=OID, scope=SCOPE)
    assert next(stream) == DATA[:CHUNK_SIZE]
    with pytest.raises(ChunkAuthenticationFailed, match="chunk 1"):
        next(stream)


def test_memory_stays_flat_for_a_large_stream() -> None:
    size = 48 * CHUNK_SIZE
    piece = os.urandom(256 * 1024)

    def source() -> Iterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    tracemalloc.start()
    try:
        sealed = encrypt_stream(KEY, source(), object_id=OID, scope=SCOPE)
        total = sum(len(c) for c in decrypt_stream(KEY, sealed, object_id=OID, scope=SCOPE))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 8 * CHUNK_SIZE, peak


# ---- the master key --------------------------------------------------------------------------


async def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    provider = LocalKeyProvider.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    wrapped = await provider.wrap(b"k" * 32, context=b"ctx")
    assert wrapped.version == 1
    again = LocalKeyProvider.from_file(path)
    assert await again.unwrap(wrapped.blob, version=1, context=b"ctx") == b"k" * 32


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: LocalKeyProvider._load_or_create(path), range(16)))
    assert all(r == results[0] for r in results)
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


async def test_unwrap_checks_the_context(tmp_path: Path) -> None:
    provider = LocalKeyProvider.from_file(tmp_path / "master.key")
    wrapped = await provider.wrap(b"k" * 32, context=b"scope-key:sk_1")
    with pytest.raises(KeyUnwrapFailed):
        await provider.unwrap(wrapped.blob, version=1, context=b"scope-key:sk_2")
    with pytest.raises(KeyUnwrapFailed):
        await provider.unwrap(_flip(wrapped.blob, 20), version=1, context=b"scope-key:sk_1")


async def test_rotation_adds_a_version_and_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    provider = LocalKeyProvider.from_file(path)
    old = await provider.wrap(b"a" * 32, context=b"c")
    other_process = LocalKeyProvider.from_file(path)
    assert await other_process.rotate() == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The first instance learns about version 2 from the file when it meets it.
    new = await other_process.wrap(b"b" * 32, context=b"c")
    assert new.version == 2
    assert await provider.unwrap(new.blob, version=2, context=b"c") == b"b" * 32
    assert await other_process.unwrap(old.blob, version=1, context=b"c") == b"a" * 32
    with pytest.raises(KeyUnwrapFailed):
        await other_process.unwrap(old.blob, version=2, context=b"c")
    with pytest.raises(MasterKeyUnavailable):
        await provider.unwrap(old.blob, version=9, context=b"c")


async def test_concurrent_rotations_do_not_lose_a_version(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    LocalKeyProvider.from_file(path)
    providers = [LocalKeyProvider.from_file(path) for _ in range(4)]
    versions = await asyncio.gather(*(p.rotate() for p in providers))
    assert sorted(versions) == [2, 3, 4, 5]
    assert LocalKeyProvider.from_file(path).versions == [1, 2, 3, 4, 5]


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    LocalKeyProvider.from_file(path)
    path.chmod(0o644)
    with pytest.raises(MasterKeyUnavailable, match="chmod 600"):
        LocalKeyProvider.from_file(path)


async def test_master_key_from_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = os.urandom(32).hex(), os.urandom(32).hex()
    monkeypatch.setenv("CLINVAULT_MASTER_KEY", f"1:{k1},2:{k2}")
    get_settings.cache_clear()
    provider = key_provider_from_settings(get_settings())
    assert provider.current_version == 2
    assert await provider.rotate() == 2  # a secret is rotated by the operator, not by us
    single = LocalKeyProvider.from_secret(k1)
    wrapped = await single.wrap(b"z" * 32, context=b"c")
    assert await provider.unwrap(wrapped.blob, version=1, context=b"c") == b"z" * 32
    assert not get_settings().resolved_master_key_file.exists()


@pytest.mark.parametrize("secret", ["", "abc", "1:" + "00" * 16, f"1:{'00' * 32},1:{'11' * 32}"])
def test_a_bad_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(MasterKeyUnavailable) as info:
        LocalKeyProvider.from_secret(secret)
    assert "00" * 16 not in str(info.value)
    assert "CLINVAULT_MASTER_KEY" in str(info.value)


def test_tag_size_is_what_the_layout_promises() -> None:
    assert len(_seal(b"")) == HEADER_SIZE + TAG_SIZE


async def test_retired_versions_are_gone_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    provider = LocalKeyProvider.from_file(path)
    old = await provider.wrap(b"o" * 32, context=b"c")
    await provider.rotate()
    with pytest.raises(CryptoError):
        await provider.retire([2])
    assert await provider.retire([1, 7]) == [1]
    assert LocalKeyProvider.from_file(path).versions == [2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(MasterKeyUnavailable):
        await LocalKeyProvider.from_file(path).unwrap(old.blob, version=1, context=b"c")
