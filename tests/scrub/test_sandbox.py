"""The sandbox's zygote and its protocol: fresh children, replaced when gone, nothing left over."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.processes import running

from clinvault_scrub.engine import sandbox
from clinvault_scrub.engine.model import Limits, Rejected
from clinvault_scrub.engine.sandbox import run_limited


def _own_pid() -> int:
    return os.getpid()


def _not_plain_data() -> object:
    return collections.OrderedDict(a=1)  # a global the parent must refuse to build


def _ask_twice(ask: object) -> list[int]:
    return [ask(1), ask(2)]  # type: ignore[operator]


def test_each_call_runs_in_a_fresh_child_of_the_zygote() -> None:
    first = run_limited(_own_pid, (), Limits())
    second = run_limited(_own_pid, (), Limits())
    assert sandbox._zygote is not None
    assert len({first, second, os.getpid(), sandbox._zygote.pid}) == 4


def test_questions_are_answered_by_the_parent() -> None:
    asked: list[int] = []

    def answer(question: int) -> int:
        asked.append(question)
        return question * 10

    assert run_limited(_ask_twice, (), Limits(), answer=answer) == [10, 20]
    assert asked == [1, 2]


def test_parent_refuses_to_unpickle_other_types() -> None:
    with pytest.raises(Rejected, match="cannot be read"):
        run_limited(_not_plain_data, (), Limits())


def test_a_killed_zygote_is_replaced() -> None:
    run_limited(sum, ([1],), Limits())
    assert sandbox._zygote is not None
    old = sandbox._zygote.pid
    os.kill(old, signal.SIGKILL)
    assert run_limited(sum, ([1, 2],), Limits()) == 3
    assert sandbox._zygote.pid != old


def test_a_forked_process_starts_its_own_zygote() -> None:
    run_limited(sum, ([1],), Limits())
    assert sandbox._zygote is not None
    parents_zygote = sandbox._zygote.pid
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            ok = run_limited(sum, ([2, 3],), Limits()) == 5
            mine = sandbox._zygote.pid if sandbox._zygote else 0
            os.write(write, f"{int(ok)} {mine}".encode())
        finally:
            os._exit(0)
    os.close(write)
    reply = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert reply[0] == "1"
    assert int(reply[1]) not in (0, parents_zygote)
    assert run_limited(sum, ([4],), Limits()) == 4  # ours still works


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_zygote_ends_with_its_process(ending: str, tmp_path: Path) -> None:
    src = Path(sandbox.__file__).parents[2]
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(src)!r})
        from clinvault_scrub.engine import sandbox
        from clinvault_scrub.engine.model import Limits
        sandbox.run_limited(sum, ([1],), Limits())
        print(sandbox._zygote.pid, flush=True)
        if {ending!r} == "sigkill":
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    zygote = int(proc.stdout.readline())
    if ending == "sigkill":
        proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while running(zygote) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(zygote)


def test_zygote_outlives_the_thread_that_started_it() -> None:
    """PR_SET_PDEATHSIG follows the thread that forked the zygote: one started from a worker
    thread that then ends must still serve the other threads (`clinvault scrub` threads)."""
    import threading

    sandbox.shutdown()
    first = threading.Thread(target=run_limited, args=(_own_pid, (), Limits()))
    first.start()
    first.join()  # the thread whose call started the zygote has ended
    assert sandbox._zygote is not None
    started = sandbox._zygote.pid
    time.sleep(0.3)  # a death signal, had one been sent, has arrived
    assert sandbox._zygote.proc.poll() is None, "the zygote died with the thread"
    results: list[int] = []
    second = threading.Thread(target=lambda: results.append(run_limited(_own_pid, (), Limits())))
    second.start()
    second.join()
    assert len(results) == 1
    assert results[0] != os.getpid()
    assert sandbox._zygote.pid == started  # served by the same zygote, not a replacement


def test_shutdown_reaps_the_zygote_and_the_next_call_starts_another() -> None:
    run_limited(sum, ([1],), Limits())
    assert sandbox._zygote is not None
    old = sandbox._zygote.pid
    sandbox.shutdown()
    assert sandbox._zygote is None
    with pytest.raises(ChildProcessError):
        os.waitpid(old, os.WNOHANG)  # already reaped: no zombie left
    assert run_limited(sum, ([5],), Limits()) == 5


def _open_descriptors() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return found


def test_child_holds_only_its_pipes_not_the_workers_files(tmp_path: Path) -> None:
    sandbox.shutdown()  # a zygote forked while the file below is open
    secret = tmp_path / "worker-only"
    with secret.open("w") as held, socket.socket() as conn:
        targets = run_limited(_open_descriptors, (), Limits())
        assert held.fileno() > 2
        assert conn.fileno() > 2
    assert str(secret) not in targets
    assert not any(t.startswith("socket:") for t in targets)
    assert sum(t.startswith("pipe:") for t in targets) >= 2  # its job and result pipes


def _what_the_child_sees() -> tuple[str | None, object]:
    from clinvault_scrub.engine import model

    return os.environ.get("CLINVAULT_PROBE_SECRET"), getattr(model, "probe_secret", None)


def test_child_has_none_of_the_workers_environment_or_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clinvault_scrub.engine import model

    sandbox.shutdown()  # a zygote started while the worker holds both secrets
    monkeypatch.setenv("CLINVAULT_PROBE_SECRET", "postgresql://user:pw@db/clinvault")
    monkeypatch.setattr(model, "probe_secret", b"a data key", raising=False)
    assert run_limited(_what_the_child_sees, (), Limits()) == (None, None)


def _reverse(data: bytes, suffix: bytes) -> object:
    from clinvault_scrub.engine.decode import Recoded

    return Recoded(output=data[::-1] + suffix, width=len(data))


def test_image_bytes_go_in_and_come_back_through_shared_memory() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # bigger than the pipes' buffers
    got = run_limited(_reverse, (b"!",), Limits(), data=data)
    assert got.output == data[::-1] + b"!"
    assert got.width == len(data)
    assert run_limited(_reverse, (b"",), Limits(), data=b"").output == b""


def _write_past_the_outbox() -> tuple[int, str]:
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "clinvault-sandbox-out" in target:
            size = os.fstat(int(fd)).st_size
            try:
                os.pwrite(int(fd), b"x", size)
            except OSError as exc:
                return size, type(exc).__name__
            return size, "grew"
    return 0, "no outbox"


def test_a_child_cannot_grow_the_shared_output_past_its_memory_limit() -> None:
    # Shared memory is not counted in the child's RLIMIT_AS: the size seal is what bounds it.
    limits = Limits(memory_bytes=64 * 1024 * 1024)
    assert run_limited(_write_past_the_outbox, (), limits) == (
        limits.memory_bytes,
        "PermissionError",
    )


def _announce_a_huge_frame() -> None:
    import fcntl

    for fd in (int(fd) for fd in os.listdir("/proc/self/fd")):
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            is_pipe = os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            continue
        if writable and is_pipe:
            os.write(fd, b"R" + (1 << 40).to_bytes(8, "big"))
    time.sleep(30)


def test_parent_refuses_a_frame_larger_than_the_childs_memory_limit() -> None:
    start = time.monotonic()
    with pytest.raises(Rejected, match="more than its memory limit"):
        run_limited(_announce_a_huge_frame, (), Limits(wall_seconds=20))
    assert time.monotonic() - start < 10  # refused at once, and the child killed


def _where_output_goes() -> tuple[str, str]:
    return os.readlink("/proc/self/fd/1"), os.readlink("/proc/self/fd/2")


def test_child_cannot_write_into_the_workers_log_stream() -> None:
    assert run_limited(_where_output_goes, (), Limits()) == (os.devnull, os.devnull)


def test_descriptors_are_closed_when_no_child_can_be_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_zygote(fds: list[int]) -> tuple[object, int]:
        raise OSError("cannot start")

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(sandbox, "_fork_child", no_zygote)
    for _ in range(3):
        with pytest.raises(OSError, match="cannot start"):
            run_limited(sum, ([1],), Limits(), data=b"x")
    assert len(os.listdir("/proc/self/fd")) == before


def _connect(port: int) -> str:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        return type(exc).__name__
    return "connected"


def test_child_has_no_network() -> None:
    """A decoder taken over by a file cannot send what it holds anywhere, not even to loopback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert _connect(port) == "connected"  # the worker itself can
        assert run_limited(_connect, (port,), Limits()) == "OSError"
    assert sandbox._zygote is not None
    assert sandbox._zygote.network_isolated
