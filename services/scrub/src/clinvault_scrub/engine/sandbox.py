"""Run a decoder in a forked child process held to CPU, memory and wall-clock limits.

Image decoders are large C libraries fed with untrusted bytes. A child process with
RLIMIT_AS and RLIMIT_CPU, killed on a wall-clock deadline, means a decompression bomb, an
infinite loop or a memory-corruption bug costs one child, never the worker. The child sends
one pickled (status, value) pair through a pipe and leaves with os._exit.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import resource
import select
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from clinvault_scrub.engine.model import Limits, Rejected

T = TypeVar("T")


def _vm_size() -> int:
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(fn: Callable[..., Any], args: tuple[Any, ...], limits: Limits, wfd: int) -> None:
    try:
        faulthandler.disable()  # a crash in the child is reported by the parent, not dumped
        # Memory: the child starts as a copy of the parent, so the cap is on top of what it has.
        cap = _vm_size() + limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        used = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime)
        cpu = used + limits.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            payload: tuple[str, Any] = ("ok", fn(*args))
        except Rejected as exc:
            payload = ("rejected", str(exc))
        except MemoryError:
            payload = ("rejected", "decoder exceeded the memory limit")
        except Image.DecompressionBombError:
            payload = ("rejected", "image exceeds the pixel limit")
        except Image.DecompressionBombWarning:
            payload = ("rejected", "image exceeds the pixel limit")
        except Exception as exc:
            payload = ("rejected", f"image cannot be decoded ({type(exc).__name__})")
        data = pickle.dumps(payload, protocol=5)
        view = memoryview(data)
        while view:
            n = os.write(wfd, view[: 1 << 20])
            view = view[n:]
    except BaseException:  # noqa: S110 - the parent sees EOF and reports the crash
        pass
    finally:
        os._exit(0)


def run_limited(fn: Callable[..., T], args: tuple[Any, ...], limits: Limits) -> T:
    """Call fn(*args) in a child process; its Rejected (or any failure) becomes Rejected here."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        _child(fn, args, limits, wfd)
    os.close(wfd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limits.wall_seconds
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([rfd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(rfd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if timed_out:
        raise Rejected("decoder exceeded the time limit")
    if not chunks:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            raise Rejected("decoder exceeded the CPU time limit")
        raise Rejected("decoder crashed on this file")
    kind, value = pickle.loads(b"".join(chunks))  # noqa: S301 - our own child's output
    if kind != "ok":
        raise Rejected(str(value))
    return value  # type: ignore[no-any-return]  # pickled value of fn's declared type
