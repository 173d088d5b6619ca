"""Run a decoder in a forked child process held to CPU, memory and wall-clock limits.

Image decoders are large C libraries fed with untrusted bytes. A child process with
RLIMIT_AS and RLIMIT_CPU, killed on a wall-clock deadline, means a decompression bomb, an
infinite loop or a memory-corruption bug costs one child, never the worker. Each image gets a
fresh child, so one image's decoder can never see or alter another's pixels.

The children are forked by a zygote: a small idle interpreter the worker starts on first use,
with the decoders imported, the worker's import path and none of its environment. Forking
the worker itself would hand every decoder a copy of the worker's memory (master key, data
keys, settings with database and storage credentials, other patients' images) and open files;
it was also slower (large page tables once the face model is loaded) and, while a child lived,
every page the worker wrote during detection was copied first (the face model took twice as
long). The zygote never runs untrusted code; it only forks, and reports exit statuses.

The child talks to the parent in frames (a kind byte, a length, a pickle). It may ask the
parent questions on the way (`ask`): de-identification sends small oriented copies up, the
parent runs the detectors, and the child redacts and encodes the full-size pixels it already
holds, so those never cross a pipe. The parent unpickles only plain values and the engine's
own records: a child taken over by a decoder bug cannot make it run anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import faulthandler
import fcntl
import io
import json
import logging
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from clinvault_scrub.engine.model import Limits, Record, Rejected
from clinvault_shared.cpu_pool import die_with_parent

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

T = TypeVar("T")
_log = logging.getLogger(__name__)
Answer = Callable[[Any], Any]

_HEADER = struct.Struct(">cQ")
_JOB, _ASK, _RESULT, _REJECTED = b"J", b"A", b"R", b"X"
_RESULT_IN_OUTBOX = b"O"  # a result whose `output` bytes are in the outbox memfd
_PID = struct.Struct(">q")
_ISOLATED, _NOT_ISOLATED = b"N", b"n"
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000  # from <linux/sched.h>
_F_SETPIPE_SZ = 1031  # from <linux/fcntl.h>
_PIPE_BYTES = 1 << 20  # the default ceiling for unprivileged processes (pipe-max-size)
_ENGINE = "clinvault_scrub.engine."
_DATETIME_TYPES = {"datetime", "timezone", "timedelta"}


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain values, datetimes and the engine's records; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "datetime" and name in _DATETIME_TYPES:
            return getattr(datetime, name)
        if module.startswith(_ENGINE):
            found = super().find_class(module, name)
            # The engine's records: dataclasses, Record classes and NamedTuples.
            if isinstance(found, type) and (
                dataclasses.is_dataclass(found) or issubclass(found, (Record, tuple))
            ):
                return found
        raise pickle.UnpicklingError("the decoder sent a value of a type it may not send")


def _loads(payload: bytes | bytearray) -> Any:
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


def _read_exactly(fd: int, n: int) -> bytearray:
    # Into one buffer of the final size: a photo-sized frame is not rebuilt from pieces.
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            raise EOFError
        got += k
    return buf


def _widen(*fds: int) -> None:
    """Bigger pipe buffers: a photo crosses in fewer round trips between the two processes."""
    for fd in fds:
        # Above this system's limit for unprivileged pipes: the default size stays.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)


def _read_file(fd: int, size: int) -> bytes:
    data = os.pread(fd, size, 0)  # one call reads a memfd whole: no pieces to join
    while len(data) < size:
        more = os.pread(fd, size - len(data), len(data))
        if not more:
            raise EOFError
        data += more
    return data


def _child(jobs: int, wfd: int, inbox: int, outbox: int, zygote_pid: int) -> None:
    """A sandbox child: read the job from the parent, limit ourselves, run it, send the result."""
    try:
        die_with_parent(zygote_pid)
        faulthandler.disable()  # a crash in the child is reported by the parent, not dumped
        # Nor may a decoder taken over by a file write into the worker's log stream.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        _, length = _HEADER.unpack(_read_exactly(jobs, _HEADER.size))
        fn, args, limits, asks, data_size = pickle.loads(  # noqa: S301 - from our parent
            _read_exactly(jobs, length)
        )
        if data_size is not None:
            args = (_read_file(inbox, data_size), *args)
        os.close(inbox)
        # Memory: the child starts as a copy of the zygote, so the cap is on top of what it has.
        cap = _vm_size() + limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        used = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime)
        cpu = used + limits.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        warnings.simplefilter("error", Image.DecompressionBombWarning)

        def ask(question: Any) -> Any:
            _send(wfd, _ASK, question)
            _, length = _HEADER.unpack(_read_exactly(jobs, _HEADER.size))
            return pickle.loads(_read_exactly(jobs, length))  # noqa: S301 - from our parent

        kind, value = _RESULT, None
        try:
            value = fn(*args, ask) if asks else fn(*args)
        except Rejected as exc:
            kind, value = _REJECTED, str(exc)
        except MemoryError:
            kind, value = _REJECTED, "decoder exceeded the memory limit"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            kind, value = _REJECTED, "image exceeds the pixel limit"
        except Exception as exc:
            kind, value = _REJECTED, f"image cannot be decoded ({type(exc).__name__})"
        output = getattr(value, "output", None) if kind == _RESULT else None
        if isinstance(output, bytes) and output and dataclasses.is_dataclass(value):
            # The encoded image goes through shared memory the parent reads once, not a pipe.
            view = memoryview(output)
            for start in range(0, len(view), 1 << 24):
                os.pwrite(outbox, view[start : start + (1 << 24)], start)
            value = (dataclasses.replace(value, output=b""), len(output))  # type: ignore[type-var]
            kind = _RESULT_IN_OUTBOX
        _send(wfd, kind, value)
    except BaseException:  # noqa: S110 - the parent sees EOF and reports the crash
        pass
    finally:
        os._exit(0)


def _leave_the_network() -> bool:
    """Move into new user and network namespaces: no interface but a loopback that is down.

    Unprivileged on Linux where user namespaces are allowed; refused in some containers
    (a seccomp profile, `max_user_namespaces` of 0), where the zygote runs on without it.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)) == 0
    except (OSError, AttributeError):
        return False


def zygote_main(fd: int, worker_pid: int) -> None:
    """The zygote's program: fork a child for each pair of pipe ends received on socket `fd`;
    report a child's exit status when asked. Started by _Zygote in a fresh interpreter, with
    the worker's import path already set."""
    try:
        die_with_parent(worker_pid)
        from clinvault_scrub.engine.decode import preload

        preload()  # every child starts with the decoders imported
        sock = socket.socket(fileno=fd)
        # Its first message says whether the children will be cut off from the network.
        sock.send(_ISOLATED if _leave_the_network() else _NOT_ISOLATED)
        me = os.getpid()
        while True:
            message, fds, _, _ = socket.recv_fds(sock, 16, 4)
            if not message:
                break  # the worker closed its end: it is gone or done with us
            if message[:1] == b"F" and len(fds) == 4:
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    jobs, results, inbox, outbox = fds
                    _child(jobs, results, inbox, outbox, me)
                for fd_ in fds:
                    os.close(fd_)
                sock.send(_PID.pack(pid))
            elif message[:1] == b"W":
                (pid,) = _PID.unpack(message[1:9])
                _, status = os.waitpid(pid, 0)
                sock.send(_PID.pack(status))
            else:
                for fd_ in fds:
                    os.close(fd_)
                break
    except BaseException:  # noqa: S110 - the worker sees the closed socket and starts another
        pass
    finally:
        os._exit(0)


# What the zygote's environment keeps of the worker's: never database URLs, storage
# credentials or anything else a worker is configured with.
_ZYGOTE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class _Zygote:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from clinvault_scrub.engine.sandbox import zygote_main; "
            f"zygote_main({theirs.fileno()}, {os.getpid()})"
        )
        try:
            # A fresh interpreter (-I: no environment variables, user site or working
            # directory on the path), given the worker's import path: nothing of the worker's
            # memory (keys, settings, other images) or open files reaches a decoder.
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and code
                [sys.executable, "-I", "-c", code, json.dumps(sys.path)],
                pass_fds=[theirs.fileno()],
                env={
                    **{k: v for k, v in os.environ.items() if k in _ZYGOTE_ENV},
                    # Transparent huge pages for the decoders' large buffers (glibc 2.35+;
                    # ignored elsewhere): a 12 MP decode touches 48 MB in a fresh process,
                    # and 2 MB pages take 24 faults where 4 KB pages take 12,000. Measured:
                    # deidentify 260 -> 220 ms per 12 MP image on this VM.
                    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                },
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.sock, self.pid, self.lock = ours, self.proc.pid, threading.Lock()
        hello = self.sock.recv(1)
        if hello not in (_ISOLATED, _NOT_ISOLATED):
            self.close()
            raise ConnectionError("sandbox zygote did not start")
        self.network_isolated = hello == _ISOLATED
        if not self.network_isolated:
            _log.warning("sandbox.no_network_isolation")

    def _call(self, message: bytes, fds: list[int]) -> int:
        with self.lock:
            socket.send_fds(self.sock, [message], fds)
            reply = self.sock.recv(_PID.size)
        if len(reply) != _PID.size:
            raise ConnectionError("sandbox zygote is gone")
        return int(_PID.unpack(reply)[0])

    def fork(self, fds: list[int]) -> int:
        return self._call(b"F", fds)

    def wait(self, pid: int) -> int:
        return self._call(b"W" + _PID.pack(pid), [])

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()
_keeper: ThreadPoolExecutor | None = None


def _start_zygote() -> _Zygote:
    """A new zygote, started from a thread that lives as long as this process.

    The zygote dies with the thread that started it, not the process: PR_SET_PDEATHSIG
    (die_with_parent) fires when the forking *thread* ends. One started from a short-lived
    thread (`clinvault scrub` runs a care batch on worker threads) would be killed under
    the other threads' decodes. So the main thread starts it itself, any other thread has one
    long-lived helper thread start it.
    """
    global _keeper
    if threading.current_thread() is threading.main_thread():
        return _Zygote()
    if _keeper is None:
        # Imported here: this module is also the zygote's program, which never needs it.
        from concurrent.futures import ThreadPoolExecutor

        _keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-zygote-parent")
    return _keeper.submit(_Zygote).result()


def _forget_zygote_after_fork() -> None:
    # A forked process (a pool worker) must not share this one's zygote, nor its helper
    # thread (which does not exist in the child).
    global _zygote, _zygote_lock, _keeper
    if _zygote is not None:
        _zygote.sock.close()
    _zygote, _zygote_lock, _keeper = None, threading.Lock(), None


os.register_at_fork(after_in_child=_forget_zygote_after_fork)


def shutdown() -> None:
    """End this process's zygote and reap it (it is started again on the next use)."""
    global _zygote
    with _zygote_lock:
        if _zygote is not None:
            _zygote.close()
            _zygote = None


def _fork_child(fds: list[int]) -> tuple[_Zygote, int]:
    global _zygote
    with _zygote_lock:
        for attempt in (1, 2):
            if _zygote is None:
                _zygote = _start_zygote()
            try:
                return _zygote, _zygote.fork(fds)
            except OSError:  # it died (killed, say): a new one
                _zygote.close()
                _zygote = None
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")


class _Frames:
    """Reads the child's frames off a pipe, within a wall-clock budget the parent can pause."""

    def __init__(self, fd: int, seconds: float, max_bytes: int) -> None:
        self.fd = fd
        self.deadline = time.monotonic() + seconds
        self.max_bytes = max_bytes
        self.timed_out = False

    def _read(self, n: int) -> bytearray | None:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if not ready:
                continue
            k = os.readv(self.fd, [view[got:]])
            if not k:
                return None
            got += k
        return buf

    def next(self) -> tuple[bytes, bytearray] | None:
        """(kind, payload), or None when the child ended (or ran out of time) without one."""
        header = self._read(_HEADER.size)
        if header is None:
            return None
        kind, length = _HEADER.unpack(header)
        if length > self.max_bytes:
            raise Rejected("decoder sent more than its memory limit")
        payload = self._read(length)
        if payload is None:
            return None
        return kind, payload


def run_limited(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    limits: Limits,
    *,
    answer: Answer | None = None,
    data: bytes | None = None,
) -> T:
    """Call fn(*args) in a child process; its Rejected (or any failure) becomes Rejected here.

    `fn` must be importable by name (it is pickled). With `data` (the image), the child calls
    fn(data, *args): the bytes reach it through shared memory, not the job pipe, and so does a
    returned dataclass's `output`. With `answer`, the child calls fn(..., ask): each
    ask(question) is answered here by answer(question), and the time that takes does not count
    against the child's deadline.
    """
    results_r, results_w = os.pipe()
    jobs_r, jobs_w = os.pipe()
    _widen(results_r, jobs_w)
    inbox = os.memfd_create("clinvault-sandbox-in", os.MFD_CLOEXEC)
    outbox = os.memfd_create("clinvault-sandbox-out", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        if data is not None:
            _write_all(inbox, data)
        # Shared memory does not count against the child's RLIMIT_AS: the outbox is sized to
        # the child's memory limit (sparse: only written pages cost memory) and sealed there.
        os.ftruncate(outbox, limits.memory_bytes)
        fcntl.fcntl(outbox, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        zygote, pid = _fork_child([jobs_r, results_w, inbox, outbox])
    except BaseException:
        for fd in (outbox, results_r, jobs_w):
            os.close(fd)
        raise
    finally:
        os.close(jobs_r)
        os.close(results_w)
        os.close(inbox)
    frames = _Frames(results_r, limits.wall_seconds, limits.memory_bytes)
    ended = False  # the child sent its last frame or closed its end: nothing left to kill
    try:
        try:
            job = (fn, args, limits, answer is not None, None if data is None else len(data))
            _send(jobs_w, _JOB, job)
        except BrokenPipeError:  # it died before reading its job: the status tells why
            ended = True
        while not ended:
            frame = frames.next()
            if frame is None:
                ended = not frames.timed_out
                break
            kind, payload = frame
            if kind == _ASK and answer is not None:
                started = time.monotonic()
                reply = answer(_loads(payload))
                try:
                    _send(jobs_w, _ASK, reply)
                except BrokenPipeError:  # the child died while we worked: its status tells
                    ended = True
                    break
                frames.deadline += time.monotonic() - started
                continue
            ended = True
            if kind not in (_RESULT, _RESULT_IN_OUTBOX, _REJECTED):
                raise Rejected("decoder broke the protocol")
            value = _loads(payload)
            if kind == _RESULT_IN_OUTBOX:
                value, size = value
                if not 0 < size <= limits.memory_bytes or not hasattr(value, "output"):
                    raise Rejected("decoder broke the protocol")
                value.output = _read_file(outbox, size)
                return value  # type: ignore[no-any-return]  # fn's value, of its declared type
            if kind == _RESULT:
                return value  # type: ignore[no-any-return]  # fn's value, of its declared type
            raise Rejected(str(value))
    finally:
        os.close(results_r)
        os.close(jobs_w)
        os.close(outbox)
        if not ended:  # out of time, or the question's answer failed here
            os.kill(pid, signal.SIGKILL)
        status = zygote.wait(pid)
    if frames.timed_out:
        raise Rejected("decoder exceeded the time limit")
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        raise Rejected("decoder exceeded the CPU time limit")
    raise Rejected("decoder crashed on this file")
