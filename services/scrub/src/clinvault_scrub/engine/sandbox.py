"""Run a decoder in a forked child process held to CPU, memory and wall-clock limits.

Image decoders are large C libraries fed with untrusted bytes. A child process with
RLIMIT_AS and RLIMIT_CPU, killed on a wall-clock deadline, means a decompression bomb, an
infinite loop or a memory-corruption bug costs one child, never the worker.

The child talks to the parent in frames (a kind byte, a length, a pickle). It may ask the
parent questions on the way (`ask`): de-identification sends small oriented copies up, the
parent runs the detectors, and the child redacts and encodes the full-size pixels it already
holds, so those never cross a pipe. The parent unpickles only plain values and the engine's
own dataclasses: a child taken over by a decoder bug cannot make it run anything.
"""

from __future__ import annotations

import dataclasses
import datetime
import faulthandler
import io
import os
import pickle
import resource
import select
import signal
import struct
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from clinvault_scrub.engine.model import Limits, Rejected

T = TypeVar("T")
Answer = Callable[[Any], Any]

_HEADER = struct.Struct(">cQ")
_ASK, _RESULT, _REJECTED = b"A", b"R", b"X"
_ENGINE = "clinvault_scrub.engine."
_DATETIME_TYPES = {"datetime", "timezone", "timedelta"}


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain values, datetimes and the engine's dataclasses; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "datetime" and name in _DATETIME_TYPES:
            return getattr(datetime, name)
        if module.startswith(_ENGINE):
            found = super().find_class(module, name)
            if isinstance(found, type) and dataclasses.is_dataclass(found):
                return found
        raise pickle.UnpicklingError("the decoder sent a value of a type it may not send")


def _loads(payload: bytes) -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # whatever a corrupted pickle raises: the child is not trusted
        raise Rejected("decoder sent a value that cannot be read") from exc


def _vm_size() -> int:
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[: 1 << 20])
        view = view[n:]


def _send(fd: int, kind: bytes, value: Any) -> None:
    payload = pickle.dumps(value, protocol=5)
    _write_all(fd, _HEADER.pack(kind, len(payload)))
    _write_all(fd, payload)


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _child(
    fn: Callable[..., Any], args: tuple[Any, ...], limits: Limits, wfd: int, rfd: int | None
) -> None:
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

        def ask(question: Any, replies: int) -> Any:
            _send(wfd, _ASK, question)
            _, length = _HEADER.unpack(_read_exactly(replies, _HEADER.size))
            return pickle.loads(_read_exactly(replies, length))  # noqa: S301 - from our parent

        kind, value = _RESULT, None
        try:
            value = fn(*args, partial(ask, replies=rfd)) if rfd is not None else fn(*args)
        except Rejected as exc:
            kind, value = _REJECTED, str(exc)
        except MemoryError:
            kind, value = _REJECTED, "decoder exceeded the memory limit"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            kind, value = _REJECTED, "image exceeds the pixel limit"
        except Exception as exc:
            kind, value = _REJECTED, f"image cannot be decoded ({type(exc).__name__})"
        _send(wfd, kind, value)
    except BaseException:  # noqa: S110 - the parent sees EOF and reports the crash
        pass
    finally:
        os._exit(0)


class _Frames:
    """Reads the child's frames off a pipe, within a wall-clock budget the parent can pause."""

    def __init__(self, fd: int, seconds: float) -> None:
        self.fd = fd
        self.deadline = time.monotonic() + seconds
        self.buffer = bytearray()
        self.timed_out = False

    def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return False
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def next(self) -> tuple[bytes, bytes] | None:
        """(kind, payload), or None when the child ended (or ran out of time) without one."""
        if not self._fill(_HEADER.size):
            return None
        kind, length = _HEADER.unpack(self.buffer[: _HEADER.size])
        if not self._fill(_HEADER.size + length):
            return None
        payload = bytes(self.buffer[_HEADER.size : _HEADER.size + length])
        del self.buffer[: _HEADER.size + length]
        return kind, payload


def run_limited(
    fn: Callable[..., T], args: tuple[Any, ...], limits: Limits, *, answer: Answer | None = None
) -> T:
    """Call fn(*args) in a child process; its Rejected (or any failure) becomes Rejected here.

    With `answer`, the child calls fn(*args, ask): each ask(question) is answered here by
    answer(question), and the time that takes does not count against the child's deadline.
    """
    rfd, wfd = os.pipe()
    reply_r, reply_w = os.pipe() if answer is not None else (None, None)
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        if reply_w is not None:
            os.close(reply_w)
        _child(fn, args, limits, wfd, reply_r)
    os.close(wfd)
    if reply_r is not None:
        os.close(reply_r)
    frames = _Frames(rfd, limits.wall_seconds)
    ended = False  # the child sent its last frame or closed its end: nothing left to kill
    try:
        while True:
            frame = frames.next()
            if frame is None:
                ended = not frames.timed_out
                break
            kind, payload = frame
            if kind == _ASK and answer is not None and reply_w is not None:
                started = time.monotonic()
                reply = answer(_loads(payload))
                try:
                    _send(reply_w, _ASK, reply)
                except BrokenPipeError:  # the child died while we worked: its status tells
                    ended = True
                    break
                frames.deadline += time.monotonic() - started
                continue
            ended = True
            if kind not in (_RESULT, _REJECTED):
                raise Rejected("decoder broke the protocol")
            value = _loads(payload)
            if kind == _RESULT:
                return value  # type: ignore[no-any-return]  # fn's value, of its declared type
            raise Rejected(str(value))
    finally:
        os.close(rfd)
        if reply_w is not None:
            os.close(reply_w)
        if not ended:  # out of time, or the question's answer failed here
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if frames.timed_out:
        raise Rejected("decoder exceeded the time limit")
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        raise Rejected("decoder exceeded the CPU time limit")
    raise Rejected("decoder crashed on this file")
