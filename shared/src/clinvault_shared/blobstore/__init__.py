"""The encrypted blob store keyed by consent scope (DESIGN.md "Keys", docs/keys.md)."""

from clinvault_shared.blobstore.errors import (
    BlobStoreUnreachable,
    BlobUnavailable,
    CiphertextMissing,
    KeyDestroyed,
    ObjectNotFound,
)
from clinvault_shared.blobstore.store import (
    EncryptedBlobStore,
    StoredObject,
    rotate_kek_command,
    validate_scope,
)

__all__ = [
    "BlobStoreUnreachable",
    "BlobUnavailable",
    "CiphertextMissing",
    "EncryptedBlobStore",
    "KeyDestroyed",
    "ObjectNotFound",
    "StoredObject",
    "rotate_kek_command",
    "validate_scope",
]
