"""Fixtures for the scrub engine tests: exiftool as the independent checker, the sample photos."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "exif-samples"


@pytest.fixture(scope="session")
def exiftool():  # type: ignore[no-untyped-def]
    exe = shutil.which("exiftool")
    if exe is None:
        pytest.skip("exiftool not installed (Debian package libimage-exiftool-perl)")

    def run(path: Path) -> dict[str, object]:
        out = subprocess.run(
            [exe, "-j", "-a", "-G1", "-u", str(path)], capture_output=True, check=True
        )
        return json.loads(out.stdout)[0]  # type: ignore[no-any-return]

    return run
