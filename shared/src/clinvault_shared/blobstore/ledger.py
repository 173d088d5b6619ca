"""The shred ledger: which keys were destroyed, kept outside the database and its backups.

A database restore brings back rows, including wrapped keys that were shredded after the backup
was taken. The ledger lives in the blob store (the same local folder or bucket as the ciphertext,
under `keystore/shredded/`), is append-only, and is consulted before any key is unwrapped, so a
restored key is refused even before `reconcile_shreds` tombstones it again (docs/keys.md).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Literal

import obstore

from clinvault_shared.blobstore.backend import NOT_FOUND
from clinvault_shared.db.base import utcnow

if TYPE_CHECKING:
    from obstore.store import ObjectStore

LEDGER_PREFIX = "keystore/shredded/"
KeyKind = Literal["scope_key", "object_key"]


class ShredLedger:
    """Append-only markers, one per destroyed key id (ids are random; no PHI)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        # Destruction is permanent, so a positive answer can be cached; a negative one cannot
        # (another process may shred the key a moment later).
        self._known: set[str] = set()

    async def mark(self, key_id: str, kind: KeyKind) -> None:
        """Record that `key_id` was destroyed (idempotent)."""
        body = json.dumps({"kind": kind, "key_id": key_id, "at": utcnow().isoformat()}).encode()
        await obstore.put_async(self._store, LEDGER_PREFIX + key_id, body, use_multipart=False)
        self._known.add(key_id)

    async def _contains(self, key_id: str) -> bool:
        if key_id in self._known:
            return True
        try:
            await obstore.head_async(self._store, LEDGER_PREFIX + key_id)
        except NOT_FOUND:
            return False
        self._known.add(key_id)
        return True

    async def any_shredded(self, *key_ids: str) -> bool:
        """True if any of `key_ids` was ever destroyed."""
        found = await asyncio.gather(*(self._contains(k) for k in key_ids))
        return any(found)

    async def all_ids(self) -> set[str]:
        """Every destroyed key id (for reconciling a restored database)."""
        ids: set[str] = set()
        async for batch in obstore.list(self._store, LEDGER_PREFIX):
            for meta in batch:
                ids.add(meta["path"].rsplit("/", 1)[-1])
        self._known |= ids
        return ids
