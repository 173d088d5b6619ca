"""Keyed pseudonyms of patient ids: stable, not reversible without the pseudonym key."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path

from clinvault_shared.settings import get_settings


def _load_or_create(path: Path) -> bytes:
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    # O_EXCL: two processes starting at once must not both create (and disagree on) the key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex())
    return key


@lru_cache(maxsize=8)
def _pseudonym_key(path: str) -> bytes:
    return _load_or_create(Path(path))


def pseudonym_key() -> bytes:
    """The pseudonym key: `CLINVAULT_PSEUDONYM_KEY` (hex) or a 0600 file beside the master key."""
    settings = get_settings()
    if settings.pseudonym_key is not None:
        return bytes.fromhex(settings.pseudonym_key.get_secret_value())
    return _pseudonym_key(str(settings.resolved_master_key_file.with_name("pseudonym.key")))


def patient_ref(tenant_id: str, patient_id: str) -> str:
    """The keyed pseudonym (HMAC-SHA256, hex) of a patient id within a tenant."""
    message = f"{tenant_id}\x00{patient_id}".encode()
    return hmac.new(pseudonym_key(), message, hashlib.sha256).hexdigest()
