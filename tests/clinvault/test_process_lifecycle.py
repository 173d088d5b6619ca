"""The scrub process pool ends with the server that started it, however the server ends."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from tests.processes import free_port, running, wait_healthy

EXE = str(Path(sys.executable).with_name("clinvault"))


def _children(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children()}


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if running(pid)}


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_pool_workers_do_not_outlive_the_server(tmp_path: Path, how: signal.Signals) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINVAULT_")}
    env["CLINVAULT_DATA_DIR"] = str(tmp_path / "data")
    key = subprocess.run(
        [EXE, "keys", "create", "--tenant", "t", "--role", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [EXE, "serve", "all", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        assert wait_healthy(base, server)
        deadline = time.monotonic() + 60
        photo = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 90, 80)).save(photo, "JPEG")
        uploaded = httpx.post(
            f"{base}/v1/images",
            headers=headers,
            timeout=30,
            data={"patient_id": "p-1", "source": "emr"},
            files={"file": ("a.jpg", photo.getvalue(), "image/jpeg")},
        )
        assert uploaded.status_code == 202
        image_url = f"{base}/v1/images/{uploaded.json()['id']}"
        while time.monotonic() < deadline:
            if httpx.get(image_url, headers=headers, timeout=5).json()["status"] == "ready":
                break
            time.sleep(0.2)
        workers = _children(server.pid)
        assert workers, "the scrub ran in a pool worker process"
    finally:
        server.send_signal(how)
        server.wait(timeout=60)
    deadline = time.monotonic() + 15
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(workers) == set()
