"""The tamper-evident audit chain: append inside the caller's transaction, verify, list, anchor.

One global chain for the whole deployment (see docs/audit.md for why): entry `seq` n carries the
SHA-256 of entry n-1 in `prev_hash`, and its own `hash` covers a canonical JSON encoding of every
field plus `prev_hash`. Appends are serialized (PostgreSQL advisory lock, SQLite write lock) so
concurrent processes extend one chain, and `seq` is assigned under that lock so it has no gaps.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Row, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.crypto.pseudonym import patient_ref as make_patient_ref
from clinvault_shared.db.models.audit_entry import AuditEntry
from clinvault_shared.db.session import create_engine, create_sessionmaker

GENESIS_HASH = "0" * 64
HASH_VERSION = 1
# Arbitrary constant int64 naming "the audit chain" among PostgreSQL advisory locks.
ADVISORY_LOCK_KEY = 0x636C_6E76_6175_6474  # b"clnvaudt"
VERIFY_BATCH = 2000
MAX_LIST_LIMIT = 1000

ProblemKind = Literal["hash_mismatch", "broken_link", "gap", "anchor_mismatch", "anchor_missing"]

_table = AuditEntry.__table__
_HASHED_COLUMNS = (
    "seq",
    "at",
    "tenant_id",
    "actor_key_id",
    "action",
    "object_id",
    "purpose",
    "patient_ref",
    "outcome",
    "detail",
    "prev_hash",
)


@dataclass(frozen=True)
class ChainHead:
    """The latest link (seq and hash); operators copy it somewhere the database cannot rewrite."""

    seq: int
    hash: str


@dataclass(frozen=True)
class ChainProblem:
    """One thing wrong with the chain, at one seq; the message never carries entry contents."""

    seq: int
    kind: ProblemKind
    message: str


@dataclass
class ChainReport:
    """What `verify` found; `entries` counts the tenant's entries when scoped to a tenant."""

    ok: bool
    entries: int
    chain_entries: int
    first_bad_seq: int | None
    problems: list[ChainProblem] = field(default_factory=list)
    problems_truncated: bool = False
    head: ChainHead | None = None
    tenant_id: str | None = None


class AuditDetailError(ValueError):
    """`detail` is not plain JSON (NaN, non-string keys that would not round-trip, objects)."""


def _canonical_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    # Hash exactly what the database will hand back: normalise through JSON once (tuples become
    # lists, NaN is refused) so the stored value and the hashed value cannot differ.
    if detail is None:
        return {}
    try:
        encoded = json.dumps(detail, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuditDetailError("audit detail must be plain JSON") from exc
    decoded: dict[str, Any] = json.loads(encoded)
    if decoded != detail:
        raise AuditDetailError("audit detail must be plain JSON with string keys")
    return decoded


def _format_at(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(values: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of an entry's fields and its `prev_hash`."""
    payload: dict[str, Any] = {name: values[name] for name in _HASHED_COLUMNS}
    payload["at"] = _format_at(values["at"])
    payload["v"] = HASH_VERSION
    encoded = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


async def _lock_chain(session: AsyncSession) -> None:
    """Serialize appenders until the caller's transaction ends, before the last hash is read."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Transaction-level: released at commit/rollback, after the new row is visible, so the
        # next holder's read (READ COMMITTED: a fresh snapshot per statement) sees it.
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        )
    elif dialect == "sqlite":
        # pysqlite starts a *deferred* transaction and only before DML, so a plain SELECT of the
        # last hash would run without the write lock and two processes could read the same tail.
        # A write statement that matches no row still takes SQLite's write lock (it begins the
        # transaction if none is open) and holds it to commit; busy_timeout makes others wait.
        await session.execute(text("UPDATE audit_entries SET seq = seq WHERE 0"))
    else:  # pragma: no cover - settings only accept the two dialects above
        raise RuntimeError(f"unsupported database dialect for the audit chain: {dialect}")


async def record(
    session: AsyncSession,
    *,
    tenant_id: str,
    actor_key_id: str | None,
    action: str,
    outcome: str,
    object_id: str | None = None,
    purpose: str | None = None,
    patient_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's transaction; it commits or rolls back with it.

    `patient_id` is stored only as its keyed pseudonym (`patient_ref`), never as given.
    `detail` must never carry PHI (no names, dates of birth, MRNs, free text from patients or
    clinicians): it is stored in clear and readable by auditors; use ids and codes only.

    Appends are serialized until the caller commits, so record close to the end of the
    transaction. On PostgreSQL the transaction must be READ COMMITTED (the default).
    """
    await _lock_chain(session)
    last = (
        await session.execute(
            select(_table.c.seq, _table.c.hash).order_by(_table.c.seq.desc()).limit(1)
        )
    ).first()
    prev_seq, prev_hash = (last[0], last[1]) if last is not None else (0, GENESIS_HASH)
    values: dict[str, Any] = {
        # seq is assigned here, under the lock, not by the database sequence: a PostgreSQL
        # sequence value is burned by a rollback and would leave a gap that looks like a deletion.
        "seq": prev_seq + 1,
        # Taken under the lock so `at` follows seq (unless the clock steps back).
        "at": datetime.now(UTC),
        "tenant_id": tenant_id,
        "actor_key_id": actor_key_id,
        "action": action,
        "object_id": object_id,
        "purpose": purpose,
        "patient_ref": make_patient_ref(tenant_id, patient_id) if patient_id is not None else None,
        "outcome": outcome,
        "detail": _canonical_detail(detail),
        "prev_hash": prev_hash,
    }
    entry = AuditEntry(**values, hash=entry_hash(values))
    session.add(entry)
    await session.flush()
    return entry


async def head(session: AsyncSession) -> ChainHead | None:
    """The latest entry's seq and hash (None for an empty chain), for anchoring outside the DB."""
    row = (
        await session.execute(
            select(_table.c.seq, _table.c.hash).order_by(_table.c.seq.desc()).limit(1)
        )
    ).first()
    return ChainHead(seq=row[0], hash=row[1]) if row is not None else None


class _Walk:
    """The state of one verification walk; holds one link, not the chain."""

    def __init__(self, tenant_id: str | None, max_problems: int) -> None:
        self.tenant_id = tenant_id
        self.max_problems = max_problems
        self.problems: list[ChainProblem] = []
        self.truncated = False
        self.first_bad_seq: int | None = None
        self.chain_entries = 0
        self.tenant_entries = 0
        self.expected_seq = 1
        self.prev_hash = GENESIS_HASH

    def add(self, seq: int, kind: ProblemKind, message: str) -> None:
        if self.first_bad_seq is None or seq < self.first_bad_seq:
            self.first_bad_seq = seq
        if len(self.problems) < self.max_problems:
            self.problems.append(ChainProblem(seq=seq, kind=kind, message=message))
        else:
            self.truncated = True

    def step(self, row: Row[Any]) -> None:
        values = row._asdict()
        seq: int = values["seq"]
        self.chain_entries += 1
        if self.tenant_id is None or values["tenant_id"] == self.tenant_id:
            self.tenant_entries += 1
        if seq != self.expected_seq:
            missing = f"{self.expected_seq}..{seq - 1}"
            self.add(self.expected_seq, "gap", f"entries {missing} are missing")
        if values["prev_hash"] != self.prev_hash:
            where = "genesis" if seq == 1 else "the previous entry"
            self.add(seq, "broken_link", f"prev_hash does not match the hash of {where}")
        if entry_hash(values) != values["hash"]:
            self.add(seq, "hash_mismatch", "stored hash does not match the entry's contents")
        # Link to the *stored* hash: one edited entry is one problem, not a cascade; an edit whose
        # hash was recomputed shows up as a broken link at the next entry.
        self.prev_hash = values["hash"]
        self.expected_seq = seq + 1


async def verify(
    session: AsyncSession,
    *,
    tenant_id: str | None = None,
    anchor: ChainHead | None = None,
    batch_size: int = VERIFY_BATCH,
    max_problems: int = 100,
) -> ChainReport:
    """Walk the whole chain in seq order, in batches, and report every break and where it is.

    Detects edited entries (hash mismatch), deleted ones (gap in seq and a broken link),
    inserted or reordered ones (hash mismatch and broken links). With `tenant_id` the walk still
    covers the global chain (a deleted entry has no tenant, and any break weakens every entry
    after it), but `entries` counts only that tenant's entries. A truncated tail is only
    detectable with `anchor`: a head recorded earlier outside the database.
    """
    start = await head(session)
    walk = _Walk(tenant_id, max_problems)
    if start is not None:
        columns = [_table.c[name] for name in (*_HASHED_COLUMNS, "hash")]
        after = 0
        while True:
            # Keyset pagination over plain rows (not ORM objects): flat memory for any length.
            # Bounded by the head seen at the start so concurrent appends do not extend the walk.
            rows = (
                await session.execute(
                    select(*columns)
                    .where(_table.c.seq > after, _table.c.seq <= start.seq)
                    .order_by(_table.c.seq)
                    .limit(batch_size)
                )
            ).all()
            if not rows:
                break
            for row in rows:
                walk.step(row)
            after = rows[-1].seq
    if anchor is not None:
        await _check_anchor(session, anchor, walk)
    return ChainReport(
        ok=not walk.problems and not walk.truncated,
        entries=walk.tenant_entries,
        chain_entries=walk.chain_entries,
        first_bad_seq=walk.first_bad_seq,
        problems=sorted(walk.problems, key=lambda p: p.seq),
        problems_truncated=walk.truncated,
        head=start,
        tenant_id=tenant_id,
    )


async def _check_anchor(session: AsyncSession, anchor: ChainHead, walk: _Walk) -> None:
    stored = (
        await session.execute(select(_table.c.hash).where(_table.c.seq == anchor.seq))
    ).scalar_one_or_none()
    if stored is None:
        walk.add(anchor.seq, "anchor_missing", "the anchored entry is gone (deleted or truncated)")
    elif stored != anchor.hash:
        walk.add(anchor.seq, "anchor_mismatch", "the anchored entry's hash has changed")


async def list_entries(
    session: AsyncSession,
    *,
    tenant_id: str,
    patient_id: str | None = None,
    object_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    after_seq: int = 0,
) -> list[AuditEntry]:
    """A tenant's entries in seq order (accounting of disclosures); page on with `after_seq`.

    `patient_id` is looked up by its pseudonym; `since` is inclusive, `until` exclusive;
    `limit` is clamped to 1..1000.
    """
    query = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > after_seq)
    if patient_id is not None:
        query = query.where(AuditEntry.patient_ref == make_patient_ref(tenant_id, patient_id))
    if object_id is not None:
        query = query.where(AuditEntry.object_id == object_id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    query = query.order_by(AuditEntry.seq).limit(max(1, min(limit, MAX_LIST_LIMIT)))
    return list((await session.execute(query)).scalars())


async def verify_command(database_url: str, *, anchor: ChainHead | None = None) -> ChainReport:
    """`clinvault audit verify`: verify the whole chain of the given database; prints nothing."""
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await verify(session, anchor=anchor)
    finally:
        await engine.dispose()


__all__ = [
    "GENESIS_HASH",
    "AuditDetailError",
    "ChainHead",
    "ChainProblem",
    "ChainReport",
    "entry_hash",
    "head",
    "list_entries",
    "record",
    "verify",
    "verify_command",
]
