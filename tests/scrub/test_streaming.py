"""Care scrub of a JPEG from file to file: the same output as in memory, and fail-closed."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import scrub_corpus as corpus

from clinvault_scrub import Limits, Profile, scrub, scrub_file
from clinvault_scrub.engine import jpeg, verify


def _with_restarts() -> bytes:
    buf = io.BytesIO()
    corpus.photo(200, 120).save(buf, "JPEG", quality=90, restart_marker_blocks=1)
    return buf.getvalue()


def _fill_bytes(data: bytes) -> bytes:
    """Fill bytes (0xFF runs) before EOI and before a segment marker, which are legal."""
    eoi = data.rindex(b"\xff\xd9")
    return data[:2] + b"\xff\xff" + data[2:eoi] + b"\xff\xff\xff" + data[eoi:]


def _comment_between_scans() -> bytes:
    buf = io.BytesIO()
    corpus.photo(200, 120).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    comment = b"\xff\xfe\x00\x0c" + b"NOTE-LATER"
    return data[:second_scan] + comment + data[second_scan:]


VARIANTS: dict[str, Callable[[], bytes]] = {
    "leaky": corpus.leaky_jpeg,
    "progressive": lambda: corpus.leaky_jpeg(progressive=True),
    "cmyk": lambda: corpus.leaky_jpeg(cmyk=True),
    "rotated": lambda: corpus.leaky_jpeg(orientation=6),
    "restart-markers": _with_restarts,
    "fill-bytes": lambda: _fill_bytes(corpus.leaky_jpeg()),
    "comment-between-scans": _comment_between_scans,
}


@pytest.mark.parametrize("chunk", [2, 3, 7, 64, 4096, jpeg.STREAM_CHUNK])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_streamed_output_equals_the_in_memory_output(
    tmp_path: Path, variant: str, chunk: int
) -> None:
    data = VARIANTS[variant]()
    expected = jpeg.scrub_care(data, max_pixels=10**8)
    src, dst = tmp_path / "in.jpg", tmp_path / "out.jpg"
    src.write_bytes(data)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        source = jpeg.FileSource(fin.fileno(), len(data), chunk=chunk)
        got = jpeg.scrub_care_file(source, fout.fileno(), max_pixels=10**8)
    assert dst.read_bytes() == expected.output
    assert got.written == len(expected.output)
    assert got.scan_runs == expected.scan_runs
    assert got.removed == expected.removed
    assert got.orientation == expected.orientation
    assert got.captured_at == expected.captured_at


def test_scrub_file_writes_what_scrub_returns(tmp_path: Path) -> None:
    data = corpus.leaky_jpeg(orientation=6)
    src, dst = tmp_path / "in.jpg", tmp_path / "out" / "photo.jpg"
    src.write_bytes(data)
    dst.parent.mkdir()
    result = scrub_file(str(src), str(dst))
    in_memory = scrub(data)
    assert result.ok, result.reason
    assert result.output is None  # the output is in the file
    assert dst.read_bytes() == in_memory.output
    assert result.removed == in_memory.removed
    assert result.captured_at == in_memory.captured_at
    assert result.record["checks"] == in_memory.record["checks"]
    assert os.listdir(dst.parent) == ["photo.jpg"]  # no partial file left beside it


@pytest.mark.parametrize(
    ("name", "mangle", "reason"),
    [
        ("truncated", lambda d: d[: len(d) // 2], "truncated"),
        (
            "second-frame",
            lambda d: d.replace(b"\xff\xd9", b"\xff\xc0\x00\x0b" + b"\x08" * 9, 1),
            "",
        ),
        ("empty", lambda _: b"", "unsupported file type"),
    ],
)
def test_a_rejected_stream_leaves_no_output(
    tmp_path: Path, name: str, mangle: Callable[[bytes], bytes], reason: str
) -> None:
    src, dst = tmp_path / "in.jpg", tmp_path / "out" / "photo.jpg"
    dst.parent.mkdir()
    src.write_bytes(mangle(corpus.leaky_jpeg(progressive=True)))
    result = scrub_file(str(src), str(dst))
    assert not result.ok, name
    assert reason in result.reason
    assert "failed" in result.record["checks"]
    assert os.listdir(dst.parent) == []  # neither the output nor the partial file


def test_a_file_that_shrinks_while_streamed_is_rejected(tmp_path: Path) -> None:
    data = corpus.leaky_jpeg()
    src = tmp_path / "in.jpg"
    src.write_bytes(data)
    with open(src, "rb") as fin, open(tmp_path / "out.jpg", "wb") as fout:
        source = jpeg.FileSource(fin.fileno(), len(data), chunk=4096)
        os.truncate(src, len(data) - 4000)  # after the size was taken, as by another process
        with pytest.raises(jpeg.Rejected, match="truncated"):
            jpeg.scrub_care_file(source, fout.fileno(), max_pixels=10**8)


def test_unreadable_input_and_unwritable_target_are_reasons_not_tracebacks(
    tmp_path: Path,
) -> None:
    missing = scrub_file(str(tmp_path / "nope.jpg"), str(tmp_path / "out.jpg"))
    assert missing.reason == "cannot read input (No such file or directory)"
    folder = scrub_file(str(tmp_path), str(tmp_path / "out.jpg"))
    assert folder.reason == "cannot read input (Is a directory)"
    src = tmp_path / "in.jpg"
    src.write_bytes(corpus.leaky_jpeg())
    for profile in (Profile.CARE, Profile.DEIDENTIFY):  # streamed, and in memory
        result = scrub_file(str(src), str(tmp_path / "no-such-dir" / "out.jpg"), profile)
        assert result.reason == "cannot write output (No such file or directory)", profile


def test_an_oversized_file_is_rejected_before_it_is_read(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(corpus.leaky_png())
    result = scrub_file(str(src), str(tmp_path / "out.png"), limits=Limits(max_bytes=100))
    assert result.reason == "file exceeds the size limit"
    assert not (tmp_path / "out.png").exists()


def test_other_formats_go_through_scrub_and_land_in_the_target(tmp_path: Path) -> None:
    data = corpus.leaky_png()
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    src.write_bytes(data)
    result = scrub_file(str(src), str(dst))
    assert result.ok
    assert result.output_format == "png"
    assert dst.read_bytes() == scrub(data).output


def test_the_file_check_reads_back_what_was_written(tmp_path: Path) -> None:
    j = jpeg.scrub_care(corpus.leaky_jpeg(), max_pixels=10**8)
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(j.output)
    (start, length), *_ = j.scan_runs.items()
    cut = start + length
    bad.write_bytes(j.output[:cut] + b"\xff\xfe\x00\x07hello" + j.output[cut:])
    with open(good, "rb") as f:
        assert verify.check_jpeg_file(f.fileno(), len(j.output), jpeg_runs=j.scan_runs) == []
    with open(bad, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        assert verify.check_jpeg_file(f.fileno(), size, jpeg_runs=j.scan_runs) == ["segment 0xfe"]
        # Trailing bytes past what the scrub wrote are data after the end of the image.
    with open(good, "ab") as f:
        f.write(b"tail")
    with open(good, "rb") as f:
        problems = verify.check_jpeg_file(f.fileno(), len(j.output) + 4, jpeg_runs=j.scan_runs)
    assert problems == ["data after end of image"]


def test_a_file_can_be_scrubbed_in_place(tmp_path: Path) -> None:
    """`clinvault scrub *.jpg --out .`: the target is the source, replaced once it is done."""
    data = corpus.leaky_jpeg()
    src = tmp_path / "photo.jpg"
    src.write_bytes(data)
    result = scrub_file(str(src), str(src))
    assert result.ok, result.reason
    assert src.read_bytes() == scrub(data).output
    assert os.listdir(tmp_path) == ["photo.jpg"]


def test_a_segment_flood_is_refused_when_streamed_too(tmp_path: Path) -> None:
    raw = corpus.leaky_jpeg()
    src = tmp_path / "flood.jpg"
    src.write_bytes(raw[:2] + b"\xff\xfe\x00\x02" * (jpeg.MAX_SEGMENTS + 1) + raw[2:])
    result = scrub_file(str(src), str(tmp_path / "out.jpg"))
    assert result.reason == f"corrupt JPEG: more than {jpeg.MAX_SEGMENTS} segments"


def test_a_failing_read_is_a_read_error_not_a_write_error(tmp_path: Path) -> None:
    data = corpus.leaky_jpeg()
    read_end, write_end = os.pipe()  # a descriptor that cannot be read at an offset
    os.close(write_end)
    try:
        with open(tmp_path / "out.jpg", "wb") as fout:
            source = jpeg.FileSource(read_end, len(data))
            with pytest.raises(jpeg.Rejected, match=r"cannot read input \(Illegal seek\)"):
                jpeg.scrub_care_file(source, fout.fileno(), max_pixels=10**8)
    finally:
        os.close(read_end)
