"""The process pool that runs CPU-bound scrubbing off the event loop (APIs and workers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init() -> None:
    # A pool worker is forked after the server installed its own SIGTERM/SIGINT handlers
    # (uvicorn, arq); inherited, they would make the worker ignore both and outlive its parent.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # And if the parent dies without shutting the pool down (SIGKILL, OOM), the kernel kills the
    # worker too: it holds its end of the job pipe itself, so it would never see the parent go.
    # Not Linux (no prctl): graceful shutdown still ends the pool.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above took effect
        os._exit(0)


def cpu_pool(max_workers: int) -> ProcessPoolExecutor:
    """A pool whose workers end with the process that started them, however it ends."""
    return ProcessPoolExecutor(max_workers=max_workers, initializer=_worker_init)
