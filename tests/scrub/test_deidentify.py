"""Deidentify profile: faces, caller and keep regions, barcodes, burned-in text, orientation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scrub_corpus as corpus
from PIL import Image, ImageDraw, ImageFont, ImageOps
from skimage import data as skdata

from clinvault_scrub import Hints, Profile, Region, scrub
from clinvault_scrub.engine import faces

# The astronaut's face in scikit-image's 512x512 picture (checked by hand).
FACE = (180, 55, 270, 180)


def _jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _decode(out: bytes | None) -> np.ndarray:
    """The output's pixels as a viewer shows them (its Orientation tag applied)."""
    assert out is not None
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(out)))
    return np.asarray(shown.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def test_face_on_real_photo_is_redacted(astronaut: Image.Image) -> None:
    result = scrub(_jpeg(astronaut), Profile.DEIDENTIFY)
    assert result.ok, result.reason
    assert result.faces_redacted >= 1
    x1, y1, x2, y2 = FACE
    px = _decode(result.output)
    assert px[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20].max() < 40  # solid fill (JPEG noise aside)
    was_dark = np.asarray(astronaut).max(axis=2) < 10
    newly_black = (px.max(axis=2) < 10) & ~was_dark
    assert newly_black.mean() < 0.15  # redaction is local: most of the picture is still there
    # The detector itself no longer sees a confident face in the output.
    assert all(score < faces.CONFIDENT for *_, score in faces.detect(px.astype(np.uint8)))
    assert result.record["profile"] == "deidentify"
    face_findings = [f for f in result.findings if f.kind == "face"]
    assert face_findings[0].score is not None
    assert face_findings[0].score > 0.5


def test_output_has_no_metadata_and_no_timestamps(astronaut: Image.Image) -> None:
    data = _jpeg(astronaut, exif=corpus.full_exif(1, with_thumbnail=False))
    result = scrub(data, Profile.DEIDENTIFY, read_text=False)
    assert result.ok, result.reason
    assert result.captured_at is None
    assert result.output is not None
    assert b"Exif" not in result.output
    assert b"CANARY" not in result.output
    assert "timestamps" in result.removed


def test_keep_region_is_never_covered_and_conflict_needs_review(astronaut: Image.Image) -> None:
    keep = Region(200, 100, 40, 40)
    result = scrub(_jpeg(astronaut), Profile.DEIDENTIFY, keep=[keep], read_text=False)
    assert result.ok, result.reason
    assert result.needs_review
    assert any(f.kind == "conflict" for f in result.findings)
    px = _decode(result.output)
    original = np.asarray(astronaut).astype(int)
    kept = px[105:135, 205:235]
    assert np.abs(kept - original[105:135, 205:235]).mean() < 12  # visible, only JPEG loss
    assert px[60:90, 185:195].max() < 40  # the rest of the face is still covered


def test_caller_regions_are_redacted_with_label(astronaut: Image.Image) -> None:
    result = scrub(
        _jpeg(astronaut),
        Profile.DEIDENTIFY,
        redactions=[Region(10, 300, 100, 80, "tattoo")],
        read_text=False,
    )
    assert result.ok, result.reason
    px = _decode(result.output)
    assert px[305:375, 15:105].max() < 40
    regions = [f for f in result.findings if f.kind == "region"]
    assert regions[0].label == "tattoo"
    assert regions[0].redacted


def test_barcode_is_found_and_redacted() -> None:
    import zxingcpp

    code = zxingcpp.create_barcode("MRN0042", zxingcpp.BarcodeFormat.QRCode)
    qr = Image.fromarray(np.asarray(zxingcpp.write_barcode_to_image(code, scale=8)))
    assert 150 <= qr.width <= 250  # about the size of a wristband's code in this frame
    canvas = Image.new("RGB", (640, 480), (200, 180, 160))
    canvas.paste(qr.convert("RGB"), (300, 150))
    result = scrub(_jpeg(canvas), Profile.DEIDENTIFY, read_text=False)
    assert result.ok, result.reason
    boxes = [f for f in result.findings if f.kind == "barcode"]
    assert boxes
    assert boxes[0].redacted
    px = _decode(result.output)
    x1, y1, x2, y2 = boxes[0].box or (0, 0, 0, 0)
    assert px[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5].max() < 40
    assert not zxingcpp.read_barcodes(px.astype(np.uint8))


def test_burned_in_text_and_identifier_hints() -> None:
    canvas = Image.new("RGB", (900, 500), (235, 225, 215))
    font = ImageFont.truetype("DejaVuSans.ttf", 48)
    ImageDraw.Draw(canvas).text((60, 380), "MRN 48213377", fill=(10, 10, 10), font=font)
    result = scrub(_jpeg(canvas), Profile.DEIDENTIFY, hints=Hints(record_number="48213377"))
    assert result.ok, result.reason
    assert any(f.kind == "identifier" and f.redacted for f in result.findings)
    assert result.needs_review
    px = _decode(result.output)
    assert px[390:430, 70:400].mean() < 60  # the text line is filled
    assert b"48213377" not in (result.output or b"")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_applied_before_detection(orientation: int, astronaut: Image.Image) -> None:
    # Store the picture so that, once the tag is applied, it shows upright.
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = astronaut.transpose(inverse) if inverse is not None else astronaut
    data = _jpeg(stored, exif=corpus.full_exif(orientation, with_thumbnail=False))
    result = scrub(data, Profile.DEIDENTIFY, read_text=False)
    assert result.ok, result.reason
    px = _decode(result.output)
    assert px.shape[:2] == (512, 512)
    assert result.faces_redacted >= 1
    x1, y1, x2, y2 = FACE
    assert px[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20].max() < 40  # same place as the upright picture
    # A JPEG keeps its pixels as stored with a minimal Orientation tag, like a care scrub.
    shown_as_stored = Image.open(io.BytesIO(result.output or b""))
    assert shown_as_stored.size == stored.size
    assert shown_as_stored.getexif().get(0x0112, 1) == orientation
    assert "orientation (applied to pixels)" not in result.removed


@pytest.mark.parametrize("orientation", range(2, 9))
def test_orientation_is_applied_to_lossless_output(orientation: int) -> None:
    """A PNG cannot keep the tag through our scrub, so its pixels are turned to display."""
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = io.BytesIO()
    stored.save(tagged, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(tagged.getvalue()))))
    result = scrub(tagged.getvalue(), Profile.DEIDENTIFY, detect_faces=False, read_text=False)
    assert result.ok, result.reason
    assert result.output_format == "png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.output or b""))), expected)
    assert "orientation (applied to pixels)" in result.removed


def test_missing_detector_is_flagged_never_skipped_silently(astronaut: Image.Image) -> None:
    result = scrub(_jpeg(astronaut), Profile.DEIDENTIFY, detect_faces=False, read_text=False)
    assert result.ok
    assert result.needs_review
    assert any(f.kind == "detector_unavailable" and f.label == "faces" for f in result.findings)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_is_the_displayed_box_in_stored_pixels(orientation: int) -> None:
    """Filling stored_box() of the stored image fills exactly the box once displayed."""
    from clinvault_scrub.engine.decode import _transpose, stored_box

    stored = Image.new("L", (97, 61), 255)
    displayed_size = _transpose(stored, orientation).size
    box = (5, 7, 31, 20)  # x1, y1, x2, y2 in displayed pixels
    stored.paste(0, stored_box(box, stored.size, orientation))
    shown = np.asarray(_transpose(stored, orientation))
    expected = np.full(displayed_size[::-1], 255, dtype=np.uint8)
    expected[7:20, 5:31] = 0
    assert np.array_equal(shown, expected)


def test_keep_region_cuts_an_automatic_fill_into_pieces() -> None:
    from clinvault_scrub.engine.deidentify import subtract

    pieces = subtract((0, 0, 10, 10), (3, 3, 6, 6))
    covered = np.zeros((10, 10), dtype=int)
    for x1, y1, x2, y2 in pieces:
        covered[y1:y2, x1:x2] += 1
    assert covered[3:6, 3:6].sum() == 0
    assert covered.sum() == 100 - 9  # the rest...
    assert covered.max() == 1  # ...each pixel once
    assert subtract((0, 0, 4, 4), (5, 5, 8, 8)) == [(0, 0, 4, 4)]


def test_face_model_takes_only_the_image_as_input() -> None:
    """Weights listed as graph inputs would stop onnxruntime folding and fusing them (2x slower)."""
    session = faces._session()
    assert [i.name for i in session.get_inputs()] == ["input.1"]
    assert session.get_inputs()[0].shape[2:] == ["H", "W"]


@pytest.mark.parametrize(
    "kind",
    ["jpeg", "png", "webp", "gif", "tiff", "heif"],
)
def test_every_format_deidentifies_without_a_canary(kind: str) -> None:
    """Each leaky corpus file (EXIF, XMP, text chunks, comments, an ICC profile with free
    text...) comes out de-identified, none of its canaries anywhere in the output bytes, and
    a colour profile the input had is kept, cleaned."""
    data = {
        "jpeg": corpus.leaky_jpeg,
        "png": corpus.leaky_png,
        "webp": corpus.leaky_webp,
        "gif": corpus.leaky_gif,
        "tiff": corpus.leaky_tiff,
        "heif": corpus.leaky_heif,
    }[kind]()
    result = scrub(data, Profile.DEIDENTIFY, read_text=False)
    assert result.ok, result.reason
    out = result.output
    assert out is not None
    searched = out + (corpus.inflate_all(out) if out.startswith(b"\x89PNG") else b"")
    for form in corpus.canary_forms("CANARY"):
        assert form.lower() not in searched.lower()
    had_icc = Image.open(io.BytesIO(data)).info.get("icc_profile")
    if had_icc:
        kept = Image.open(io.BytesIO(out)).info.get("icc_profile")
        assert kept, "the colour profile was dropped"
        assert b"CANARY" not in kept
        assert kept[24:36] == bytes(12)  # no timestamp, not even the profile's creation date


@pytest.mark.parametrize("orientation", [1, 6])
def test_every_page_of_a_tiff_is_deidentified(orientation: int, astronaut: Image.Image) -> None:
    """A multi-page TIFF (a series, a scanned referral) stays one: each page is searched and
    redacted on its own, its findings say which page, caller regions apply to every page."""
    pages = [corpus.photo(320, 240), astronaut.crop((0, 0, 512, 400)), corpus.photo(200, 100)]
    buf = io.BytesIO()
    pages[0].save(
        buf,
        "TIFF",
        save_all=True,
        append_images=pages[1:],
        tiffinfo={274: orientation, 270: corpus.canary("description")},
    )
    result = scrub(
        buf.getvalue(),
        Profile.DEIDENTIFY,
        redactions=[Region(0, 0, 20, 10, "wristband")],
        read_text=False,
    )
    assert result.ok, result.reason
    assert result.output_format == "tiff"
    assert "extra frames/pages" not in result.removed
    out = Image.open(io.BytesIO(result.output or b""))
    assert out.n_frames == 3
    faces = [f for f in result.findings if f.kind == "face"]
    assert faces
    assert {f.page for f in faces} == {1}  # only the astronaut's page has a face
    assert sorted(f.page for f in result.findings if f.kind == "region") == [0, 1, 2]
    # One "text detection disabled" finding for the file, not one a page.
    assert len([f for f in result.findings if f.kind == "detector_unavailable"]) == 1
    for index, page in enumerate(pages):
        out.seek(index)
        shown = np.asarray(out.convert("RGB")).astype(int)
        w, h = page.size
        assert out.size == ((h, w) if orientation == 6 else (w, h))  # turned as displayed
        assert out.tag_v2.get(274, 1) == 1
        assert (shown[:10, :20] == 0).all()  # the caller's region, on every page
        black = int((shown.sum(axis=2) == 0).sum())
        if index == 1:
            x1, y1, x2, y2 = next(f.box for f in faces if f.page == 1)
            assert (shown[y1:y2, x1:x2] == 0).all()
            assert black >= (x2 - x1) * (y2 - y1)
        else:
            assert black <= 20 * 10 + 50  # nothing but the caller's region
    assert b"CANARY" not in (result.output or b"")


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_every_frame_of_an_animation_is_deidentified(fmt: str, astronaut: Image.Image) -> None:
    """An animation (a gait recording, say) stays one, of its format: each frame searched and
    redacted on its own, frame times and looping kept, pixels elsewhere unchanged (within a
    lossy WebP's error), the colour profile cleaned (GIF has none)."""
    plain = Image.new("RGB", (256, 200), (40, 120, 200))
    face = astronaut.resize((256, 256)).crop((0, 0, 256, 200))
    frames = [plain, face, plain]
    extra: dict[str, object] = {"lossless": True} if fmt == "webp" else {}
    if fmt != "gif":
        extra["icc_profile"] = corpus.icc_with_text("sRGB IEC61966-2.1", corpus.canary("anim"))
    buf = io.BytesIO()
    frames[0].save(
        buf,
        fmt.upper(),
        save_all=True,
        append_images=frames[1:],
        duration=[80, 120, 160],
        loop=0,
        **extra,
    )
    result = scrub(buf.getvalue(), Profile.DEIDENTIFY, read_text=False)
    assert result.ok, result.reason
    assert result.output_format == fmt
    assert "extra frames/pages" not in result.removed
    faces = [f for f in result.findings if f.kind == "face"]
    assert faces
    assert {f.page for f in faces} == {1}
    assert b"CANARY" not in (result.output or b"")
    out = Image.open(io.BytesIO(result.output or b""))
    assert out.n_frames == 3
    assert out.info.get("loop") == 0
    assert bool(out.info.get("icc_profile")) == (fmt != "gif")
    source = Image.open(buf)
    for index in range(3):
        out.seek(index)
        out.load()  # a WebP frame has its duration once loaded
        source.seek(index)
        assert out.info.get("duration") == [80, 120, 160][index]
        shown = np.asarray(out.convert("RGB")).astype(int)
        before = np.asarray(source.convert("RGB")).astype(int)
        if index == 1:
            x1, y1, x2, y2 = faces[0].box
            assert shown[y1:y2, x1:x2].max() <= (40 if fmt == "webp" else 0)  # filled
        else:
            assert np.abs(shown - before).max() <= (12 if fmt == "webp" else 0)


def test_an_animation_too_long_to_search_frame_by_frame_is_refused() -> None:
    from clinvault_scrub.engine.decode import MAX_ANIMATION_FRAMES

    frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(MAX_ANIMATION_FRAMES + 1)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    result = scrub(buf.getvalue(), Profile.DEIDENTIFY, read_text=False)
    assert not result.ok
    assert result.reason == (
        f"animation too long to de-identify frame by frame ({MAX_ANIMATION_FRAMES + 1} "
        f"frames, at most {MAX_ANIMATION_FRAMES})"
    )


def test_output_is_re_encoded_even_with_nothing_to_fill() -> None:
    """DESIGN.md: a de-identified output is re-encoded. Bytes hidden in a JPEG's image data
    (after its last block, where decoders skip them) pass through a care scrub, which copies
    the image data as it is, but not through deidentify, even when nothing is redacted."""
    hidden = corpus.canary("inscan").encode()
    plain = _jpeg(corpus.photo(320, 240))
    data = plain[:-2] + hidden + plain[-2:]  # before EOI, inside the entropy-coded data
    care = scrub(data, Profile.CARE)
    assert care.output is not None
    assert hidden in care.output
    result = scrub(data, Profile.DEIDENTIFY)
    assert result.ok, result.reason
    assert not [f for f in result.findings if f.redacted]
    assert result.record["reencoded"] is True
    assert result.output is not None
    assert hidden not in result.output


def test_a_caller_region_outside_the_image_is_flagged_not_dropped_silently() -> None:
    photo = corpus.photo(120, 80)
    result = scrub(
        _jpeg(photo),
        Profile.DEIDENTIFY,
        redactions=[Region(5000, 5000, 100, 100, "tattoo"), Region(100, 60, 50, 50, "scar")],
        detect_faces=False,
        read_text=False,
    )
    assert result.ok, result.reason
    outside, clipped = (f for f in result.findings if f.kind == "region")
    assert (outside.box, outside.redacted, outside.note) == (
        (5000, 5000, 5100, 5100),
        False,
        "outside the image",
    )
    assert (clipped.box, clipped.redacted) == ((100, 60, 120, 80), True)  # cut to the image
    assert "a caller region lies outside the image" in result.review_reasons
    assert result.needs_review


def test_the_record_names_only_the_searches_that_ran() -> None:
    data = _jpeg(corpus.photo(64, 48))
    ran = scrub(data, Profile.DEIDENTIFY).record["checks"]
    assert {"faces", "caller_regions", "barcodes", "ocr"} <= set(ran)
    skipped = scrub(data, Profile.DEIDENTIFY, detect_faces=False, read_text=False)
    assert "faces" not in skipped.record["checks"]
    assert "ocr" not in skipped.record["checks"]
    assert {"caller_regions", "barcodes"} <= set(skipped.record["checks"])


def test_timestamps_are_reported_removed_only_when_there_were_some() -> None:
    plain = scrub(_jpeg(corpus.photo(64, 48)), Profile.DEIDENTIFY, read_text=False)
    assert plain.ok, plain.reason
    assert "timestamps" not in plain.removed
    dated = _jpeg(corpus.photo(64, 48), exif=corpus.full_exif(1, with_thumbnail=False))
    assert "timestamps" in scrub(dated, Profile.DEIDENTIFY, read_text=False).removed
