"""The real sample photos in shared/samples (skipped with a reason when absent)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clinvault_scrub import Profile, scrub
from clinvault_scrub.engine.formats import sniff_format
from conftest import SAMPLES

FILES = (
    sorted(
        p
        for p in SAMPLES.rglob("*")
        if p.is_file()
        and p.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff", ".heic", ".heif", ".png")
    )
    if SAMPLES.is_dir()
    else []
)
pytestmark = pytest.mark.skipif(not FILES, reason=f"sample photos not present at {SAMPLES}")
FORBIDDEN = ("GPS", "XMP", "IPTC", "Photoshop", "MakerNotes", "MPF", "ExifIFD", "Ducky")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SAMPLES)) if FILES else "")
def test_sample_scrubbed_or_rejected_with_reason(path: Path, exiftool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    result = scrub(data, Profile.CARE)
    if not result.ok:
        assert result.reason
        assert not result.reason.startswith("internal error"), result.reason
        assert result.output is None
        return
    out = result.output
    assert out is not None
    if sniff_format(data[:64]) == "jpeg":
        a = np.asarray(Image.open(io.BytesIO(data)))
        b = np.asarray(Image.open(io.BytesIO(out)))
        assert np.array_equal(a, b)
    target = tmp_path / "out"
    target.write_bytes(out)
    tags = exiftool(target)
    bad = [k for k in tags if k.split(":", 1)[0].startswith(FORBIDDEN)]
    assert not bad
    assert not [
        k for k in tags if k.endswith(("SerialNumber", "OwnerName", "Artist", "GPSLatitude"))
    ]


CORRUPTED = SAMPLES / "jpg" / "corrupted.jpg"


@pytest.mark.skipif(not CORRUPTED.exists(), reason=f"sample {CORRUPTED} not present")
def test_corrupted_sample_rejected() -> None:
    result = scrub(CORRUPTED.read_bytes())
    assert not result.ok
    assert "JPEG" in result.reason


# Deidentify decodes and re-encodes (seconds for a large photo): every format that is not a
# JPEG, where the re-encoding differs most (TIFF and HEIF to PNG or JPEG, with their colour
# profiles), and no JPEG, which the generated corpus covers.
NOT_JPEG = [p for p in FILES if p.suffix.lower() not in (".jpg", ".jpeg")]


@pytest.mark.parametrize(
    "path", NOT_JPEG, ids=lambda p: str(p.relative_to(SAMPLES)) if NOT_JPEG else ""
)
def test_sample_deidentified_or_rejected_with_reason(path: Path, exiftool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = scrub(path.read_bytes(), Profile.DEIDENTIFY, read_text=False)
    if not result.ok:
        assert result.reason
        assert not result.reason.startswith(("internal error", "output failed")), result.reason
        return
    assert result.output is not None
    target = tmp_path / "out"
    target.write_bytes(result.output)
    tags = exiftool(target)
    assert not [k for k in tags if k.split(":", 1)[0].startswith(FORBIDDEN)]
    # Of EXIF, at most the Orientation a JPEG output keeps; no timestamps anywhere.
    assert not [k for k in tags if k.startswith("IFD0:") and k != "IFD0:Orientation"]
    dates = {k: v for k, v in tags.items() if "Date" in k and not k.startswith("System:")}
    assert all(v == "0000:00:00 00:00:00" for v in dates.values()), dates


CAPTIONED = SAMPLES / "jpg" / "invalid" / "image00971.jpg"


@pytest.mark.skipif(not CAPTIONED.is_file(), reason=f"sample photo not present at {CAPTIONED}")
def test_a_coloured_caption_on_a_real_photo_is_read_and_covered() -> None:
    """A magenta caption on a photo: tesseract given the colour picture read nothing, the
    grey copy it is now given reads the words, and they are covered."""
    result = scrub(CAPTIONED.read_bytes(), Profile.DEIDENTIFY)
    assert result.ok, result.reason
    text = [f for f in result.findings if f.kind == "text"]
    assert len(text) >= 4, text  # "Qualität zahlt sich für Sie aus." over two lines
    assert all(f.redacted for f in text)
    shown = np.asarray(Image.open(io.BytesIO(result.output or b"")).convert("L"))
    x1, y1, x2, y2 = text[0].box or (0, 0, 0, 0)
    assert shown[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].max() < 40  # filled black
