"""The HEIF container rewrite: coded bytes kept, pixels identical, everything else gone."""

from __future__ import annotations

import io
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import piexif
import pillow_heif
import pytest
import scrub_corpus as corpus
from PIL import Image

from clinvault_scrub.engine.heif import NESTED, UNSUPPORTED_REASONS, HeifUnsupported, scrub_heif
from clinvault_scrub.engine.model import Rejected
from conftest import SAMPLES

MAX_PIXELS = 120_000_000
HEIC_SAMPLES = sorted(
    p for p in (SAMPLES / "heic").glob("*") if p.suffix.lower() in (".heic", ".heif")
)
CANARY = corpus.canary("gps")  # CANARYGPSXQZ
ALPHA_URN = b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha"
DEPTH_URN = b"urn:mpeg:hevc:2015:auxid:2"


def _decode(data: bytes) -> np.ndarray:
    """The primary image's pixels as pillow_heif shows them (irot/imir/clap applied)."""
    heif = pillow_heif.open_heif(io.BytesIO(data))
    return np.asarray(heif[heif.primary_index])


def _leaks(data: bytes, text: str) -> bool:
    return any(form in data for form in corpus.canary_forms(text))


def _heif(im: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    pillow_heif.from_pillow(im).save(buf, quality=80, **kwargs)
    return buf.getvalue()


def _exif() -> bytes:
    return piexif.dump(
        {
            "0th": {
                piexif.ImageIFD.Make: b"ClinCam",
                piexif.ImageIFD.Model: CANARY.encode(),
                piexif.ImageIFD.DateTime: b"2024:05:06 07:08:09",
            },
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2024:05:06 07:08:09"},
            "GPS": {
                piexif.GPSIFD.GPSLatitudeRef: b"N",
                piexif.GPSIFD.GPSLatitude: ((52, 1), (31, 1), (1234, 100)),
                piexif.GPSIFD.GPSProcessingMethod: b"ASCII\x00\x00\x00" + CANARY.encode(),
            },
        }
    )


# --- a small HEIF writer, to make files with items pillow_heif cannot write -----------------


def _box(btype: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), btype) + body


def _full(btype: bytes, body: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(btype, struct.pack(">I", (version << 24) | flags) + body)


def _children(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    out = {}
    while start < end:
        size, btype = struct.unpack_from(">I4s", data, start)
        out.setdefault(btype, (start + 8, start + size))
        start += size
    return out


def _coded(im: Image.Image) -> tuple[bytes, bytes]:
    """(hvcC box, coded data) of a single-image HEIF that libheif writes for `im`."""
    data = _heif(im)
    top = _children(data, 0, len(data))
    meta = _children(data, top[b"meta"][0] + 4, top[b"meta"][1])
    ipco_at = _children(data, *meta[b"iprp"])[b"ipco"]
    hvcc_body = _children(data, *ipco_at)[b"hvcC"]
    hvcc = data[hvcc_body[0] - 8 : hvcc_body[1]]
    version = data[meta[b"iloc"][0]]
    pos = meta[b"iloc"][0] + 4  # 4-byte offsets and lengths, one item, one extent
    assert data[pos] == 0x44
    base_size = data[pos + 1] >> 4
    pos += 8 + (2 if version else 0)  # to the base offset
    base = int.from_bytes(data[pos : pos + base_size], "big")
    offset, length = struct.unpack_from(">II", data, pos + base_size + 2)
    offset += base
    return hvcc, data[offset : offset + length]


def _ispe(w: int, h: int) -> bytes:
    return _full(b"ispe", struct.pack(">II", w, h))


def _auxc(urn: bytes) -> bytes:
    return _full(b"auxC", urn + b"\x00")


class Item(NamedTuple):
    id: int
    type: bytes
    data: bytes
    props: tuple[tuple[bytes, bool], ...] = ()
    content_type: bytes = b""
    name: bytes = b""


def _build(
    items: list[Item],
    refs: list[tuple[bytes, int, list[int]]],
    *,
    meta_extra: bytes = b"",
    top_extra: bytes = b"",
    brands: bytes = b"heicmif1",
) -> bytes:
    """A HEIF of these items (the first is primary), all data in one mdat."""
    props: list[bytes] = []
    ipma = b""
    for item in items:
        links = b""
        for prop, essential in item.props:
            if prop not in props:
                props.append(prop)
            links += bytes([(props.index(prop) + 1) | (0x80 if essential else 0)])
        ipma += struct.pack(">HB", item.id, len(item.props)) + links
    infe = b""
    for item in items:
        tail = item.content_type + b"\x00" if item.type == b"mime" else b""
        infe += _full(
            b"infe", struct.pack(">HH", item.id, 0) + item.type + item.name + b"\x00" + tail, 2
        )
    iref = b"".join(
        _box(t, struct.pack(">HH", src, len(to)) + b"".join(struct.pack(">H", i) for i in to))
        for t, src, to in refs
    )
    count = struct.pack(">I", len(items))
    head = (
        _full(b"hdlr", b"\x00" * 4 + b"pict" + b"\x00" * 12 + b"\x00")
        + _full(b"pitm", struct.pack(">H", items[0].id))
        + _full(b"iinf", struct.pack(">H", len(items)) + infe)
        + (_full(b"iref", iref) if refs else b"")
        + _box(b"iprp", _box(b"ipco", b"".join(props)) + _full(b"ipma", count + ipma))
        + meta_extra
    )
    ftyp = _box(b"ftyp", brands[:4] + b"\x00" * 4 + brands)
    iloc_size = 16 + 16 * len(items)
    payload = len(ftyp) + 12 + len(head) + iloc_size + len(top_extra) + 8
    iloc = b"\x44\x00" + struct.pack(">H", len(items))
    for item in items:
        iloc += struct.pack(">HHHHII", item.id, 0, 0, 1, payload, len(item.data))
        payload += len(item.data)
    meta = _full(b"meta", head + _full(b"iloc", iloc, 1))
    mdat = _box(b"mdat", b"".join(item.data for item in items))
    return ftyp + meta + top_extra + mdat


@pytest.fixture(scope="module")
def leaky() -> bytes:
    """A primary with everything the rewrite drops around it, each carrying the canary."""
    primary_hvcc, primary = _coded(corpus.photo(128, 96))
    thumb_hvcc, thumb = _coded(corpus.photo(64, 48, seed=2))
    mask_hvcc, mask = _coded(corpus.photo(128, 96, seed=3).convert("L"))
    # A prefix SEI array in the decoder configuration: user data unregistered (type 5).
    nal = b"\x4e\x01\x05" + bytes([16 + len(CANARY)]) + b"\x11" * 16 + CANARY.encode() + b"\x80"
    sei = bytes([0x80 | 39, 0, 1]) + struct.pack(">H", len(nal)) + nal
    arrays = bytes([primary_hvcc[30] + 1])
    hvcc_sei = _box(b"hvcC", primary_hvcc[8:30] + arrays + primary_hvcc[31:] + sei)
    tiff = _exif()
    udes = _full(b"udes", b"en\x00" + CANARY.encode() + b"\x00\x00\x00")
    unknown = _box(b"zzzz", CANARY.encode())
    size = (_ispe(128, 96), False)
    items = [
        Item(
            1,
            b"hvc1",
            primary,
            ((hvcc_sei, True), size, (udes, False), (unknown, False)),
            name=CANARY.encode(),
        ),
        Item(2, b"hvc1", thumb, ((thumb_hvcc, True), (_ispe(64, 48), False))),
        Item(3, b"hvc1", mask, ((mask_hvcc, True), size, (_auxc(DEPTH_URN), True))),
        Item(4, b"hvc1", thumb, ((thumb_hvcc, True), (_ispe(64, 48), False))),
        Item(5, b"Exif", struct.pack(">I", 6) + tiff),  # piexif wrote "Exif\0\0"
        Item(
            6,
            b"mime",
            b"<x:xmpmeta>" + CANARY.encode() + b"</x:xmpmeta>",
            content_type=b"application/rdf+xml",
        ),
        Item(7, b"mime", CANARY.encode("utf-16-le"), content_type=b"text/plain"),
    ]
    refs = [
        (b"thmb", 2, [1]),
        (b"auxl", 3, [1]),
        (b"cdsc", 5, [1]),
        (b"cdsc", 6, [1]),
        (b"cdsc", 7, [1]),
    ]
    uuid = _box(b"uuid", b"\x11" * 16 + CANARY.encode())
    return _build(
        items,
        refs,
        meta_extra=_box(b"xml ", CANARY.encode()),
        top_extra=uuid + _box(b"free", CANARY.encode()),
    )


# --- 1: the sample photos --------------------------------------------------------------------


@pytest.mark.skipif(not HEIC_SAMPLES, reason=f"no HEIC samples in {SAMPLES / 'heic'}")
@pytest.mark.parametrize("path", HEIC_SAMPLES, ids=lambda p: p.name)
def test_sample_keeps_pixels_and_drops_metadata(
    path: Path, exiftool: Callable[[Path], dict[str, object]], tmp_path: Path
) -> None:
    data = path.read_bytes()
    try:
        result = scrub_heif(data, max_pixels=MAX_PIXELS)
    except HeifUnsupported as exc:
        unsupported = str(exc)
    else:
        unsupported = ""
    if unsupported:  # the caller re-encodes; the reason must be one it knows
        assert unsupported in UNSUPPORTED_REASONS
        return
    assert np.array_equal(_decode(result.output), _decode(data))
    heif = pillow_heif.open_heif(io.BytesIO(result.output))
    assert len(heif) == 1
    for key in ("exif", "xmp", "metadata", "thumbnails", "depth_images"):
        assert not heif[0].info.get(key), key
    out = tmp_path / "out.heic"
    out.write_bytes(result.output)
    tags = exiftool(out)
    leaked = [
        key
        for key in tags
        if key.startswith("GPS:")
        or key.split(":")[-1] in ("Make", "Model", "GPSLatitude", "GPSPosition")
        # The ICC header's date is when the profile was made (Apple's is from 2017); care
        # scrubs keep it in every format.
        or ("DateTime" in key and key != "ICC-header:ProfileDateTime")
    ]
    assert leaked == []
    assert (result.width, result.height) == heif[0].size
    again = scrub_heif(result.output, max_pixels=MAX_PIXELS)
    assert again.output == result.output
    assert again.removed == []


# --- 2: generated files with every kind of item the rewrite drops ----------------------------


def test_pillow_heif_file_loses_exif_and_xmp() -> None:
    im = corpus.photo(160, 120)
    data = _heif(im, exif=_exif(), xmp=b"<x:xmpmeta>" + CANARY.encode() + b"</x:xmpmeta>")
    assert _leaks(data, CANARY)
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert not _leaks(result.output, CANARY)
    assert not _leaks(result.output, "ClinCam")
    assert result.removed == ["exif", "exif.device", "exif.gps", "exif.timestamps", "xmp"]
    assert result.captured_at is not None
    assert result.captured_at.isoformat() == "2024-05-06T07:08:09+00:00"
    assert (result.width, result.height) == (160, 120)
    assert np.array_equal(_decode(result.output), _decode(data))


def test_thumbnail_depth_extra_images_and_text_are_dropped(leaky: bytes) -> None:
    assert _leaks(leaky, CANARY)
    before = pillow_heif.open_heif(io.BytesIO(leaky))
    assert before.info["thumbnails"]  # the writer made what libheif calls a thumbnail
    result = scrub_heif(leaky, max_pixels=MAX_PIXELS)
    assert not _leaks(result.output, CANARY)
    assert result.removed == [
        "heif.metadata",  # uuid, then the xml box in meta
        "exif",
        "exif.device",
        "exif.gps",
        "exif.timestamps",
        "heif.thumbnail",
        "heif.depth",
        "heif.extra_images",
        "xmp",
    ]
    assert result.captured_at is not None
    after = pillow_heif.open_heif(io.BytesIO(result.output))
    assert len(after) == 1
    for key in ("exif", "xmp", "metadata", "thumbnails", "depth_images"):
        assert not after[0].info.get(key), key
    assert not after[0].info.get("aux")
    assert np.array_equal(_decode(result.output), _decode(leaky))
    again = scrub_heif(result.output, max_pixels=MAX_PIXELS)
    assert (again.output, again.removed) == (result.output, [])


def test_coded_image_bytes_are_copied_exactly(leaky: bytes) -> None:
    _, coded = _coded(corpus.photo(128, 96))
    result = scrub_heif(leaky, max_pixels=MAX_PIXELS)
    assert coded in result.output
    _, thumb = _coded(corpus.photo(64, 48, seed=2))
    assert thumb not in result.output


def test_alpha_plane_is_kept() -> None:
    im = corpus.photo(96, 64).convert("RGBA")
    alpha = np.zeros((64, 96), dtype=np.uint8)
    alpha[:, 48:] = 255
    im.putalpha(Image.fromarray(alpha))
    data = _heif(im)
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert result.removed == []
    out = pillow_heif.open_heif(io.BytesIO(result.output))
    assert out.mode == "RGBA"
    assert np.array_equal(_decode(result.output), _decode(data))


def _two_images_and_an_alpha_plane(w: int, h: int) -> tuple[list[Item], bytes]:
    """Items 1 and 2 (the same picture) and 3, an alpha plane; and the plane's coded bytes."""
    hvcc, coded = _coded(corpus.photo(w, h))
    mask_hvcc, mask = _coded(corpus.photo(w, h, seed=3).convert("L"))
    base = ((hvcc, True), (_ispe(w, h), False))
    alpha = ((mask_hvcc, True), (_ispe(w, h), False), (_auxc(ALPHA_URN), True))
    items = [Item(1, b"hvc1", coded, base), Item(2, b"hvc1", coded, base)]
    return [*items, Item(3, b"hvc1", mask, alpha)], mask


def test_alpha_plane_shared_with_a_dropped_image_stays_the_primary_alpha() -> None:
    items, _ = _two_images_and_an_alpha_plane(128, 96)
    data = _build(items, [(b"auxl", 3, [1, 2])])
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert result.removed == ["heif.extra_images"]
    out = pillow_heif.open_heif(io.BytesIO(result.output))
    assert len(out) == 1
    assert out.mode == "RGBA"
    assert np.array_equal(_decode(result.output), _decode(data))


def test_other_auxiliary_image_with_alpha_urn_of_another_item_is_not_kept() -> None:
    items, mask = _two_images_and_an_alpha_plane(64, 48)
    result = scrub_heif(_build(items, [(b"auxl", 3, [2])]), max_pixels=MAX_PIXELS)
    assert result.removed == ["heif.extra_images"]
    assert mask not in result.output


def test_rotated_primary_keeps_its_transform() -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    props = ((hvcc, True), (_ispe(128, 96), False), (_box(b"irot", b"\x01"), True))
    data = _build([Item(1, b"hvc1", coded, props)], [])
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert (result.width, result.height) == (96, 128)
    shown = _decode(result.output)
    assert shown.shape[:2] == (128, 96)
    assert np.array_equal(shown, _decode(data))


def _grid(rows: int, columns: int, width: int, height: int) -> bytes:
    return struct.pack(">BBBBHH", 0, 0, rows - 1, columns - 1, width, height)


def test_grid_keeps_its_tiles_in_order() -> None:
    hvcc, left = _coded(corpus.photo(128, 96, seed=4))
    _, right = _coded(corpus.photo(128, 96, seed=5))
    tile = ((hvcc, True), (_ispe(128, 96), False))
    items = [
        Item(10, b"grid", _grid(1, 2, 256, 96), ((_ispe(256, 96), False),)),
        Item(11, b"hvc1", left, tile),
        Item(12, b"hvc1", right, tile),
        Item(13, b"hvc1", left, tile),  # a burst frame, say
    ]
    data = _build(items, [(b"dimg", 10, [11, 12])])
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert result.removed == ["heif.extra_images"]
    assert (result.width, result.height) == (256, 96)
    assert result.output.index(left) < result.output.index(right)
    assert result.output.count(left) == 1
    shown = _decode(result.output)
    assert shown.shape[:2] == (96, 256)
    assert np.array_equal(shown, _decode(data))
    assert scrub_heif(result.output, max_pixels=MAX_PIXELS).output == result.output


@pytest.mark.parametrize(
    ("grid", "error"),
    [
        (_grid(1, 2, 256, 96) + CANARY.encode(), Rejected),  # room for text after the fields
        (_grid(2, 2, 256, 192), Rejected),  # four tiles declared, two given
    ],
)
def test_grid_must_be_exactly_its_fields(grid: bytes, error: type[Exception]) -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    tile = ((hvcc, True), (_ispe(128, 96), False))
    items = [
        Item(1, b"grid", grid, ((_ispe(256, 96), False),)),
        Item(2, b"hvc1", coded, tile),
        Item(3, b"hvc1", coded, tile),
    ]
    with pytest.raises(error):
        scrub_heif(_build(items, [(b"dimg", 1, [2, 3])]), max_pixels=MAX_PIXELS)


def test_tiles_adding_up_far_beyond_the_image_are_refused() -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    tile = ((hvcc, True), (_ispe(128, 96), False))
    tiles = [Item(2 + n, b"hvc1", coded, tile) for n in range(6)]
    grid = Item(1, b"grid", _grid(2, 3, 128, 96), ((_ispe(128, 96), False),))
    data = _build([grid, *tiles], [(b"dimg", 1, [t.id for t in tiles])])
    assert scrub_heif(data, max_pixels=2 * 128 * 96).width == 128
    with pytest.raises(Rejected, match="pixel limit"):
        scrub_heif(data, max_pixels=128 * 96)


def test_gain_map_and_its_brand_are_dropped() -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    props = ((hvcc, True), (_ispe(128, 96), False))
    items = [
        Item(1, b"hvc1", coded, props),
        Item(2, b"hvc1", coded, props),
        Item(3, b"tmap", b"\x00" * 8, ((_ispe(128, 96), False),)),
    ]
    data = _build(items, [(b"dimg", 3, [1, 2])], brands=b"heicmif1tmap")
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert result.removed == ["heif.extra_images"]
    assert result.output[8:24] == b"heic\x00\x00\x00\x00heicmif1"
    assert b"tmap" not in result.output
    assert np.array_equal(_decode(result.output), _decode(data))


def test_grid_of_grids_falls_back_to_reencode() -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    tile = ((hvcc, True), (_ispe(128, 96), False))
    items = [
        Item(1, b"grid", _grid(1, 1, 128, 96), ((_ispe(128, 96), False),)),
        Item(2, b"grid", _grid(1, 1, 128, 96), ((_ispe(128, 96), False),)),
        Item(3, b"hvc1", coded, tile),
    ]
    with pytest.raises(HeifUnsupported, match=NESTED):
        scrub_heif(_build(items, [(b"dimg", 1, [2]), (b"dimg", 2, [3])]), max_pixels=MAX_PIXELS)


def test_data_reference_naming_a_place_is_dropped_and_reported() -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    url = _full(b"url ", b"https://example.org/" + CANARY.encode() + b"\x00")
    dinf = _box(b"dinf", _full(b"dref", b"\x00\x00\x00\x01" + url))
    data = _build(
        [Item(1, b"hvc1", coded, ((hvcc, True), (_ispe(128, 96), False)))], [], meta_extra=dinf
    )
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert result.removed == ["heif.metadata"]
    assert not _leaks(result.output, CANARY)


def test_unknown_essential_property_falls_back_to_reencode() -> None:
    hvcc, coded = _coded(corpus.photo(64, 48))
    props = ((hvcc, True), (_ispe(64, 48), False), (_box(b"zzzz", b"\x00"), True))
    with pytest.raises(HeifUnsupported) as caught:
        scrub_heif(_build([Item(1, b"hvc1", coded, props)], []), max_pixels=MAX_PIXELS)
    assert str(caught.value) in UNSUPPORTED_REASONS


def test_image_sequence_falls_back_to_reencode() -> None:
    data = _heif(corpus.photo(64, 48)) + _box(b"moov", b"")
    with pytest.raises(HeifUnsupported, match="image sequence"):
        scrub_heif(data, max_pixels=MAX_PIXELS)


def test_fixed_size_property_with_room_to_spare_is_cut() -> None:
    hvcc, coded = _coded(corpus.photo(128, 96))
    padded = _full(b"ispe", struct.pack(">II", 128, 96) + CANARY.encode())
    data = _build([Item(1, b"hvc1", coded, ((hvcc, True), (padded, False)))], [])
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert not _leaks(result.output, CANARY)
    assert result.removed == ["heif.metadata"]
    assert np.array_equal(_decode(result.output), _decode(data))


def test_pixel_limit() -> None:
    data = _heif(corpus.photo(128, 96))
    assert scrub_heif(data, max_pixels=128 * 96).width == 128
    with pytest.raises(Rejected, match="pixel limit"):
        scrub_heif(data, max_pixels=128 * 96 - 1)


# --- 3: hostile input ------------------------------------------------------------------------


def _refused(data: bytes) -> BaseException | None:
    try:
        scrub_heif(data, max_pixels=MAX_PIXELS)
    except (Rejected, HeifUnsupported) as exc:
        return exc
    return None


def test_truncated_files_are_refused() -> None:
    data = _heif(corpus.photo(64, 48), exif=_exif())
    started = time.perf_counter()
    for end in range(len(data) - 1):
        assert _refused(data[:end]) is not None, end
    assert time.perf_counter() - started < 5


def test_random_damage_never_escapes_as_another_exception(leaky: bytes) -> None:
    rng = random.Random(7)
    for _ in range(500):
        damaged = bytearray(leaky)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(600)] = rng.randrange(256)  # the boxes, not the pixels
        _refused(bytes(damaged))  # any other exception fails the test


def test_huge_box_sizes_are_refused() -> None:
    data = bytearray(_heif(corpus.photo(64, 48)))
    meta_at = struct.unpack_from(">I", data, 0)[0]
    assert data[meta_at + 4 : meta_at + 8] == b"meta"
    huge = bytes(data)
    huge = huge[:meta_at] + struct.pack(">I", 0xFFFFFFF0) + huge[meta_at + 4 :]
    assert isinstance(_refused(huge), Rejected)
    large = huge[:meta_at] + struct.pack(">I4sQ", 1, b"meta", 2**63) + huge[meta_at + 8 :]
    assert isinstance(_refused(large), Rejected)
    tiny = huge[:meta_at] + struct.pack(">I", 3) + huge[meta_at + 4 :]
    assert isinstance(_refused(tiny), Rejected)


def test_extent_beyond_the_file_is_refused() -> None:
    hvcc, coded = _coded(corpus.photo(64, 48))
    data = _build([Item(1, b"hvc1", coded, ((hvcc, True), (_ispe(64, 48), False)))], [])
    extent = struct.pack(">II", data.index(coded), len(coded))
    assert data.count(extent) == 1
    for offset, length in ((data.index(coded), len(coded) + 1), (2**32 - 8, 16)):
        beyond = data.replace(extent, struct.pack(">II", offset, length))
        assert str(_refused(beyond)) == "corrupt HEIF: item data outside the file"


def test_deep_nesting_is_refused_quickly() -> None:
    nested = b""
    for _ in range(1000):
        nested = _box(b"meta", b"\x00" * 4 + nested)
    ftyp = _box(b"ftyp", b"heic\x00\x00\x00\x00heicmif1")
    started = time.perf_counter()
    assert isinstance(_refused(ftyp + nested), Rejected)
    assert isinstance(_refused(ftyp + _box(b"iprp", nested)), Rejected)
    assert time.perf_counter() - started < 1


def test_too_many_items_are_refused_quickly() -> None:
    ftyp = _box(b"ftyp", b"heic\x00\x00\x00\x00heicmif1")
    hdlr = _full(b"hdlr", b"\x00" * 4 + b"pict" + b"\x00" * 13)
    infe = _full(b"infe", b"\x00\x01\x00\x00Exif\x00", 2)
    cases = [
        _full(b"iinf", struct.pack(">I", 100_000) + infe * 10, 1),  # a count that says so
        _full(
            b"iinf",
            struct.pack(">H", 10)
            + b"".join(  # entries beyond the count
                _full(b"infe", struct.pack(">IH", i, 0) + b"Exif\x00", 3) for i in range(100_000)
            ),
        ),
        _full(b"iloc", b"\x44\x00" + struct.pack(">I", 100_000), 2),
        _full(b"iinf", struct.pack(">H", 1) + infe)
        + _box(b"iref", b"\x00" * 4 + _box(b"dimg", b"\x00\x01\xff\xff" + b"\x00\x01" * 65535) * 4),
    ]
    for box in cases:
        started = time.perf_counter()
        data = ftyp + _full(b"meta", hdlr + box)
        assert isinstance(_refused(data), Rejected)
        assert time.perf_counter() - started < 1


def test_unknown_box_versions_fall_back() -> None:
    data = bytearray(_heif(corpus.photo(64, 48)))
    iloc_at = bytes(data).index(b"iloc")
    data[iloc_at + 4] = 3
    assert str(_refused(bytes(data))) in UNSUPPORTED_REASONS


# --- 4: colour profiles ----------------------------------------------------------------------


def test_icc_free_text_is_cleaned() -> None:
    profile = corpus.icc_with_text(CANARY, "Copyright " + CANARY)
    data = _heif(corpus.photo(64, 48), icc_profile=profile)
    assert _leaks(data, CANARY)
    result = scrub_heif(data, max_pixels=MAX_PIXELS)
    assert result.removed == ["icc.free_text"]
    assert not _leaks(result.output, CANARY)
    icc = pillow_heif.open_heif(io.BytesIO(result.output)).info["icc_profile"]
    assert b"Colour profile" in icc
    assert np.array_equal(_decode(result.output), _decode(data))
    assert scrub_heif(result.output, max_pixels=MAX_PIXELS).removed == []


def test_coded_data_with_an_sei_message_is_left_to_the_re_encode() -> None:
    """User-data SEI in the coded bytes may carry any text: such a file is not copied."""
    hvcc, coded = _coded(corpus.photo(64, 48))
    props = ((hvcc, True), (_ispe(64, 48), False))
    plain = _build([Item(1, b"hvc1", coded, props)], [])
    assert scrub_heif(plain, max_pixels=MAX_PIXELS).removed == []
    text = b"\x05" + bytes([16]) + b"\x00" * 16 + b"CANARYSEIXQZ\x00\x00"  # user data, 16-byte id
    sei = bytes([39 << 1, 1]) + text + b"\x80"  # prefix SEI NAL: header, payload, stop bit
    with_sei = struct.pack(">I", len(sei)) + sei + coded
    with pytest.raises(HeifUnsupported, match="SEI"):
        scrub_heif(_build([Item(1, b"hvc1", with_sei, props)], []), max_pixels=MAX_PIXELS)


def _stretched(data: bytes, item_id: int, length: int, new_length: int) -> bytes:
    """`data` with the one-extent iloc entry of `item_id` made `new_length` long."""
    at = data.index(struct.pack(">HHHH", item_id, 0, 0, 1)) + 12
    assert struct.unpack_from(">I", data, at)[0] == length
    return data[:at] + struct.pack(">I", new_length) + data[at + 4 :]


def test_image_data_stretched_over_another_item_is_not_copied() -> None:
    """An extent that covers the Exif item's bytes (or the meta box) would carry them out."""
    hvcc, coded = _coded(corpus.photo(64, 48))
    props = ((hvcc, True), (_ispe(64, 48), False))
    exif = b"\x00\x00\x00\x00" + _exif()
    items = [Item(1, b"hvc1", coded, props), Item(2, b"Exif", exif)]
    data = _stretched(_build(items, [(b"cdsc", 2, [1])]), 1, len(coded), len(coded) + len(exif))
    with pytest.raises(Rejected, match="overlaps another item"):
        scrub_heif(data, max_pixels=MAX_PIXELS)
    into_meta = _build([Item(1, b"hvc1", coded, props)], [])
    at = into_meta.index(struct.pack(">HHHH", 1, 0, 0, 1)) + 8
    offset = struct.unpack_from(">I", into_meta, at)[0]
    moved = into_meta[:at] + struct.pack(">I", offset - 40) + into_meta[at + 4 :]  # into meta
    with pytest.raises(Rejected, match="outside the media data"):
        scrub_heif(moved, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("unit_type", [38, 41, 48, 63])
def test_coded_units_that_are_not_picture_data_are_left_to_the_re_encode(unit_type: int) -> None:
    hvcc, coded = _coded(corpus.photo(64, 48))
    unit = bytes([unit_type << 1, 1]) + b"CANARYNALXQZ Patient Jane Doe"
    props = ((hvcc, True), (_ispe(64, 48), False))
    data = _build([Item(1, b"hvc1", struct.pack(">I", len(unit)) + unit + coded, props)], [])
    with pytest.raises(HeifUnsupported, match="not picture data"):
        scrub_heif(data, max_pixels=MAX_PIXELS)


def test_through_the_engine_a_heif_is_never_passed_on_with_what_the_rewrite_refused() -> None:
    """Refused structures go to the sandboxed decoder, which re-encodes the pixels or rejects
    the file with the rewrite's own reason; the coded bytes of a file that does not decode
    are not passed on as "scrubbed"."""
    from clinvault_scrub import Profile, scrub

    # 64 x 64: libheif codes a 64 x 48 picture as 64 x 64 with a crop this builder omits.
    hvcc, coded = _coded(corpus.photo(64, 64))
    props = ((hvcc, True), (_ispe(64, 64), False))
    plain = scrub(_build([Item(1, b"hvc1", coded, props)], []), Profile.CARE)
    assert (plain.ok, plain.reencoded) == (True, False)  # rewritten, and it decodes
    unit = bytes([63 << 1, 1]) + b"CANARYNALXQZ"
    with_unit = _build([Item(1, b"hvc1", struct.pack(">I", len(unit)) + unit + coded, props)], [])
    result = scrub(with_unit, Profile.CARE)
    assert result.ok, result.reason
    assert result.reencoded
    assert not _leaks(result.output or b"", "CANARYNALXQZ")
    garbled = bytearray(coded)
    garbled[6:] = bytes(len(garbled) - 6)  # the slice data zeroed: no picture comes out
    broken = scrub(_build([Item(1, b"hvc1", bytes(garbled), props)], []), Profile.CARE)
    assert (broken.status.value, broken.output) == ("rejected", None)
    assert broken.reason.startswith("image cannot be decoded")
    exif = b"\x00\x00\x00\x00" + _exif()
    items = [Item(1, b"hvc1", coded, props), Item(2, b"Exif", exif)]
    stretched = _stretched(_build(items, []), 1, len(coded), len(coded) + len(exif))
    refused = scrub(stretched, Profile.CARE)
    if refused.ok:  # libheif read the picture: re-encoded, nothing of the Exif item kept
        assert refused.reencoded
        assert not _leaks(refused.output or b"", "CANARY")
    else:
        assert refused.reason == "corrupt HEIF: image data overlaps another item"
