"""The `clinvault` command: serve, worker, keys, db, audit, kek, and the scrubber's scrub/scan."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

# Imports below the top are deliberate: `clinvault scrub` must not pay for pydantic settings,
# asyncio, SQLAlchemy or the web stack it never uses (process start-up dominates a small batch).
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from clinvault_shared.auth import IssuedKey

app = typer.Typer(
    name="clinvault",
    help="Clinical photographs: de-identified, encrypted under consent, audited.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="API keys (shown once, stored as a hash).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit chain.", no_args_is_help=True)
kek_app = typer.Typer(help="The master key (KEK).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(kek_app, name="kek")


def _say(message: str) -> None:
    """Human text goes to stderr so stdout stays machine-readable."""
    typer.echo(message, err=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _say(f"error: {message}")
    return typer.Exit(code)


class Role(StrEnum):
    emr = "emr"
    telemedicine = "telemedicine"
    clinician = "clinician"
    consent_admin = "consent_admin"
    reviewer = "reviewer"
    researcher = "researcher"
    auditor = "auditor"
    admin = "admin"


T = TypeVar("T")


async def _with_session(action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `action` in one committed transaction (migrating the embedded SQLite file first)."""
    import asyncio

    from clinvault_shared.db import migrate
    from clinvault_shared.db.session import create_engine, create_sessionmaker
    from clinvault_shared.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.is_sqlite:
        await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    engine = create_engine(settings.resolved_database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            result = await action(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


async def _create_key_audited(
    session: AsyncSession, tenant: str, role: str, label: str | None
) -> IssuedKey:
    from clinvault_shared import audit
    from clinvault_shared.auth import create_key

    issued = await create_key(session, tenant_id=tenant, role=role, label=label)
    # Operators' key changes belong in the same chain as everything else (actor: the CLI).
    await audit.record(
        session, tenant_id=tenant, actor_key_id=None, action="api_key.create",
        outcome="created", object_id=issued.key_id, detail={"role": issued.role},
    )  # fmt: skip
    return issued


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to (created if new).")],
    role: Annotated[Role, typer.Option(help="What the key may do.")],
    label: Annotated[str | None, typer.Option(help="A note for operators (no PHI).")] = None,
) -> None:
    """Create an API key and print it alone on stdout, once."""
    import asyncio

    from clinvault_shared.errors import ClinvaultError

    try:
        issued = asyncio.run(
            _with_session(lambda s: _create_key_audited(s, tenant, role.value, label))
        )
    except ClinvaultError as exc:
        raise _fail(exc.message, 2) from None
    _say(
        f"created key {issued.key_id} (tenant {issued.tenant_id}, role {issued.role}); "
        "it is shown only now"
    )
    typer.echo(issued.secret)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List keys (ids, tenants, roles, state; never the secrets)."""
    import asyncio

    from clinvault_shared.auth import list_keys

    keys = asyncio.run(_with_session(lambda s: list_keys(s, tenant)))
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        typer.echo(f"{key.id}\t{key.tenant_id}\t{key.role}\t{state}\t{key.created_at:%Y-%m-%d}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (key_...).")]) -> None:
    """Revoke a key; requests with it answer 401 from now on."""
    import asyncio

    from clinvault_shared import audit
    from clinvault_shared.auth import revoke_key
    from clinvault_shared.errors import ClinvaultError

    async def action(session: AsyncSession) -> None:
        key = await revoke_key(session, key_id)
        await audit.record(
            session, tenant_id=key.tenant_id, actor_key_id=None, action="api_key.revoke",
            outcome="revoked", object_id=key.id,
        )  # fmt: skip

    try:
        asyncio.run(_with_session(action))
    except ClinvaultError as exc:
        raise _fail(exc.message) from None
    _say(f"revoked {key_id}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations to the configured database."""
    from clinvault_shared.db import migrate
    from clinvault_shared.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    _say("database is at the latest schema")


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the audit hash chain; exit 1 and say where when it is broken."""
    import asyncio

    from clinvault_shared.audit import verify_command
    from clinvault_shared.settings import get_settings

    report = asyncio.run(verify_command(get_settings().resolved_database_url))
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report)))
    elif report.ok:
        head = f"; head seq {report.head.seq} hash {report.head.hash}" if report.head else ""
        typer.echo(f"audit chain intact: {report.chain_entries} entries{head}")
    else:
        typer.echo(f"audit chain BROKEN at seq {report.first_bad_seq}:")
        for problem in report.problems:
            typer.echo(f"  seq {problem.seq}: {problem.kind}: {problem.message}")
    if not report.ok:
        raise typer.Exit(1)


@kek_app.command("rotate")
def kek_rotate() -> None:
    """Create a new master key version and re-wrap every live scope key under it."""
    import asyncio

    from clinvault_shared.blobstore import rotate_kek_command
    from clinvault_shared.settings import get_settings

    count = asyncio.run(rotate_kek_command(get_settings()))
    _say(f"re-wrapped {count} scope keys under the new master key version")


@kek_app.command("retire")
def kek_retire(
    keep: Annotated[int, typer.Option(help="Master key versions to keep (newest first).")] = 2,
) -> None:
    """Destroy old master key versions, so old database backups cannot open shredded keys."""
    import asyncio

    from clinvault_shared.blobstore import EncryptedBlobStore
    from clinvault_shared.settings import get_settings

    blobs = EncryptedBlobStore.from_settings(get_settings())
    try:
        retired = asyncio.run(_with_session(lambda s: blobs.retire_kek(s, keep=keep)))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    _say(f"retired master key versions: {', '.join(map(str, retired)) or 'none'}")


@db_app.command("reconcile-shreds")
def db_reconcile_shreds() -> None:
    """After restoring a database backup: destroy again every key the shred ledger lists."""
    import asyncio

    from clinvault_shared.blobstore import EncryptedBlobStore
    from clinvault_shared.settings import get_settings

    blobs = EncryptedBlobStore.from_settings(get_settings())
    count = asyncio.run(_with_session(blobs.reconcile_shreds))
    _say(f"re-destroyed {count} keys that the restored database still held")


class ServeTarget(StrEnum):
    all = "all"
    ingest = "ingest"
    consent = "consent"


@app.command()
def serve(
    target: Annotated[ServeTarget, typer.Argument(help="all = both APIs + in-process worker")] = (
        ServeTarget.all
    ),
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    bootstrap_admin: Annotated[
        bool, typer.Option(help="On first start, create and print an admin key.")
    ] = False,
) -> None:
    """Serve the HTTP APIs (embedded defaults: SQLite, local folder, in-process worker)."""
    import uvicorn

    from clinvault import composition
    from clinvault_shared.settings import get_settings

    settings = get_settings()
    if target is not ServeTarget.all and not settings.redis_url:
        raise _fail(
            "`serve ingest|consent` runs apart from the workers: set CLINVAULT_REDIS_URL", 2
        )
    if bootstrap_admin:
        _bootstrap_admin()
    factory = {
        ServeTarget.all: composition.create_all_app,
        ServeTarget.ingest: composition.create_ingest_app,
        ServeTarget.consent: composition.create_consent_app,
    }[target]
    _say(f"clinvault {target.value} serving on http://{host}:{port}  (API docs: /docs)")
    uvicorn.run(factory(), host=host, port=port, log_level="info", access_log=False)


def _bootstrap_admin() -> None:
    import asyncio

    from clinvault_shared.auth import list_keys

    async def action(session: AsyncSession) -> IssuedKey | None:
        if any(k.role == "admin" and k.revoked_at is None for k in await list_keys(session)):
            return None
        return await _create_key_audited(session, "default", "admin", "first admin")

    issued = asyncio.run(_with_session(action))
    if issued is None:
        _say(
            "an admin key already exists (it was printed on first start); "
            "make another with: clinvault keys create --tenant default --role admin"
        )
    else:
        _say("first admin key (tenant 'default'; shown only now, keep it safe):")
        _say(f"    {issued.secret}")


@app.command()
def worker() -> None:
    """Run an arq worker for every job (needs CLINVAULT_REDIS_URL)."""
    from arq.worker import Worker

    from clinvault import composition

    worker_ = Worker(**composition.worker_settings())
    worker_.run()


def _register_scrub_commands() -> None:
    try:
        from clinvault_scrub.cli import register
    except ImportError:  # the scrub CLI module is optional while the engine is being built
        return
    register(app)


_register_scrub_commands()


def main() -> None:
    try:
        app()
    except Exception as exc:
        # Settings are imported lazily: if the module was never loaded, this is not its error.
        settings = sys.modules.get("clinvault_shared.settings")
        if settings is None or not isinstance(exc, settings.ConfigurationError):
            raise
        _say(f"error: {exc}")
        raise SystemExit(2) from None
