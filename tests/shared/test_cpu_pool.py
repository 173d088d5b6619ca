"""The CPU pool under a server that is its container's first process (pid 1)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

_RUN_POOL = (
    "import os; from clinvault_shared.cpu_pool import cpu_pool; "
    "pool = cpu_pool(1); print(os.getpid(), pool.submit(sum, [1, 2]).result(timeout=20))"
)


def _in_new_pid_namespace(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return _in_new_pid_namespace("pass").returncode == 0


@pytest.mark.skipif(
    not _can_unshare(), reason="needs unshare and the right to make a pid namespace"
)
def test_pool_works_when_the_server_is_pid_1() -> None:
    # A container runs `clinvault serve` as pid 1; a pool worker must not take its parent's
    # pid of 1 to mean "my parent is gone" and quit.
    done = _in_new_pid_namespace(_RUN_POOL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "3"]
