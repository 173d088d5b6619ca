"""The master key (KEK): versioned, rotatable, behind a `KeyProvider` seam.

The local provider keeps 256-bit key versions in a 0600 file (or takes them from the
`CLINVAULT_MASTER_KEY` secret). A KMS or HSM adapter implements the same protocol: it wraps and
unwraps scope keys remotely and never hands out the master key; `key_provider_from_settings` is the
one place that picks the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clinvault_shared.crypto.errors import CryptoError, KeyUnwrapFailed, MasterKeyUnavailable
from clinvault_shared.settings import Settings

KEY_BYTES = 32
_NONCE_BYTES = 12
_WRAP_LABEL = b"clinvault/kek-wrap/v1\x00"


@dataclass(frozen=True)
class WrappedKey:
    """A key wrapped by one master key version."""

    version: int
    blob: bytes


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps keys under a versioned master key (local file, env secret, KMS, HSM)."""

    @property
    def current_version(self) -> int:
        """The version new wraps use."""
        ...

    async def wrap(self, key: bytes, *, context: bytes) -> WrappedKey:
        """Wrap `key` under the current version; `context` is bound and must match on unwrap."""
        ...

    async def unwrap(self, wrapped: bytes, *, version: int, context: bytes) -> bytes:
        """Unwrap a key wrapped under `version` with the same `context`."""
        ...

    async def rotate(self) -> int:
        """Make a new current version (older ones stay for unwrapping) and return it."""
        ...

    async def retire(self, versions: list[int]) -> list[int]:
        """Destroy the given (non-current) versions for good; return those destroyed."""
        ...


def _aad(version: int, context: bytes) -> bytes:
    return _WRAP_LABEL + version.to_bytes(4, "big") + context


def wrap_with(kek: bytes, key: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM key wrap with a random nonce: nonce || ciphertext || tag (60 bytes for a key)."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, key, aad)


def unwrap_with(kek: bytes, wrapped: bytes, *, aad: bytes) -> bytes:
    """Inverse of `wrap_with`; raises `KeyUnwrapFailed` if anything does not authenticate."""
    if len(wrapped) < _NONCE_BYTES + 16:
        raise KeyUnwrapFailed("a wrapped key is too short")
    try:
        return AESGCM(kek).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], aad)
    except InvalidTag:
        raise KeyUnwrapFailed() from None


def _parse_keys(text: str, *, source: str) -> dict[int, bytes]:
    """Parse `<version>:<hex>` entries (lines or commas); a bare hex key is version 1."""
    keys: dict[int, bytes] = {}
    entries = [e.strip() for e in text.replace(",", "\n").splitlines() if e.strip()]
    for entry in entries:
        version_text, sep, hex_key = entry.partition(":")
        if not sep:
            version_text, hex_key = "1", entry
        try:
            version = int(version_text)
            key = bytes.fromhex(hex_key)
        except ValueError:
            raise MasterKeyUnavailable(f"{source}: entries must be <version>:<64 hex>") from None
        if len(key) != KEY_BYTES or version < 1 or version in keys:
            raise MasterKeyUnavailable(f"{source}: each version needs a distinct 256-bit key")
        keys[version] = key
    if not keys:
        raise MasterKeyUnavailable(f"{source}: no master key found")
    return keys


def _format_keys(keys: Mapping[int, bytes]) -> str:
    return "".join(f"{version}:{keys[version].hex()}\n" for version in sorted(keys))


def _write_new_file(path: Path, content: str) -> Path:
    """Write `content` to a fresh 0600 temp file beside `path` (O_EXCL) and fsync it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalKeyProvider:
    """Master key versions held in this process: from a 0600 key file, or from a secret."""

    def __init__(self, keys: Mapping[int, bytes], *, path: Path | None = None) -> None:
        if not keys or any(len(k) != KEY_BYTES for k in keys.values()):
            raise MasterKeyUnavailable("master keys must be 256-bit")
        self._keys = dict(keys)
        self._path = path

    @classmethod
    def from_secret(cls, secret: str) -> LocalKeyProvider:
        """Keys from `CLINVAULT_MASTER_KEY`: one hex key, or `1:<hex>,2:<hex>` to rotate."""
        return cls(_parse_keys(secret, source="CLINVAULT_MASTER_KEY"))

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyProvider:
        """Load the key file, creating it (mode 0600, one fresh version) if it does not exist."""
        return cls(cls._load_or_create(path), path=path)

    @staticmethod
    def _read(path: Path) -> dict[int, bytes]:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MasterKeyUnavailable(
                "the master key file is accessible to other users; chmod 600 it "
                "(CLINVAULT_MASTER_KEY_FILE)"
            )
        return _parse_keys(path.read_text(), source="CLINVAULT_MASTER_KEY_FILE")

    @classmethod
    def _load_or_create(cls, path: Path) -> dict[int, bytes]:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _write_new_file(path, _format_keys({1: secrets.token_bytes(KEY_BYTES)}))
            try:
                # link() is the O_EXCL of renames: exactly one of two processes starting together
                # creates the file, and nobody ever sees it half written. The loser reads the
                # winner's key below.
                os.link(tmp, path)
                _fsync_dir(path.parent)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls._read(path)

    @property
    def current_version(self) -> int:
        """The newest version; new wraps use it."""
        return max(self._keys)

    @property
    def versions(self) -> list[int]:
        """Every version this provider can unwrap with."""
        return sorted(self._keys)

    def _key(self, version: int) -> bytes:
        key = self._keys.get(version)
        if key is None and self._path is not None:
            # Another process (`clinvault kek rotate`) may have added versions since we loaded.
            self._keys = self._read(self._path)
            key = self._keys.get(version)
        if key is None:
            raise MasterKeyUnavailable(f"master key version {version} is not available")
        return key

    async def wrap(self, key: bytes, *, context: bytes) -> WrappedKey:
        """Wrap `key` under the current version, binding `context`."""
        version = self.current_version
        return WrappedKey(version, wrap_with(self._keys[version], key, aad=_aad(version, context)))

    async def unwrap(self, wrapped: bytes, *, version: int, context: bytes) -> bytes:
        """Unwrap a key wrapped under `version` with the same `context`."""
        return unwrap_with(self._key(version), wrapped, aad=_aad(version, context))

    async def rotate(self) -> int:
        """Append a new version to the key file; with a secret, the newest version it lists."""
        if self._path is None:
            # A secret cannot be rewritten from here: the operator adds `N:<hex>` to it and
            # restarts; rotating then re-wraps every scope key under that newest version.
            return self.current_version
        self._keys = await asyncio.to_thread(self._rotate_file, self._path)
        return self.current_version

    async def retire(self, versions: list[int]) -> list[int]:
        """Remove old versions from the key file; keys wrapped under them become unreadable."""
        if self.current_version in versions:
            raise CryptoError("the current master key version cannot be retired")
        if self._path is None:
            # The secret is the operator's: they remove retired versions from it themselves.
            return []
        before = set(self._keys)
        self._keys = await asyncio.to_thread(self._retire_in_file, self._path, set(versions))
        return sorted(before - set(self._keys))

    @classmethod
    def _rotate_file(cls, path: Path) -> dict[int, bytes]:
        def add_version(keys: dict[int, bytes]) -> dict[int, bytes]:
            keys[max(keys) + 1] = secrets.token_bytes(KEY_BYTES)
            return keys

        return cls._rewrite_locked(path, add_version)

    @classmethod
    def _retire_in_file(cls, path: Path, versions: set[int]) -> dict[int, bytes]:
        def drop(keys: dict[int, bytes]) -> dict[int, bytes]:
            newest = max(keys)
            return {v: k for v, k in keys.items() if v == newest or v not in versions}

        return cls._rewrite_locked(path, drop)

    @classmethod
    def _rewrite_locked(
        cls, path: Path, change: Callable[[dict[int, bytes]], dict[int, bytes]]
    ) -> dict[int, bytes]:
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Serialize rewrites across processes; readers never need the lock because the
            # file is replaced atomically with a complete copy.
            deadline = time.monotonic() + 30
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CryptoError("another master key rotation is running") from None
                    time.sleep(0.05)
            keys = change(cls._read(path))
            tmp = _write_new_file(path, _format_keys(keys))
            try:
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
            _fsync_dir(path.parent)
            return keys
        finally:
            os.close(fd)


def key_provider_from_settings(settings: Settings) -> KeyProvider:
    """The master key provider the settings describe.

    This is the seam for KMS/HSM adapters: add a setting that names one and return an object that
    implements `KeyProvider` here; nothing else in clinvault sees the master key.
    """
    if settings.master_key is not None:
        return LocalKeyProvider.from_secret(settings.master_key.get_secret_value())
    return LocalKeyProvider.from_file(settings.resolved_master_key_file)
