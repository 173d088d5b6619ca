"""Settings: embedded defaults, and bad configuration named by its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinvault_shared.settings import ConfigurationError, load_settings


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.is_sqlite
    assert settings.is_embedded_queue
    assert settings.resolved_blob_url.startswith("file://")
    assert settings.resolved_master_key_file.parent == settings.data_dir
    assert settings.max_upload_bytes == 50 * 1024 * 1024


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLINVAULT_DATABASE_URL", "mysql://root@localhost/x"),
        ("CLINVAULT_BLOB_URL", "ftp://somewhere"),
        ("CLINVAULT_REDIS_URL", "localhost:6379"),
        ("CLINVAULT_MAX_UPLOAD_BYTES", "-5"),
        ("CLINVAULT_WORKER_CONCURRENCY", "many"),
    ],
)
def test_bad_configuration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    assert variable in str(excinfo.value)
