"""The audit chain on SQLite and PostgreSQL: append, verify, tamper cases, concurrent writers."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared import audit
from clinvault_shared.crypto.pseudonym import patient_ref
from clinvault_shared.db.models.audit_entry import AuditEntry
from clinvault_shared.db.session import create_engine, create_sessionmaker, session_scope

TABLE = AuditEntry.metadata.tables["audit_entries"]
PATIENT_ID = "MRN-0042-SECRET"


@asynccontextmanager
async def session_for(url: str) -> AsyncIterator[AsyncSession]:
    """One committed transaction on a short-lived engine."""
    engine = create_engine(url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            yield session
    finally:
        await engine.dispose()


async def append(url: str, count: int, *, tenant_id: str = "t1", **extra: Any) -> None:
    """`count` entries, each in its own transaction (as services record them)."""
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    try:
        for i in range(count):
            async with session_scope(maker) as session:
                await audit.record(
                    session,
                    tenant_id=tenant_id,
                    actor_key_id="key_test",
                    action="image.read",
                    outcome="ok",
                    object_id=f"img_{i}",
                    detail={"i": i},
                    **extra,
                )
    finally:
        await engine.dispose()


async def raw(url: str, sql: str, params: dict[str, Any] | None = None) -> None:
    """Tamper with the table directly, as someone with database access would."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params or {})
    finally:
        await engine.dispose()


async def rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(TABLE).order_by(TABLE.c.seq))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


async def check(url: str, **kwargs: Any) -> audit.ChainReport:
    async with session_for(url) as session:
        return await audit.verify(session, **kwargs)


def kinds(report: audit.ChainReport) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


# --- append and verify ------------------------------------------------------------------------


async def test_append_builds_a_valid_chain(database_url: str) -> None:
    await append(database_url, 5)
    entries = await rows(database_url)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == audit.GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after["prev_hash"] == before["hash"]
    for entry in entries:
        assert audit.entry_hash(entry) == entry["hash"]

    report = await check(database_url)
    assert report.ok
    assert (report.entries, report.chain_entries, report.first_bad_seq) == (5, 5, None)
    assert report.problems == []
    assert report.head == audit.ChainHead(seq=5, hash=entries[-1]["hash"])


async def test_empty_chain_verifies(database_url: str) -> None:
    report = await check(database_url)
    assert report.ok
    assert (report.entries, report.head) == (0, None)
    async with session_for(database_url) as session:
        assert await audit.head(session) is None


async def test_rolled_back_entry_leaves_no_gap(database_url: str) -> None:
    await append(database_url, 2)
    engine = create_engine(database_url)
    maker = create_sessionmaker(engine)
    try:
        async with maker() as session:
            await audit.record(session, tenant_id="t1", actor_key_id=None, action="x", outcome="ok")
            await session.rollback()  # the caller's change failed: its audit entry goes with it
    finally:
        await engine.dispose()
    await append(database_url, 1)
    assert [e["seq"] for e in await rows(database_url)] == [1, 2, 3]
    assert (await check(database_url)).ok


async def test_record_returns_the_stored_entry(database_url: str) -> None:
    async with session_for(database_url) as session:
        entry = await audit.record(
            session,
            tenant_id="t1",
            actor_key_id="key_a",
            action="derivative.read",
            outcome="denied",
            object_id="drv_1",
            purpose="research",
            patient_id=PATIENT_ID,
            detail={"reason": "authorization_revoked", "n": [1, 2.5, None, True]},
        )
    assert entry.seq == 1
    assert entry.patient_ref == patient_ref("t1", PATIENT_ID)
    [stored] = await rows(database_url)
    assert stored["hash"] == entry.hash
    assert stored["detail"] == {"reason": "authorization_revoked", "n": [1, 2.5, None, True]}
    assert stored["at"] == entry.at


@pytest.mark.parametrize(
    "detail", [{"x": math.nan}, {"x": object()}, {1: "int key"}, {"x": (1, 2)}]
)
async def test_detail_must_be_plain_json(sqlite_database_url: str, detail: dict[Any, Any]) -> None:
    async with session_for(sqlite_database_url) as session:
        with pytest.raises(audit.AuditDetailError):
            await audit.record(
                session, tenant_id="t1", actor_key_id=None, action="x", outcome="ok", detail=detail
            )


# --- tamper cases -----------------------------------------------------------------------------


async def test_edited_field_is_a_hash_mismatch(database_url: str) -> None:
    await append(database_url, 5)
    await raw(database_url, "UPDATE audit_entries SET outcome = 'denied' WHERE seq = 3")
    report = await check(database_url)
    assert not report.ok
    assert report.first_bad_seq == 3
    assert kinds(report) == [(3, "hash_mismatch")]


async def test_edited_detail_is_a_hash_mismatch(database_url: str) -> None:
    await append(database_url, 4)
    async with session_for(database_url) as session:
        await session.execute(update(TABLE).where(TABLE.c.seq == 2).values(detail={"i": 99}))
    report = await check(database_url)
    assert kinds(report) == [(2, "hash_mismatch")]


async def test_edit_with_recomputed_hash_breaks_the_next_link(database_url: str) -> None:
    await append(database_url, 5)
    entry = (await rows(database_url))[2]
    entry["actor_key_id"] = "key_forger"
    forged = audit.entry_hash(entry)
    await raw(
        database_url,
        "UPDATE audit_entries SET actor_key_id = 'key_forger', hash = :h WHERE seq = 3",
        {"h": forged},
    )
    report = await check(database_url)
    assert report.first_bad_seq == 4
    assert kinds(report) == [(4, "broken_link")]


async def test_deleted_entry_is_a_gap_and_a_broken_link(database_url: str) -> None:
    await append(database_url, 5)
    await raw(database_url, "DELETE FROM audit_entries WHERE seq = 3")
    report = await check(database_url)
    assert report.first_bad_seq == 3
    assert kinds(report) == [(3, "gap"), (4, "broken_link")]
    assert report.chain_entries == 4


async def test_deleted_first_entry_is_detected(database_url: str) -> None:
    await append(database_url, 3)
    await raw(database_url, "DELETE FROM audit_entries WHERE seq = 1")
    report = await check(database_url)
    assert kinds(report) == [(1, "gap"), (2, "broken_link")]


async def _forge(url: str, seq: int, prev_hash: str, *, recompute: bool) -> None:
    values: dict[str, Any] = {
        "seq": seq,
        "at": datetime.now(UTC),
        "tenant_id": "t1",
        "actor_key_id": "key_forger",
        "action": "image.read",
        "object_id": "img_forged",
        "purpose": None,
        "patient_ref": None,
        "outcome": "ok",
        "detail": {},
        "prev_hash": prev_hash,
    }
    values["hash"] = audit.entry_hash(values) if recompute else "f" * 64
    async with session_for(url) as session:
        await session.execute(insert(TABLE).values(**values))


async def test_forged_row_at_the_end_is_a_hash_mismatch(database_url: str) -> None:
    await append(database_url, 5)
    last = (await rows(database_url))[-1]
    await _forge(database_url, 6, last["hash"], recompute=False)
    report = await check(database_url)
    assert kinds(report) == [(6, "hash_mismatch")]


async def test_forged_row_past_the_end_is_a_gap(database_url: str) -> None:
    await append(database_url, 5)
    last = (await rows(database_url))[-1]
    await _forge(database_url, 9, last["hash"], recompute=True)
    report = await check(database_url)
    assert report.first_bad_seq == 6
    assert kinds(report) == [(6, "gap")]


async def test_row_inserted_in_the_middle_is_detected(database_url: str) -> None:
    await append(database_url, 5)
    before = await rows(database_url)
    # Make room at seq 3 the way an attacker would (two steps: the primary key must stay unique).
    await raw(database_url, "UPDATE audit_entries SET seq = seq + 1000 WHERE seq >= 3")
    await raw(database_url, "UPDATE audit_entries SET seq = seq - 999 WHERE seq >= 1000")
    await _forge(database_url, 3, before[1]["hash"], recompute=True)
    report = await check(database_url)
    # The forged row links correctly and hashes correctly; the old entry 3, now at 4, does not.
    assert report.first_bad_seq == 4
    assert (4, "broken_link") in kinds(report)
    assert (4, "hash_mismatch") in kinds(report)
    assert report.chain_entries == 6


async def test_swapped_rows_are_detected_where_they_start(database_url: str) -> None:
    await append(database_url, 5)
    entries = await rows(database_url)
    second, fourth = entries[1], entries[3]
    async with session_for(database_url) as session:
        # Free the unique hashes first so the two updates do not collide.
        for target in (2, 4):
            await session.execute(
                update(TABLE).where(TABLE.c.seq == target).values(hash=f"{target:064d}")
            )
        await session.execute(
            update(TABLE)
            .where(TABLE.c.seq == 2)
            .values(**{k: v for k, v in fourth.items() if k != "seq"})
        )
        await session.execute(
            update(TABLE)
            .where(TABLE.c.seq == 4)
            .values(**{k: v for k, v in second.items() if k != "seq"})
        )
    report = await check(database_url)
    assert report.first_bad_seq == 2
    assert kinds(report) == [
        (2, "broken_link"),
        (2, "hash_mismatch"),
        (3, "broken_link"),
        (4, "broken_link"),
        (4, "hash_mismatch"),
        (5, "broken_link"),
    ]


async def test_reordered_seq_numbers_are_detected(database_url: str) -> None:
    await append(database_url, 4)
    await raw(database_url, "UPDATE audit_entries SET seq = 100 WHERE seq = 2")
    await raw(database_url, "UPDATE audit_entries SET seq = 2 WHERE seq = 3")
    await raw(database_url, "UPDATE audit_entries SET seq = 3 WHERE seq = 100")
    report = await check(database_url)
    assert report.first_bad_seq == 2
    assert (2, "hash_mismatch") in kinds(report)
    assert (2, "broken_link") in kinds(report)


async def test_truncated_tail_needs_an_anchor(database_url: str) -> None:
    await append(database_url, 5)
    async with session_for(database_url) as session:
        anchor = await audit.head(session)
    assert anchor is not None
    assert anchor.seq == 5
    assert (await check(database_url, anchor=anchor)).ok

    await raw(database_url, "DELETE FROM audit_entries WHERE seq >= 4")
    # Without an external anchor a clean truncation of the tail is invisible (documented limit).
    assert (await check(database_url)).ok
    report = await check(database_url, anchor=anchor)
    assert kinds(report) == [(5, "anchor_missing")]


async def test_rewritten_chain_fails_its_anchor(database_url: str) -> None:
    await append(database_url, 3)
    async with session_for(database_url) as session:
        anchor = await audit.head(session)
    assert anchor is not None
    await raw(database_url, "UPDATE audit_entries SET hash = :h WHERE seq = 3", {"h": "e" * 64})
    report = await check(database_url, anchor=anchor)
    assert (3, "anchor_mismatch") in kinds(report)


async def test_verify_streams_in_batches(database_url: str) -> None:
    await append(database_url, 10)
    await raw(database_url, "UPDATE audit_entries SET action = 'other' WHERE seq = 7")
    await raw(database_url, "DELETE FROM audit_entries WHERE seq = 4")
    report = await check(database_url, batch_size=3)
    assert report.chain_entries == 9
    assert kinds(report) == [(4, "gap"), (5, "broken_link"), (7, "hash_mismatch")]


async def test_problems_are_capped(sqlite_database_url: str) -> None:
    await append(sqlite_database_url, 6)
    await raw(sqlite_database_url, "UPDATE audit_entries SET outcome = 'x'")
    report = await check(sqlite_database_url, max_problems=2)
    assert not report.ok
    assert report.problems_truncated
    assert len(report.problems) == 2
    assert report.first_bad_seq == 1


async def test_tenant_scoped_verify_counts_own_entries_and_sees_every_break(
    database_url: str,
) -> None:
    await append(database_url, 3, tenant_id="t1")
    await append(database_url, 2, tenant_id="t2")
    report = await check(database_url, tenant_id="t1")
    assert report.ok
    assert (report.entries, report.chain_entries, report.tenant_id) == (3, 5, "t1")

    # A deleted entry has no tenant any more; every tenant must learn the chain is broken.
    await raw(database_url, "DELETE FROM audit_entries WHERE seq = 5")
    await raw(database_url, "UPDATE audit_entries SET tenant_id = 't2' WHERE seq = 2")
    report = await check(database_url, tenant_id="t1")
    assert not report.ok
    assert kinds(report) == [(2, "hash_mismatch")]
    assert report.entries == 2


async def test_verify_command(sqlite_database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await append(sqlite_database_url, 3)
    report = await audit.verify_command(sqlite_database_url)
    assert report.ok
    assert report.chain_entries == 3
    await raw(sqlite_database_url, "UPDATE audit_entries SET purpose = 'marketing' WHERE seq = 2")
    report = await audit.verify_command(sqlite_database_url)
    assert report.first_bad_seq == 2
    assert capsys.readouterr() == ("", "")


# --- the patient id is never stored -------------------------------------------------------------


async def test_patient_id_is_never_stored(database_url: str, tmp_path: Path) -> None:
    await append(database_url, 2, patient_id=PATIENT_ID)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT * FROM audit_entries"))).all()
    finally:
        await engine.dispose()
    assert len(stored) == 2
    for row in stored:
        for value in row:
            assert PATIENT_ID not in str(value)
            assert "0042" not in str(value)
        assert patient_ref("t1", PATIENT_ID) in tuple(row)
    if database_url.startswith("sqlite"):
        # Not in any page of the database file or its write-ahead log either.
        files = await asyncio.to_thread(lambda: [p.read_bytes() for p in tmp_path.glob("*.db*")])
        assert files
        for content in files:
            assert PATIENT_ID.encode() not in content


# --- accounting of disclosures ------------------------------------------------------------------


async def test_list_entries_filters_and_pages(database_url: str) -> None:
    await append(database_url, 3, tenant_id="t1", patient_id=PATIENT_ID)
    await append(database_url, 2, tenant_id="t1", patient_id="other-patient")
    await append(database_url, 2, tenant_id="t2", patient_id=PATIENT_ID)
    async with session_for(database_url) as session:
        mine = await audit.list_entries(session, tenant_id="t1", patient_id=PATIENT_ID)
        assert [e.seq for e in mine] == [1, 2, 3]
        theirs = await audit.list_entries(session, tenant_id="t2", patient_id=PATIENT_ID)
        assert [e.seq for e in theirs] == [6, 7]
        page = await audit.list_entries(session, tenant_id="t1", limit=2, after_seq=1)
        assert [e.seq for e in page] == [2, 3]
        by_object = await audit.list_entries(session, tenant_id="t1", object_id="img_0")
        assert [e.seq for e in by_object] == [1, 4]
        assert await audit.list_entries(session, tenant_id="t1", action="image.write") == []
        now = datetime.now(UTC)
        assert len(await audit.list_entries(session, tenant_id="t1", since=now)) == 0
        assert len(await audit.list_entries(session, tenant_id="t1", until=now)) == 5
        hour_ago = now - timedelta(hours=1)
        assert len(await audit.list_entries(session, tenant_id="t2", since=hour_ago)) == 2
        assert await audit.list_entries(session, tenant_id="t3") == []


# --- concurrent writers in separate processes ---------------------------------------------------

WRITER = """
import asyncio, sys, time
from clinvault_shared.audit import record
from clinvault_shared.db.session import create_engine, create_sessionmaker, session_scope
from sqlalchemy import text

class Abort(Exception):
    pass

async def main(url, tenant, count):
    engine = create_engine(url)
    maker = create_sessionmaker(engine)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the go signal, sent once every writer is ready
    done = attempt = 0
    first = time.time()
    while done < count:
        attempt += 1
        try:
            async with session_scope(maker) as session:
                await record(session, tenant_id=tenant, actor_key_id="key_w", action="w.append",
                             outcome="ok", object_id=f"obj_{attempt}", patient_id="p-" + tenant)
                if attempt % 7 == 0:
                    raise Abort  # a caller that rolls back must leave no trace and no gap
        except Abort:
            continue
        done += 1
    print(first, time.time())
    await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def run_writers(url: str, processes: int, count: int) -> None:
    """Start the writers together; fail unless all succeed and their append windows overlap."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            url,
            f"w{n}",
            str(count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
    results = await asyncio.gather(*(proc.communicate(b"go\n") for proc in procs))
    windows = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        first, last = (float(x) for x in out.split())
        windows.append((first, last))
    # Otherwise the test would prove nothing about concurrency: every writer was still appending
    # when the last one started.
    assert max(first for first, _ in windows) < min(last for _, last in windows)


@pytest.mark.postgres
async def test_concurrent_writers_postgres(pg_url: str) -> None:
    processes, count = 4, 40
    await run_writers(pg_url, processes, count)
    report = await check(pg_url)
    assert report.ok, report.problems
    assert report.chain_entries == processes * count
    entries = await rows(pg_url)
    assert [e["seq"] for e in entries] == list(range(1, processes * count + 1))
    for n in range(processes):
        assert (await check(pg_url, tenant_id=f"w{n}")).entries == count


async def test_concurrent_writers_sqlite(sqlite_database_url: str) -> None:
    processes, count = 3, 40
    await run_writers(sqlite_database_url, processes, count)
    report = await check(sqlite_database_url)
    assert report.ok, report.problems
    assert report.chain_entries == processes * count
    entries = await rows(sqlite_database_url)
    assert [e["seq"] for e in entries] == list(range(1, processes * count + 1))
