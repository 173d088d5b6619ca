"""Crypto failures: each names what went wrong and never includes key material or PHI."""

from __future__ import annotations

from clinvault_shared.errors import ClinvaultError


class CryptoError(ClinvaultError):
    """Base of every failure raised by `clinvault_shared.crypto`."""

    code = "crypto_error"
    status_code = 500
    default_message = "a cryptographic operation failed"


class DecryptionFailed(CryptoError):
    """Ciphertext or a wrapped key did not authenticate: it was altered, moved or cut."""

    code = "integrity_error"
    default_message = "stored content failed its integrity check"


class MalformedCiphertext(DecryptionFailed):
    """The stream does not start with a clinvault STREAM header."""

    default_message = "stored content is not a clinvault encrypted stream"


class TruncatedCiphertext(DecryptionFailed):
    """The stream ended before its last chunk (chunks were dropped or cut short)."""

    default_message = "stored content is truncated"


class ChunkAuthenticationFailed(DecryptionFailed):
    """A chunk did not authenticate: altered, reordered, swapped, or moved elsewhere."""

    default_message = "a chunk of stored content failed authentication"


class KeyUnwrapFailed(DecryptionFailed):
    """A wrapped key did not authenticate under its wrapping key and context."""

    default_message = "a wrapped key failed authentication"


class MasterKeyUnavailable(CryptoError):
    """The master key (or the requested version of it) cannot be loaded."""

    code = "master_key_unavailable"
    status_code = 503
    default_message = "the master key is unavailable"
