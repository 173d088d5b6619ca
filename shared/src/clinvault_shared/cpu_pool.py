"""The process pool that runs CPU-bound scrubbing off the event loop (APIs and workers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends, however the parent ends.

    A helper process that holds its own end of a pipe to its parent would otherwise never see
    the parent go. Not Linux (no prctl): nothing happens; closed pipes still end most helpers.
    `parent_pid` is the parent's pid taken before the fork (the parent may itself be pid 1, as
    a container's entry point is).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(0)


def reset_server_signals() -> None:
    """Default SIGTERM/SIGINT: a forked helper must not run the server's inherited handlers
    (uvicorn, arq), which would make it ignore both and outlive its parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _worker_init(parent_pid: int) -> None:
    reset_server_signals()
    # If the parent dies without shutting the pool down (SIGKILL, OOM), the worker goes too.
    die_with_parent(parent_pid)


def cpu_pool(max_workers: int) -> ProcessPoolExecutor:
    """A pool whose workers end with the process that started them, however it ends."""
    return ProcessPoolExecutor(
        max_workers=max_workers, initializer=_worker_init, initargs=(os.getpid(),)
    )
