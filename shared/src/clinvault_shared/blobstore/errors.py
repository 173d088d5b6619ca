"""Blob store failures; messages carry ids at most, never PHI."""

from __future__ import annotations

from clinvault_shared.errors import ClinvaultError


class BlobUnavailable(ClinvaultError):
    """An object cannot be read."""

    code = "blob_unavailable"
    status_code = 503
    default_message = "the stored object is unavailable"


class KeyDestroyed(BlobUnavailable):
    """The object's key or its scope's key was destroyed (crypto-shredded): gone for good."""

    code = "gone"
    status_code = 410
    default_message = "this content has been destroyed"


class ObjectNotFound(BlobUnavailable):
    """No such object (or scope key) is known."""

    code = "not_found"
    status_code = 404
    default_message = "no such stored object"


class CiphertextMissing(BlobUnavailable):
    """The key is live but the storage backend has no ciphertext for the object."""

    default_message = "the stored object's content is missing from the blob store"


class BlobStoreUnreachable(BlobUnavailable):
    """The storage backend did not answer."""

    default_message = "the blob store is unreachable"
