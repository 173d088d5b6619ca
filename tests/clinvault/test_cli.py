"""The `clinvault` command as a script would use it (real processes, embedded SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("clinvault"))


def run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLINVAULT_")}
    environment["CLINVAULT_DATA_DIR"] = str(tmp_path / "data")
    environment.update(env or {})
    return subprocess.run(
        [EXE, *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_keys_create_prints_the_key_alone_on_stdout(tmp_path: Path) -> None:
    created = run(tmp_path, "keys", "create", "--tenant", "st-marys", "--role", "clinician")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert (
        created.stdout == key + "\n"
    )  # nothing else on stdout: `KEY=$(clinvault keys create ...)`
    assert key.startswith("cvk_key_")
    assert "shown only now" in created.stderr
    listed = run(tmp_path, "keys", "list")
    key_id = key.split(".", 1)[0].removeprefix("cvk_")
    assert f"{key_id}\tst-marys\tclinician\tactive" in listed.stdout
    assert key.split(".", 1)[1] not in listed.stdout  # never the secret
    revoked = run(tmp_path, "keys", "revoke", key_id)
    assert revoked.returncode == 0
    assert "revoked" in run(tmp_path, "keys", "list").stdout
    # Both changes are in the audit chain, which still verifies.
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "clinvault.db") as conn:
        rows = conn.execute("SELECT action, object_id FROM audit_entries ORDER BY seq").fetchall()
    assert rows == [("api_key.create", key_id), ("api_key.revoke", key_id)]
    assert run(tmp_path, "audit", "verify").returncode == 0


def test_master_key_file_is_created_private(tmp_path: Path) -> None:
    assert run(tmp_path, "keys", "create", "--tenant", "t", "--role", "admin").returncode == 0
    assert run(tmp_path, "kek", "rotate").returncode == 0
    key_file = tmp_path / "data" / "master.key"
    assert key_file.exists()
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("keys", "create", "--tenant", "t", "--role", "superuser"), "superuser"),
        (("keys", "create", "--tenant", "bad tenant!", "--role", "admin"), "tenant"),
        (("keys", "revoke", "key_nope"), "no such key"),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run(tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "upgrade", env={"CLINVAULT_DATABASE_URL": "mysql://x/y"})
    assert result.returncode == 2
    assert "CLINVAULT_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_and_audit_verify(tmp_path: Path) -> None:
    assert run(tmp_path, "db", "upgrade").returncode == 0
    verified = run(tmp_path, "audit", "verify")
    assert verified.returncode == 0
    assert "audit chain intact" in verified.stdout


def test_audit_verify_fails_and_says_where_on_a_broken_chain(tmp_path: Path) -> None:
    import sqlite3

    assert run(tmp_path, "db", "upgrade").returncode == 0
    db = tmp_path / "data" / "clinvault.db"
    # Two real entries through the API's own function, then an edit behind its back.
    script = (
        "import asyncio\n"
        "from clinvault_shared import audit\n"
        "from clinvault_shared.db.session import create_engine, create_sessionmaker\n"
        "async def main():\n"
        f"    engine = create_engine('sqlite+aiosqlite:///{db}')\n"
        "    async with create_sessionmaker(engine)() as s:\n"
        "        for n in range(2):\n"
        "            await audit.record(s, tenant_id='t', actor_key_id=None, action='x',\n"
        "                               outcome='ok', object_id=f'o{n}')\n"
        "            await s.commit()\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINVAULT_")}
    env["CLINVAULT_DATA_DIR"] = str(tmp_path / "data")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_entries SET outcome = 'edited' WHERE seq = 2")
    broken = run(tmp_path, "audit", "verify")
    assert broken.returncode == 1
    assert "BROKEN at seq 2" in broken.stdout


def test_serve_split_mode_needs_redis(tmp_path: Path) -> None:
    result = run(tmp_path, "serve", "ingest")
    assert result.returncode == 2
    assert "CLINVAULT_REDIS_URL" in result.stderr
