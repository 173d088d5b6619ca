"""`make up` / `make down`: the distributed clinvault on one machine, without containers.

    up       check PostgreSQL and Redis, create the `clinvault` database if missing, write the S3
             identities and the environment under data/local/, run `clinvault db upgrade`, then
             start deploy/Procfile.local with honcho in its own process group (WORKERS workers)
             and wait until ingest and consent are ready.
    down     SIGTERM honcho's process group (honcho passes it on; uvicorn and arq stop
             gracefully), SIGKILL what is left after a grace period.
    status   print whether the stack runs and where.
    s3       (Procfile) run SeaweedFS, create the bucket, mark it ready, wait on it.
    wait-s3  (Procfile) wait until the bucket exists.

Settings: WORKERS (default 2), LOCAL_PG_URL (default postgresql://postgres@127.0.0.1:5432),
LOCAL_REDIS_URL (default redis://127.0.0.1:6379/1), LOCAL_INGEST_PORT (8100),
LOCAL_CONSENT_PORT (8101), LOCAL_S3_PORT (8433).
"""

# ruff: noqa: S603, T201  (an operator's CLI: fixed argv of our own tools; it prints to stderr)
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "data" / "local"
VENV_BIN = Path(sys.executable).parent
PID_FILE = STATE / "honcho.pid"
LOG_FILE = STATE / "stack.log"
ENV_FILE = STATE / "env"
S3_READY = STATE / "s3.ready"
BUCKET = "clinvault"
DATABASE = "clinvault"


def say(message: str) -> None:
    print(f"[local-stack] {message}", file=sys.stderr, flush=True)


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def ports() -> dict[str, int]:
    s3 = int(setting("LOCAL_S3_PORT", "8433"))
    # SeaweedFS also listens on each port + 10000 (gRPC); keep the four apart.
    return {
        "ingest": int(setting("LOCAL_INGEST_PORT", "8100")),
        "consent": int(setting("LOCAL_CONSENT_PORT", "8101")),
        "s3": s3,
        "master": s3 + 1000,
        "volume": s3 + 47,
        "filer": s3 + 555,
    }


# ------------------------------------------------------------------ checks and setup


def check_postgres(pg_url: str) -> None:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    async def run() -> None:
        conn = await asyncpg.connect(f"{pg_url}/postgres", timeout=5)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
                say(f"created database {DATABASE}")
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        raise SystemExit(
            f"PostgreSQL does not answer at {pg_url} ({type(exc).__name__}); start it "
            "(pg_ctlcluster ... main start) or set LOCAL_PG_URL"
        ) from None


def check_redis(redis_url: str) -> None:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except RedisError as exc:
        raise SystemExit(
            f"Redis does not answer at {redis_url} ({type(exc).__name__}); start redis-server "
            "or set LOCAL_REDIS_URL"
        ) from None


def s3_credentials() -> tuple[str, str]:
    """The local S3 identity, generated once and kept in data/local/s3.json (mode 0600)."""
    path = STATE / "s3.json"
    if path.exists():
        identity = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return str(identity["accessKey"]), str(identity["secretKey"])
    access, secret = "clinvault-local", secrets.token_urlsafe(24)
    config = {
        "identities": [
            {
                "name": "clinvault-local",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    return access, secret


def write_env(pg_url: str, redis_url: str) -> dict[str, str]:
    """The CLINVAULT_* environment every process of the stack runs with."""
    p = ports()
    access, secret = s3_credentials()
    asyncpg_url = pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    env = {
        "CLINVAULT_DATA_DIR": str(STATE),
        "CLINVAULT_DATABASE_URL": f"{asyncpg_url}/{DATABASE}",
        "CLINVAULT_REDIS_URL": redis_url,
        "CLINVAULT_BLOB_URL": f"s3://{BUCKET}/objects",
        "CLINVAULT_S3_ENDPOINT": f"http://127.0.0.1:{p['s3']}",
        "CLINVAULT_S3_ACCESS_KEY_ID": access,
        "CLINVAULT_S3_SECRET_ACCESS_KEY": secret,
        "CLINVAULT_S3_REGION": "us-east-1",
        "CLINVAULT_MASTER_KEY_FILE": str(STATE / "master.key"),
        "CLINVAULT_CONSENT_SERVICE_URL": f"http://127.0.0.1:{p['consent']}",
        "CLINVAULT_PUBLIC_BASE_URL": f"http://127.0.0.1:{p['ingest']}",
        "CLINVAULT_WORKER_CONCURRENCY": setting("CLINVAULT_WORKER_CONCURRENCY", "1"),
        "LOCAL_INGEST_PORT": str(p["ingest"]),
        "LOCAL_CONSENT_PORT": str(p["consent"]),
        "LOCAL_S3_PORT": str(p["s3"]),
        "PYTHONUNBUFFERED": "1",
    }
    fd = os.open(ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in env.items())
    return env


def running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def wait_http(url: str, timeout: float, pid: int) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid() != pid:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def up() -> int:
    if (pid := running_pid()) is not None:
        say(f"already running (honcho pid {pid}); `make down` first")
        return 1
    STATE.mkdir(parents=True, exist_ok=True)
    pg_url = setting("LOCAL_PG_URL", "postgresql://postgres@127.0.0.1:5432")
    redis_url = setting("LOCAL_REDIS_URL", "redis://127.0.0.1:6379/1")
    check_postgres(pg_url)
    check_redis(redis_url)
    say("PostgreSQL and Redis answer")
    env = {**os.environ, **write_env(pg_url, redis_url)}
    subprocess.run([str(VENV_BIN / "clinvault"), "db", "upgrade"], env=env, check=True)
    S3_READY.unlink(missing_ok=True)
    workers = int(setting("WORKERS", "2"))
    with LOG_FILE.open("ab") as log:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "honcho"),
                "start",
                "--no-colour",
                "-f",
                "deploy/Procfile.local",
                "-e",
                str(ENV_FILE),
                "-d",
                str(ROOT),
                "-c",
                f"worker={workers}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so `down` can signal all of it
        )
    PID_FILE.write_text(str(process.pid))
    p = ports()
    for name in ("ingest", "consent"):
        if not wait_http(f"http://127.0.0.1:{p[name]}/readyz", 180, process.pid):
            say(f"{name} did not become ready; see {LOG_FILE.relative_to(ROOT)}")
            down()
            return 1
    say(
        f"up: ingest http://127.0.0.1:{p['ingest']}  consent http://127.0.0.1:{p['consent']}  "
        f"S3 http://127.0.0.1:{p['s3']}  workers {workers}  (logs: {LOG_FILE.relative_to(ROOT)})"
    )
    return 0


def descendants(root: int) -> set[int]:
    """Every process below `root` (honcho puts each child in a session of its own, so a
    process-group signal alone would miss them)."""
    try:
        return {child.pid for child in psutil.Process(root).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def down(grace: float = 60) -> int:
    pid = running_pid()
    if pid is None:
        say("not running")
        PID_FILE.unlink(missing_ok=True)
        return 0
    # honcho forwards SIGTERM to every process it started (uvicorn and arq stop gracefully).
    tree = descendants(pid) | {pid}
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.3)
    left = [p for p in tree if alive(p)]
    if left:
        say(f"{len(left)} processes ignored SIGTERM; killing them")
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)
    say("down")
    return 0


def status() -> int:
    pid = running_pid()
    print(f"running (honcho pid {pid})" if pid else "not running")
    return 0 if pid else 1


# ------------------------------------------------------------------ Procfile entries


def run_s3() -> int:
    """SeaweedFS in the foreground (honcho supervises it), with the bucket created."""
    p = ports()
    data = STATE / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    weed = str(VENV_BIN / "weed")
    process = subprocess.Popen(
        [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.config={STATE / 's3.json'}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            "-master.telemetry=false",
            "-volume.max=50",
            "-master.volumeSizeLimitMB=256",
        ],
        cwd=data,
    )
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    deadline = time.monotonic() + 120
    shell = [weed, "shell", f"-master=127.0.0.1:{p['master']}"]
    while time.monotonic() < deadline and process.poll() is None:
        subprocess.run(
            shell,
            input=f"s3.bucket.create -name {BUCKET}\nexit\n",
            text=True,
            capture_output=True,
            cwd=data,
            check=False,
            timeout=60,
        )
        listed = subprocess.run(
            shell,
            input="s3.bucket.list\nexit\n",
            text=True,
            capture_output=True,
            cwd=data,
            check=False,
            timeout=60,
        )
        if BUCKET in listed.stdout and s3_writable(p["s3"]):
            S3_READY.write_text("ok")
            say(f"S3 bucket {BUCKET} ready")
            break
        time.sleep(1)
    return process.wait()


def s3_writable(port: int) -> bool:
    """The volume server registers a moment after the bucket exists: a put must succeed."""
    import obstore
    from obstore.store import S3Store

    access, secret = s3_credentials()
    store = S3Store(
        BUCKET,
        config={
            "endpoint": f"http://127.0.0.1:{port}",
            "access_key_id": access,
            "secret_access_key": secret,
            "region": "us-east-1",
        },
        client_options={"allow_http": True},
    )
    try:
        obstore.put(store, "readiness/probe", b"ok")
        obstore.delete(store, "readiness/probe")
    except Exception:
        return False
    return True


def wait_s3() -> int:
    deadline = time.monotonic() + 180
    while not S3_READY.exists():
        if time.monotonic() > deadline:
            say("S3 did not become ready")
            return 1
        time.sleep(0.5)
    return 0


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    actions = {"up": up, "down": down, "status": status, "s3": run_s3, "wait-s3": wait_s3}
    if command not in actions:
        say(f"usage: {Path(__file__).name} {'|'.join(actions)}")
        return 2
    return actions[command]()


if __name__ == "__main__":
    sys.exit(main())
