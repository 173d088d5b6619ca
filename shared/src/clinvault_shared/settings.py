"""One settings object for every clinvault process, read from `CLINVAULT_*` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigurationError(RuntimeError):
    """Raised at start when the environment does not describe a runnable clinvault."""


class Settings(BaseSettings):
    """Configuration; defaults give the embedded mode (SQLite, local folder, in-process queue)."""

    model_config = SettingsConfigDict(env_prefix="CLINVAULT_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None
    redis_url: str | None = None
    blob_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    master_key_file: Path | None = None
    # A hex-encoded 256-bit master key given as a secret (env, k8s Secret) instead of a key file.
    master_key: SecretStr | None = None
    # Hex key for patient pseudonyms (audit, key table); default: pseudonym.key by the master key.
    pseudonym_key: SecretStr | None = None

    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=120_000_000, gt=0)
    verbal_consent_documentation_hours: int = Field(default=72, gt=0)
    job_max_tries: int = Field(default=5, gt=0)
    worker_concurrency: int = Field(default=2, gt=0)
    reconcile_interval_seconds: int = Field(default=30, gt=0)
    # Work untouched for this long is treated as lost and enqueued again.
    stale_work_seconds: int = Field(default=120, gt=0)
    # Workers serve /metrics on this port (0: off); APIs serve it on their own port.
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535)
    worker_shutdown_grace_seconds: int = Field(default=30, ge=0)
    consent_service_url: str | None = None
    # The API key ingest presents to the consent service (a role with decisions:read).
    consent_service_api_key: SecretStr | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    environment: str = "development"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite+aiosqlite://", "postgresql+asyncpg://")
        ):
            raise ValueError(
                "CLINVAULT_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @field_validator("blob_url")
    @classmethod
    def _known_blob_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file://", "s3://", "memory://")):
            raise ValueError("CLINVAULT_BLOB_URL must start with file:// or s3://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError("CLINVAULT_REDIS_URL must start with redis:// or rediss://")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'clinvault.db').resolve()}"

    @property
    def resolved_blob_url(self) -> str:
        """The blob store URL, defaulting to a folder in the data directory."""
        if self.blob_url:
            return self.blob_url
        return f"file://{(self.data_dir / 'blobs').resolve()}"

    @property
    def resolved_master_key_file(self) -> Path:
        """Where the master key file lives (created with mode 0600 on first start)."""
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def is_embedded_queue(self) -> bool:
        """True when no Redis is configured: jobs run on an in-process asyncio worker."""
        return not self.redis_url

    @property
    def is_sqlite(self) -> bool:
        """True when the database is the embedded SQLite file."""
        return self.resolved_database_url.startswith("sqlite")


def load_settings() -> Settings:
    """Build settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            problems.append(f"CLINVAULT_{field.upper()}: {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use so tests can set the environment first."""
    return load_settings()
