"""Hostile input: every bad file ends rejected with a reason (or scrubbed safely), within bounds."""

from __future__ import annotations

import ctypes
import io
import os
import resource
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
import scrub_corpus as corpus

from clinvault_scrub import Limits, Profile, scrub
from clinvault_scrub.engine import jpeg
from clinvault_scrub.engine.icc import MAX_ICC_BYTES, clean_icc
from clinvault_scrub.engine.model import Rejected
from clinvault_scrub.engine.sandbox import run_limited
from conftest import scrub_cli

TIGHT = Limits(
    max_pixels=50_000_000,
    max_frames=100,
    max_pages=8,
    cpu_seconds=10,
    wall_seconds=20,
    memory_bytes=512 * 1024 * 1024,
)


def _png(w: int, h: int, idat: bytes) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def _bomb_png() -> bytes:
    # 7000x7000 RGB (147 MB decoded) from a ~150 kB stream: under the pixel limit, over memory.
    row = b"\x00" + b"\x00" * 7000 * 3
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(7000)) + comp.flush()
    return _png(7000, 7000, idat)


def _exif_out_of_bounds() -> bytes:
    data = corpus.leaky_jpeg()
    bad_exif = b"Exif\x00\x00MM\x00*\x7f\xff\xff\xf0" + b"\x00" * 20
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(bad_exif) + 2) + bad_exif + data[2:]


def _huge_jpeg_dims() -> bytes:
    raw = corpus.leaky_jpeg()
    sof = 0
    for seg in jpeg.parse(raw).segments:  # contiguous up to the frame header
        if seg.marker == 0xC0:
            break
        sof += len(seg.raw)
    data = bytearray(raw)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def _segment_flood_jpeg(n: int = 200_000) -> bytes:
    raw = corpus.leaky_jpeg()
    return raw[:2] + b"\xff\xfe\x00\x02" * n + raw[2:]


def _comment_flood_gif(n: int = 150_000) -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", 4, 4, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 4, 4, 0) + b"\x02\x02\x44\x01\x00"
    return head + b"\x21\xfe\x01A\x00" * n + frame + b"\x3b"


def _chunk_flood_webp(n: int = 150_000) -> bytes:
    buf = io.BytesIO()
    corpus.photo(16, 16).save(buf, "WEBP")
    body = buf.getvalue()[12:] + (b"JUNK" + struct.pack("<I", 0)) * n
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def _many_frames_gif(n: int = 5000) -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", 4, 4, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 4, 4, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * n + b"\x3b"


def _ifd_loop_tiff() -> bytes:
    # IFD0 whose next-IFD pointer points at itself.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 256, 4, 1, 8) + struct.pack("<I", 8)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


CASES = {
    "empty": b"",
    "garbage": os.urandom(4096),
    "truncated-jpeg": corpus.leaky_jpeg()[:3000],
    "jpeg-header-only": b"\xff\xd8\xff",
    "exif-offsets-out-of-bounds": _exif_out_of_bounds(),
    "absurd-jpeg-dimensions": _huge_jpeg_dims(),
    "jpeg-segment-flood": _segment_flood_jpeg(),
    "gif-comment-flood": _comment_flood_gif(),
    "webp-chunk-flood": _chunk_flood_webp(),
    "absurd-png-dimensions": _png(100_000, 100_000, zlib.compress(b"\x00" * 100)),
    "png-bad-crc": corpus.leaky_png()[:20] + b"\x07" + corpus.leaky_png()[21:],
    "truncated-png": corpus.leaky_png()[:200],
    "5000-frame-gif": _many_frames_gif(),
    "truncated-gif": corpus.leaky_gif()[:500],
    "truncated-webp": corpus.leaky_webp()[:100],
    "tiff-ifd-loop": _ifd_loop_tiff(),
    "truncated-tiff": corpus.leaky_tiff()[:300],
    "truncated-heif": corpus.leaky_heif()[:400],
    "pdf": b"%PDF-1.7\n" + os.urandom(200),
}
EXPECTED_REASON = {
    "absurd-jpeg-dimensions": "pixel limit",
    "jpeg-segment-flood": "more than 10000 segments",
    "gif-comment-flood": "more than 100000 blocks",
    "webp-chunk-flood": "more than 100000 chunks",
    "absurd-png-dimensions": "pixel limit",
    "5000-frame-gif": "frame limit",
    "pdf": "PDF",
    "empty": "empty file",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("profile", [Profile.CARE, Profile.DEIDENTIFY])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_rejected_with_a_reason(case: str, profile: Profile) -> None:
    start = time.monotonic()
    result = scrub(CASES[case], profile, limits=TIGHT, read_text=False)
    assert time.monotonic() - start < 30
    if result.ok:
        # Scrubbed safely: it passed the same fail-closed verification as any output.
        assert case == "exif-offsets-out-of-bounds"
        assert "exif" in result.removed
        assert result.output is not None
        assert b"CANARY" not in result.output
    else:
        assert result.output is None
        assert result.reason
        assert "Traceback" not in result.reason
        if case in EXPECTED_REASON:
            assert EXPECTED_REASON[case] in result.reason


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile", ["care", "deidentify"])
def test_the_cli_takes_the_whole_corpus_at_once(profile: str, tmp_path: Path) -> None:
    """The same files as one batch through `clinvault scrub` (worker threads or processes):
    one line each, a reason for each rejection, no traceback, status 1 (some rejected)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for case, data in CASES.items():
        (folder / case).write_bytes(data)
    status, lines, stderr = scrub_cli(
        str(folder), "--out", str(tmp_path / "out"), "--profile", profile, timeout=100
    )
    assert status == 1
    assert stderr == ""
    assert sorted(os.path.basename(line["input"]) for line in lines) == sorted(CASES)
    for line in lines:
        assert line["status"] == "scrubbed" or line["reason"], line["input"]
        assert not line["reason"].startswith("internal error"), line["reason"]
    scrubbed = {os.path.basename(line["input"]) for line in lines if line["status"] == "scrubbed"}
    assert scrubbed == {"exif-offsets-out-of-bounds"}


@pytest.mark.timeout(60)
def test_decompression_bomb_hits_the_memory_limit_in_the_child() -> None:
    bomb = _bomb_png()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    limits = Limits(memory_bytes=64 * 1024 * 1024, wall_seconds=30)
    result = scrub(bomb, Profile.DEIDENTIFY, limits=limits, read_text=False)
    assert not result.ok
    assert "memory" in result.reason or "decoded" in result.reason
    # The parent did not decode it: its peak RSS grew far less than the 147 MB of pixels.
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100 * 1024


def _spin() -> None:
    while True:
        pass


def _sleep_forever() -> None:
    time.sleep(3600)


def _crash() -> None:
    ctypes.string_at(0)


def _allocate() -> bytes:
    return b"\x00" * (1024 * 1024 * 1024)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("fn", "reason"),
    [
        (_spin, "CPU time"),
        (_sleep_forever, "time limit"),
        (_crash, "crashed"),
        (_allocate, "memory"),
    ],
)
def test_sandbox_limits(fn: object, reason: str) -> None:
    limits = Limits(cpu_seconds=1, wall_seconds=3, memory_bytes=256 * 1024 * 1024)
    start = time.monotonic()
    with pytest.raises(Rejected, match=reason):
        run_limited(fn, (), limits)  # type: ignore[arg-type]
    assert time.monotonic() - start < 10


def test_sandbox_returns_values() -> None:
    assert run_limited(sum, ([1, 2, 3],), Limits()) == 6


def test_frame_limit_for_real_animated_gif() -> None:
    frames = [corpus.photo(16, 16, seed=i).convert("P") for i in range(12)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert not scrub(buf.getvalue(), limits=Limits(max_frames=10)).ok
    assert scrub(buf.getvalue(), limits=Limits(max_frames=20)).ok


def test_icc_tags_overlapping_the_whole_profile_are_refused_without_copying_it() -> None:
    """200 tags each claiming nearly the whole profile: 200 copies of it in the worker."""
    size = 2 * 1024 * 1024
    header = bytearray(128)
    header[36:40] = b"acsp"
    count = 200
    table = b"".join(struct.pack(">4sII", b"X%03d" % i, i, size - count) for i in range(count))
    profile = bytes(header) + struct.pack(">I", count) + table
    profile += b"\x00" * (size - len(profile))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="overlap"):
            clean_icc(profile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * size  # one copy and change, not 200
    with pytest.raises(ValueError, match="too large"):
        clean_icc(bytes(header) + b"\x00" * MAX_ICC_BYTES)
