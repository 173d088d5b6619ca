"""The job queue seam: services enqueue by name and never import arq.

Two implementations share one interface: `ArqQueue` (Redis, for any number of `clinvault worker`
processes) and `InProcessQueue` (asyncio tasks inside the embedded server). Jobs are coroutines
`job(ctx, *args)` where `ctx` is a dict built once at start (arq's convention) plus `job_id` and
`job_try`. A job raises `RetryLater` for transient failures; anything else is final for that try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger("clinvault.queue")

JobCoroutine = Callable[..., Awaitable[Any]]
ARQ_QUEUE_NAME = "arq:queue"


class RetryLater(Exception):
    """Transient failure: run the job again after `defer_seconds` (up to its max_tries)."""

    def __init__(self, defer_seconds: float = 1.0) -> None:
        super().__init__(f"retry in {defer_seconds:.1f}s")
        self.defer_seconds = defer_seconds


@dataclass(frozen=True)
class JobSpec:
    name: str
    coroutine: JobCoroutine
    timeout_seconds: float = 300
    max_tries: int = 5


@dataclass(frozen=True)
class CronSpec:
    """Periodic work; runs on one worker at a time (arq `unique=True`)."""

    name: str
    coroutine: JobCoroutine
    every_seconds: int = 60
    run_at_startup: bool = True


class JobQueue(Protocol):
    async def enqueue(
        self, function: str, *args: Any, job_id: str, defer_seconds: float = 0
    ) -> bool: ...

    async def depth(self) -> int: ...

    async def check(self) -> None: ...

    async def close(self) -> None: ...


class ArqQueue:
    """Enqueue onto Redis for `clinvault worker` processes."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, redis_url: str) -> ArqQueue:
        from arq import create_pool
        from arq.connections import RedisSettings

        settings = RedisSettings.from_dsn(redis_url)
        settings.conn_retries = 2
        return cls(await create_pool(settings))

    async def enqueue(
        self, function: str, *args: Any, job_id: str, defer_seconds: float = 0
    ) -> bool:
        job = await self._pool.enqueue_job(
            function, *args, _job_id=job_id, _defer_by=defer_seconds or None
        )
        return job is not None

    async def depth(self) -> int:
        return int(await self._pool.zcard(ARQ_QUEUE_NAME))

    async def check(self) -> None:
        await self._pool.ping()

    async def close(self) -> None:
        await self._pool.aclose()


@dataclass
class _Pending:
    spec: JobSpec
    args: tuple[Any, ...]
    job_id: str
    tries: int = 0


@dataclass
class InProcessQueue:
    """Runs jobs on asyncio tasks in this process (embedded mode); same contract as arq."""

    jobs: Sequence[JobSpec]
    crons: Sequence[CronSpec] = ()
    concurrency: int = 2
    ctx: dict[str, Any] = field(default_factory=dict)
    _queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue, init=False)
    _known: set[str] = field(default_factory=set, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _running: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._specs = {spec.name: spec for spec in self.jobs}

    async def start(self) -> None:
        for index in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._work(), name=f"clinvault-job-{index}"))
        for cron in self.crons:
            self._tasks.append(
                asyncio.create_task(self._cron(cron), name=f"clinvault-cron-{cron.name}")
            )

    async def enqueue(
        self, function: str, *args: Any, job_id: str, defer_seconds: float = 0
    ) -> bool:
        spec = self._specs.get(function)
        if spec is None:
            raise ValueError(f"no job named {function!r}")
        if job_id in self._known:
            return False
        self._known.add(job_id)
        pending = _Pending(spec, args, job_id)
        if defer_seconds:
            asyncio.get_running_loop().call_later(defer_seconds, self._queue.put_nowait, pending)
        else:
            self._queue.put_nowait(pending)
        return True

    async def depth(self) -> int:
        return self._queue.qsize()

    async def check(self) -> None:
        if self._tasks and all(task.done() for task in self._tasks):
            raise RuntimeError("in-process worker is not running")

    async def drain(self, within_seconds: float = 60) -> None:
        """Wait until no job is queued or running (tests, graceful shutdown)."""
        async with asyncio.timeout(within_seconds):
            while self._queue.qsize() or self._running:  # noqa: ASYNC110  (polls two counters)
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            pending = await self._queue.get()
            self._running += 1
            try:
                await self._run(pending)
            finally:
                self._running -= 1

    async def _run(self, pending: _Pending) -> None:
        pending.tries += 1
        ctx = {**self.ctx, "job_id": pending.job_id, "job_try": pending.tries}
        try:
            async with asyncio.timeout(pending.spec.timeout_seconds):
                await pending.spec.coroutine(ctx, *pending.args)
        except RetryLater as retry:
            if pending.tries < pending.spec.max_tries:
                asyncio.get_running_loop().call_later(
                    retry.defer_seconds, self._queue.put_nowait, pending
                )
                return
            logger.warning("job %s gave up after %d tries", pending.job_id, pending.tries)
        except Exception:
            # The job's row keeps its state; the reconciler decides what happens next.
            logger.exception("job %s failed", pending.job_id)
        self._known.discard(pending.job_id)

    async def _cron(self, cron: CronSpec) -> None:
        if not cron.run_at_startup:
            await asyncio.sleep(cron.every_seconds)
        while True:
            try:
                await cron.coroutine(dict(self.ctx))
            except Exception:
                logger.exception("periodic job %s failed", cron.name)
            await asyncio.sleep(cron.every_seconds)


def arq_worker_settings(
    *,
    redis_url: str,
    jobs: Sequence[JobSpec],
    crons: Sequence[CronSpec],
    on_startup: Callable[[dict[str, Any]], Awaitable[None]],
    on_shutdown: Callable[[dict[str, Any]], Awaitable[None]],
    concurrency: int,
    shutdown_grace_seconds: int = 30,
) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` running `jobs` and `crons` (the arq side of the seam)."""
    from arq import cron as arq_cron
    from arq import func
    from arq.connections import RedisSettings
    from arq.worker import Retry

    def _translate(spec: JobSpec) -> Any:  # arq's WorkerCoroutine protocol; ours is looser
        async def run(ctx: dict[str, Any], *args: Any) -> Any:
            try:
                return await spec.coroutine(ctx, *args)
            except RetryLater as retry:
                raise Retry(defer=retry.defer_seconds) from None

        run.__qualname__ = spec.name
        return run

    functions = [
        # keep_result=0: a finished job leaves no result key, so the reconciler can re-enqueue
        # the same deterministic job id later if the work turns out to be unfinished.
        func(
            _translate(spec),
            name=spec.name,
            timeout=spec.timeout_seconds,
            max_tries=spec.max_tries,
            keep_result=0,
        )
        for spec in jobs
    ]
    cron_jobs = [
        arq_cron(
            _translate(JobSpec(c.name, c.coroutine)),
            name=c.name,
            second=set(range(0, 60, max(1, min(c.every_seconds, 60))))
            if c.every_seconds < 60
            else 0,
            minute=None if c.every_seconds < 3600 else 0,
            unique=True,
            run_at_startup=c.run_at_startup,
            keep_result=0,
        )
        for c in crons
    ]
    return {
        "functions": functions,
        "cron_jobs": cron_jobs,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": concurrency,
        "handle_signals": True,
        # arq polls Redis for work; its 0.5 s default caps each job slot near two jobs a second.
        "poll_delay": 0.05,
        # On SIGTERM running jobs get this long to finish before they are cancelled (and, being
        # idempotent, run again elsewhere); the reconciler covers a SIGKILL.
        "job_completion_wait": shutdown_grace_seconds,
        "job_timeout": max((spec.timeout_seconds for spec in jobs), default=300),
        "allow_abort_jobs": False,
    }
