"""Storage backends (local folder, S3, memory) through obstore; object names carry no PHI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, MemoryStore, S3Store

from clinvault_shared.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    # Type-only names in obstore's stubs (not importable at runtime).
    from obstore.store import ClientConfig, ObjectStore, S3Config

# obstore raises its own NotFoundError for S3 but the builtin FileNotFoundError for local folders.
NOT_FOUND: tuple[type[Exception], ...] = (NotFoundError, FileNotFoundError)
# Any other backend failure: obstore's errors, or builtin OSErrors from the local store.
BACKEND_ERRORS: tuple[type[Exception], ...] = (BaseError, OSError)

_OBJECT_ID = re.compile(r"^[a-z][a-z0-9]{0,15}_[0-9a-f]{16,32}$")


def validate_object_id(object_id: str) -> str:
    """Object ids become storage names, so they must be random ids (`new_id()`), never PHI."""
    if not _OBJECT_ID.fullmatch(object_id):
        raise ValueError("object ids must look like new_id(): '<prefix>_<16-32 hex digits>'")
    return object_id


def object_path(object_id: str) -> str:
    """Where an object's ciphertext lives (sharded by its last hex digits for local folders)."""
    return f"objects/{object_id[-2:]}/{object_id}"


def store_from_url(url: str, settings: Settings) -> ObjectStore:
    """An obstore store for `file://PATH`, `s3://BUCKET/PREFIX` or `memory://`."""
    if url.startswith("file://"):
        root = Path(url.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root, mkdir=True)
    if url.startswith("memory://"):
        return MemoryStore()
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ConfigurationError("CLINVAULT_BLOB_URL must name a bucket: s3://bucket/prefix")
        config: S3Config = {"region": settings.s3_region}
        client: ClientConfig = {}
        if settings.s3_endpoint:
            config["endpoint"] = settings.s3_endpoint
            if settings.s3_endpoint.startswith("http://"):
                client["allow_http"] = True
        if settings.s3_access_key_id:
            config["access_key_id"] = settings.s3_access_key_id
        if settings.s3_secret_access_key is not None:
            config["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
        prefix = parsed.path.strip("/") or None
        return S3Store(parsed.netloc, prefix=prefix, config=config, client_options=client)
    raise ConfigurationError("CLINVAULT_BLOB_URL must start with file:// or s3://")
