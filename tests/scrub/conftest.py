"""Fixtures for the scrub engine tests: exiftool as the independent checker, the sample photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _samples_dir() -> Path:
    # Beside the checkout (../shared/samples), or where CLINVAULT_TEST_SAMPLES points (a clone
    # elsewhere, such as CI's); never copied into the project.
    configured = os.environ.get("CLINVAULT_TEST_SAMPLES")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "shared" / "samples" / "exif-samples"


SAMPLES = _samples_dir()


@pytest.fixture(scope="session")
def exiftool():  # type: ignore[no-untyped-def]
    exe = shutil.which("exiftool")
    if exe is None:
        # The independent checker: without it the leak tests would prove nothing, so fail.
        pytest.fail("exiftool not installed (Debian package libimage-exiftool-perl; .ci/run)")

    def run(path: Path) -> dict[str, object]:
        out = subprocess.run(
            [exe, "-j", "-a", "-G1", "-u", str(path)], capture_output=True, check=True
        )
        return json.loads(out.stdout)[0]  # type: ignore[no-any-return]

    return run
