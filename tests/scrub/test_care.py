"""Care profile: every leak vector removed, pixels identical, orientation and colour kept."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scrub_corpus as corpus
from PIL import Image

from clinvault_scrub import Hints, Profile, describe_format, scrub, sniff_format
from clinvault_scrub.engine import icc, jpeg, png, record, verify

LEAKY = {
    "jpeg": corpus.leaky_jpeg,
    "jpeg-progressive": lambda: corpus.leaky_jpeg(progressive=True),
    "jpeg-cmyk": lambda: corpus.leaky_jpeg(cmyk=True),
    "png": corpus.leaky_png,
    "webp": corpus.leaky_webp,
    "gif": corpus.leaky_gif,
    "tiff": corpus.leaky_tiff,
    "heif": corpus.leaky_heif,
}
# exiftool groups that must never appear in a care output.
FORBIDDEN_GROUPS = (
    "GPS",
    "XMP",
    "IPTC",
    "Photoshop",
    "MakerNotes",
    "MPF",
    "ExifIFD",
    "IFD1",
    "Ducky",
    "JUMBF",
    "Samsung",
    "PNG-pHYs-text",
    "Trailer",
    "Comment",
)


@pytest.fixture(scope="module", params=sorted(LEAKY))
def scrubbed(request: pytest.FixtureRequest) -> tuple[str, bytes, bytes]:
    data = LEAKY[request.param]()
    result = scrub(data, Profile.CARE)
    assert result.ok, result.reason
    assert result.output is not None
    return request.param, data, result.output


def test_no_canary_survives(scrubbed: tuple[str, bytes, bytes]) -> None:
    kind, data, out = scrubbed
    assert b"CANARY" in data or b"C\x00A\x00N\x00A\x00R\x00Y" in data  # the corpus really leaks
    haystacks = [out, out.lower()]
    if kind == "png":
        haystacks.append(corpus.inflate_all(out))
    for hay in haystacks:
        for form in corpus.canary_forms("CANARY"):
            assert form.lower() not in hay.lower(), kind


def test_exiftool_sees_no_metadata(
    scrubbed: tuple[str, bytes, bytes], exiftool, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    kind, _, out = scrubbed
    path = tmp_path / "out.bin"
    path.write_bytes(out)
    tags = exiftool(path)
    for key in tags:
        group = key.split(":", 1)[0]
        if kind == "tiff" and group == "IFD1":
            continue  # the second page of a multi-page TIFF, not a thumbnail
        assert not group.startswith(FORBIDDEN_GROUPS), (kind, key)
    ifd0 = [k for k in tags if k.startswith("IFD0:")]
    if kind.startswith("jpeg"):
        assert ifd0 == ["IFD0:Orientation"]
    for key, value in tags.items():
        assert "CANARY" not in str(value), (kind, key)
        assert not (key.endswith(":Warning") and "railer" in str(value)), (kind, value)


@pytest.mark.parametrize(
    "kind", ["jpeg", "jpeg-progressive", "jpeg-cmyk", "png", "webp", "gif", "tiff", "heif"]
)
def test_pixels_identical(kind: str) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    data = LEAKY[kind]()
    result = scrub(data)
    out = result.output
    assert out is not None
    # HEIF by a container rewrite now (the coded image copied), TIFF by a lossless re-encode.
    assert result.reencoded == (kind == "tiff")
    a, b = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(out))
    for frame in range(getattr(a, "n_frames", 1)):
        a.seek(frame)
        b.seek(frame)
        assert np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA"))), frame


def test_jpeg_keeps_compressed_data_bytewise() -> None:
    data = corpus.leaky_jpeg()
    out = scrub(data).output
    assert out is not None
    scan_in = [bytes(s.raw) for s in jpeg.parse(data).segments if s.marker in (0, 0xDA, 0xDB, 0xC4)]
    scan_out = [bytes(s.raw) for s in jpeg.parse(out).segments if s.marker in (0, 0xDA, 0xDB, 0xC4)]
    assert scan_in == scan_out


def test_jpeg_keeps_cleaned_icc_profile() -> None:
    out = scrub(corpus.leaky_jpeg()).output
    assert out is not None
    icc = Image.open(io.BytesIO(out)).info.get("icc_profile")
    assert icc
    assert icc[36:40] == b"acsp"
    assert b"wtpt" in icc
    assert b"CANARY" not in icc


def test_icc_keeps_only_colour_tags_whatever_their_names() -> None:
    """Text under a vendor's private name is still text; a tag that carries no colour goes."""
    curve = b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, 0x0233)  # gamma 2.2
    mluc_body = corpus.canary("dscm").encode("utf-16-be")
    private_mluc = (
        b"mluc\x00\x00\x00\x00"
        + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(mluc_body), 28)
        + mluc_body
    )
    extra = [
        (b"rTRC", curve),
        (b"dscm", private_mluc),  # Apple's multi-language description
        (b"Xnot", corpus.icc_text(corpus.canary("privatetext"))),  # text under any name
        (b"mmod", b"mmod\x00\x00\x00\x00" + corpus.canary("makemodel").encode()),
        (b"calt", b"dtim\x00\x00\x00\x00" + struct.pack(">6H", 2024, 5, 6, 7, 8, 9)),
        (b"clrt", b"clrt\x00\x00\x00\x00" + corpus.canary("colorant").encode().ljust(38, b"\0")),
    ]
    profile = corpus.icc_with_text("sRGB IEC61966-2.1", "Copyright Example", extra)
    cleaned, changed = icc.clean_icc(profile)
    assert changed
    assert b"CANARY" not in cleaned
    assert b"C\x00A\x00N\x00A\x00R\x00Y" not in cleaned
    count = struct.unpack(">I", cleaned[128:132])[0]
    kept = {cleaned[132 + 12 * i : 136 + 12 * i] for i in range(count)}
    assert kept == {b"desc", b"cprt", b"wtpt", b"rTRC"}
    assert curve in cleaned  # the colour data itself is untouched
    assert icc.icc_is_clean(cleaned)
    assert icc.clean_icc(cleaned) == (cleaned, False)

    out = scrub(corpus.leaky_jpeg(icc_profile=profile)).output
    assert out is not None
    kept_profile = Image.open(io.BytesIO(out)).info["icc_profile"]
    assert kept_profile == cleaned


# Structures a care scrub copies as they are, each with room made for text: the text must not
# come through (the structure is dropped, rebuilt, or the file rejected).
_HIDDEN = corpus.canary("hidden").encode()


def _png_chunks(data: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return out


def test_png_chunk_longer_than_its_fixed_size_is_dropped() -> None:
    data = corpus.leaky_png()
    ihdr_end = 8 + 12 + 13
    phys = corpus._chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1) + _HIDDEN)
    result = scrub(data[:ihdr_end] + phys + data[ihdr_end:])
    assert result.ok
    assert result.output is not None
    assert _HIDDEN not in result.output
    assert b"pHYs" not in _png_chunks(result.output)
    assert "png.malformed_chunk" in result.removed


def test_png_end_chunk_with_content_is_rejected() -> None:
    data = corpus.leaky_png()
    iend = data.rindex(b"IEND") - 4
    result = scrub(data[:iend] + corpus._chunk(b"IEND", _HIDDEN))
    assert not result.ok
    assert "IEND of the wrong size" in result.reason


def test_gif_extensions_keep_only_their_fixed_fields() -> None:
    data = corpus.leaky_gif()
    loop = data.index(b"\x21\xff\x0bNETSCAPE2.0")
    gce = data.index(b"\x21\xf9\x04")
    hidden = bytes([len(_HIDDEN)]) + _HIDDEN
    # An extra sub-block after the loop count, and one after the graphic control fields.
    data = data[: loop + 18] + hidden + data[loop + 18 :]
    gce = data.index(b"\x21\xf9\x04", gce + 30)  # a later frame's
    data = data[: gce + 7] + hidden + data[gce + 7 :]
    result = scrub(data)
    assert result.ok
    assert result.output is not None
    assert _HIDDEN not in result.output
    assert {"gif.application", "gif.malformed_block"} <= set(result.removed)
    with Image.open(io.BytesIO(result.output)) as im:
        assert im.n_frames == 3
        assert im.info.get("loop") == 0


def test_webp_frame_keeps_only_its_image_sub_chunks() -> None:
    frames = [corpus.photo(64, 48, seed=i) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = buf.getvalue()
    anmf = data.index(b"ANMF")
    size = struct.unpack("<I", data[anmf + 4 : anmf + 8])[0]
    end = anmf + 8 + size + (size & 1)
    unknown = b"XYZW" + struct.pack("<I", len(_HIDDEN)) + _HIDDEN + b"\x00" * (len(_HIDDEN) & 1)
    data = (
        data[: anmf + 4]
        + struct.pack("<I", size + (size & 1) + len(unknown))
        + data[anmf + 8 : end]
        + unknown
        + data[end:]
    )
    data = data[:4] + struct.pack("<I", len(data) - 8) + data[8:]
    result = scrub(data)
    assert result.ok
    assert result.output is not None
    assert _HIDDEN not in result.output
    assert "webp.chunk" in result.removed
    with Image.open(io.BytesIO(data)) as a, Image.open(io.BytesIO(result.output)) as b:
        for index in range(2):
            a.seek(index)
            b.seek(index)
            assert np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA")))


def test_webp_frame_without_image_data_is_rejected() -> None:
    frames = [corpus.photo(64, 48, seed=i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = buf.getvalue()
    last = data.rindex(b"VP8L")  # the last frame's bitstream, under a name no decoder knows
    result = scrub(data[:last] + b"XP8L" + data[last + 4 :])
    assert not result.ok
    assert result.reason == "WebP animation frame without image data"


@pytest.mark.parametrize("marker", [0xDB, 0xC4, 0xC0, 0xDA])
def test_jpeg_image_segment_with_room_to_spare_is_rejected(marker: int) -> None:
    data = corpus.leaky_jpeg()
    seg = next(s for s in jpeg.parse(data).segments if s.marker == marker)
    raw = bytes(seg.raw)
    padded = raw[:2] + struct.pack(">H", len(raw) - 2 + len(_HIDDEN)) + raw[4:] + _HIDDEN
    result = scrub(data[: seg.offset] + padded + data[seg.offset + len(raw) :])
    assert not result.ok
    assert result.reason == "corrupt JPEG: image segment of the wrong length"


def test_care_reports_capture_time_and_removed_fields() -> None:
    result = scrub(corpus.leaky_jpeg())
    assert result.captured_at is not None
    assert result.captured_at.isoformat() == "2024-05-06T07:08:09+02:00"
    for name in (
        "exif.gps",
        "exif.serial",
        "exif.owner",
        "exif.makernote",
        "exif.thumbnail",
        "xmp",
        "xmp.extended",
        "iptc",
        "comment",
        "jumbf",
        "ducky",
        "mpf",
        "trailer",
        "icc.free_text",
    ):
        assert name in result.removed, name
    assert result.record["profile"] == "care"
    assert len(result.record["policy_sha256"]) == 64
    body = json.dumps({"profile": "care", "policy": record.POLICY}, sort_keys=True).encode()
    assert result.record["policy_sha256"] == hashlib.sha256(body).hexdigest()
    assert "reparse" in result.record["checks"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_care_keeps_orientation(orientation: int) -> None:
    result = scrub(corpus.leaky_jpeg(orientation=orientation))
    assert result.output is not None
    im = Image.open(io.BytesIO(result.output))
    assert im.getexif().get(0x0112) == orientation
    assert set(im.getexif()) == {0x0112}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_webp_keeps_orientation_alone(orientation: int, exiftool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """As for JPEG: a rotated WebP keeps its Orientation in a minimal EXIF, nothing else of it
    (GPS, serials, dates, the thumbnail), so it is not shown sideways after a care scrub."""
    buf = io.BytesIO()
    corpus.photo(64, 40).save(buf, "WEBP", lossless=True, exif=corpus.full_exif(orientation))
    result = scrub(buf.getvalue())
    assert result.output is not None, result.reason
    assert "exif.gps" in result.removed
    assert result.captured_at is not None
    exif = Image.open(io.BytesIO(result.output)).getexif()
    assert dict(exif) == ({} if orientation == 1 else {0x0112: orientation})
    path = tmp_path / "out.webp"
    path.write_bytes(result.output)
    tags = exiftool(path)
    assert [k for k in tags if k.startswith(("IFD0:", "ExifIFD:", "GPS:", "IFD1:"))] == (
        [] if orientation == 1 else ["IFD0:Orientation"]
    )
    assert scrub(result.output).removed == []  # a clean output scrubs to itself


@pytest.mark.parametrize("profile", [Profile.CARE, Profile.DEIDENTIFY])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_rotated_tiff_is_shown_as_before_never_turned_twice(
    orientation: int, profile: Profile
) -> None:
    """Pillow turns a TIFF page by its Orientation tag as it loads it: the output holds the
    page as displayed, without the tag (which would turn it a second time)."""
    buf = io.BytesIO()
    corpus.photo(64, 40).save(buf, "TIFF", tiffinfo={274: orientation})
    result = scrub(buf.getvalue(), profile, read_text=False)
    assert result.output is not None, result.reason
    shown_in = np.asarray(Image.open(buf).convert("RGB"))
    out = Image.open(io.BytesIO(result.output))
    assert 0x0112 not in out.getexif()
    assert np.array_equal(shown_in, np.asarray(out.convert("RGB")))
    assert result.removed.count("orientation (applied to pixels)") == (orientation != 1)


@pytest.mark.parametrize(
    ("head", "fmt", "name"),
    [
        (b"\xff\xd8\xff\xe0", "jpeg", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "png", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp", "WebP"),
        (b"GIF89a", "gif", "GIF"),
        (b"II*\x00\x08\x00\x00\x00", "tiff", "TIFF"),
        (b"\x00\x00\x00\x18ftypheic", "heif", "HEIF"),
        (b"%PDF-1.7", None, "PDF"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'>", None, "SVG"),
        (b"\x00\x00\x00\x18ftypisom", None, "MP4 video"),
        (b"\x00\x00\x00\x14ftypqt  ", None, "QuickTime video"),
        (b"II*\x00\x10\x00\x00\x00CR\x02\x00", None, "Canon CR2 RAW"),
        (b"", None, "empty file"),
        (b"patient called back, wound healing\n", None, "text file"),
        ("Überweisung Dr. Müller\n".encode(), None, "text file"),
        (b"bplist00\xd1\x01\x02", None, "property list"),
        (b"\x00\x00\x00\x01Bud1\x00\x00", None, "unknown type"),
    ],
)
def test_sniff_and_describe(head: bytes, fmt: str | None, name: str) -> None:
    assert sniff_format(head) == fmt
    assert describe_format(head) == name


@pytest.mark.parametrize(
    "head", [b"%PDF-1.4\n%...", b"<svg></svg>", b"\x00\x00\x00\x18ftypmp42xxxx"]
)
def test_other_types_rejected_with_detected_type(head: bytes) -> None:
    result = scrub(head + b"\x00" * 100)
    assert not result.ok
    assert result.output is None
    assert result.reason.startswith("unsupported file type: ")
    assert describe_format(head) in result.reason


def test_detection_ignores_the_file_name(tmp_path: Path) -> None:
    png_bytes = corpus.leaky_png()
    result = scrub(png_bytes)  # no name at all: content decides
    assert result.format == "png"


def test_verification_fails_closed_on_hint_in_bytes() -> None:
    clean = scrub(corpus.leaky_png()).output
    assert clean is not None
    assert verify.check(clean, "png", hints=["Jane Roe"]) == []
    poisoned = clean[:-12] + struct.pack(">I", 8) + b"clNvjane roe" + clean[-12:]
    assert verify.check(poisoned, "png", hints=["Jane Roe"])


def test_verification_rejects_leftover_metadata() -> None:
    out = scrub(corpus.leaky_jpeg()).output
    assert out is not None
    bad = out[:2] + b"\xff\xfe\x00\x07hello" + out[2:]
    assert jpeg.check_clean(bad)
    assert jpeg.check_clean(out + b"tail")


def test_hint_matched_output_bytes_rejects_file() -> None:
    # A GIF whose pixel data happens to contain the hint bytes cannot be returned.
    data = corpus.leaky_gif(frames=1)
    result = scrub(data, hints=Hints(patient_name="GIF89a"))
    assert not result.ok
    assert "identifier hint" in result.reason


@pytest.mark.parametrize("progressive", [False, True])
def test_scan_runs_match_a_full_reparse(progressive: bool) -> None:
    """The runs the output check skips are exactly the ones a full search finds."""
    buf = io.BytesIO()
    corpus.photo(640, 480).save(buf, "JPEG", quality=85, progressive=progressive)
    src = buf.getvalue()
    body = src[2:]
    leaky = src[:2] + b"\xff\xfe\x00\x06note" + body  # a comment to shift the offsets
    j = jpeg.scrub_care(leaky, max_pixels=10**8)
    full = jpeg.parse(j.output)
    offsets, found = 0, {}
    for seg in full.segments:
        if seg.marker == 0:
            found[offsets] = len(seg.raw)
        offsets += len(seg.raw)
    assert j.scan_runs == found
    assert len(found) > 1 if progressive else len(found) == 1
    assert jpeg.check_clean(j.output, known_runs=j.scan_runs) == []


def test_known_runs_are_checked_not_trusted_blindly() -> None:
    j = jpeg.scrub_care(corpus.leaky_jpeg(), max_pixels=10**8)
    (start, length), *_ = j.scan_runs.items()
    # A run that does not end on a marker, or a header where the run should start: rejected.
    assert jpeg.check_clean(j.output, known_runs={start: length - 1})
    # Metadata after the entropy-coded data is still found by the re-parse.
    out = j.output
    cut = start + length
    bad = out[:cut] + b"\xff\xfe\x00\x07hello" + out[cut:]
    assert jpeg.check_clean(bad, known_runs=j.scan_runs)
    assert jpeg.check_clean(out + b"tail", known_runs=j.scan_runs)


def test_engine_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    from clinvault_scrub.engine.record import engine_version

    assert engine_version() == version("clinvault-scrub")


def test_engine_records_compare_and_print_by_every_field() -> None:
    """The engine's records are __slots__ classes (no dataclasses import on the care path)."""
    a, b = png.PngScrub(b"x"), png.PngScrub(b"x")
    assert a == b
    b.width = 3  # a field of the base class
    assert a != b
    assert "width=0" in repr(a)
    assert "orientation=None" in repr(a)
    c = pickle.loads(pickle.dumps(b))  # noqa: S301 - our own bytes: a process pool does this
    assert c == b


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_keeps_orientation_alone(orientation: int, exiftool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A PNG's eXIf Orientation is kept in a minimal eXIf, as for JPEG and WebP: the rest of
    it (GPS, serials, dates) goes, and the picture is not shown sideways after a care scrub."""
    buf = io.BytesIO()
    corpus.photo(64, 40).save(buf, "PNG", exif=corpus.full_exif(orientation, with_thumbnail=False))
    result = scrub(buf.getvalue())
    assert result.output is not None, result.reason
    assert {"png.exif", "exif.gps"} <= set(result.removed)
    assert result.captured_at is not None
    shown = Image.open(io.BytesIO(result.output))
    assert dict(shown.getexif()) == ({} if orientation == 1 else {0x0112: orientation})
    assert np.array_equal(np.asarray(shown), np.asarray(Image.open(buf)))
    path = tmp_path / "out.png"
    path.write_bytes(result.output)
    tags = exiftool(path)
    assert [k for k in tags if k.startswith(("IFD0:", "ExifIFD:", "GPS:", "IFD1:"))] == (
        [] if orientation == 1 else ["IFD0:Orientation"]
    )
    assert b"CANARY" not in result.output
    assert scrub(result.output).removed == []  # a clean output scrubs to itself


def test_a_dng_raw_file_is_refused_not_scrubbed_as_its_preview() -> None:
    from PIL import TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[50706] = bytes([1, 4, 0, 0])  # DNGVersion
    info.tagtype[50706] = 1
    buf = io.BytesIO()
    corpus.photo(64, 48).save(buf, "TIFF", tiffinfo=info)
    for profile in (Profile.CARE, Profile.DEIDENTIFY):
        result = scrub(buf.getvalue(), profile)
        assert (result.status.value, result.reason) == (
            "rejected",
            "unsupported file type: Adobe DNG (RAW)",
        )
    plain = io.BytesIO()
    corpus.photo(64, 48).save(plain, "TIFF")
    assert scrub(plain.getvalue()).ok  # a TIFF without the tag is scrubbed


def test_heif_the_rewrite_does_not_handle_is_re_encoded_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from clinvault_scrub.engine import heif

    def unsupported(data: bytes, *, max_pixels: int) -> None:
        raise heif.HeifUnsupported(heif.SEI)

    monkeypatch.setattr(heif, "scrub_heif", unsupported)
    result = scrub(corpus.leaky_heif())
    assert result.ok, result.reason
    assert result.reencoded
    assert "container rewritten (pixels re-encoded)" in result.removed
    assert b"CANARY" not in (result.output or b"")
