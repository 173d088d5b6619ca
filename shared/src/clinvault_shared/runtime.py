"""The clients a process builds once at start: database, blob store, queue (apps and workers)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypedDict

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clinvault_shared.blobstore import EncryptedBlobStore
from clinvault_shared.db import migrate
from clinvault_shared.db.session import create_engine, create_sessionmaker
from clinvault_shared.queue import ArqQueue, JobQueue
from clinvault_shared.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    blobs: EncryptedBlobStore
    queue: JobQueue | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def create(cls, settings: Settings, *, migrate_database: bool = False) -> Runtime:
        """Connect to everything the settings name; optionally migrate first (embedded start)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if migrate_database:
            await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
        engine = create_engine(settings.resolved_database_url)
        runtime = cls(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            blobs=EncryptedBlobStore.from_settings(settings),
        )
        if settings.redis_url:
            runtime.queue = await ArqQueue.connect(settings.redis_url)
        return runtime

    def session(self) -> AsyncSession:
        """A new session; the caller owns its transaction."""
        return self.sessionmaker()

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.close()
        await self.engine.dispose()


class WorkerContext(TypedDict, total=False):
    """What every job receives: clients built once at start, plus arq's per-job fields."""

    runtime: Runtime
    cpu_pool: Executor
    job_id: str
    job_try: int
