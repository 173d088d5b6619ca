"""Fixtures for the scrub engine tests: exiftool as the independent checker, the sample photos,
the `clinvault` executable as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


CLINVAULT = str(Path(sys.executable).parent / "clinvault")


def scrub_cli(*args: str, timeout: float = 120) -> tuple[int, list[dict[str, Any]], str]:
    """`clinvault scrub ARGS --json` in a process of its own: (exit status, its JSON lines,
    what it wrote to stderr)."""
    proc = subprocess.run(
        [CLINVAULT, "scrub", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr
