"""Decoder-side work that runs inside the sandbox child (see sandbox.py).

Each function takes the untrusted bytes and returns plain values (bytes, ints, strings) that
the parent can trust: re-encoded containers for TIFF and HEIF, or a de-identified image. For
de-identification the full-size pixels never leave the child: it sends small oriented copies
to the parent's detectors, gets back the rectangles to fill, and fills and encodes them itself.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clinvault_scrub.engine import exif as exif_mod
from clinvault_scrub.engine import png
from clinvault_scrub.engine.icc import clean_icc, without_date
from clinvault_scrub.engine.model import Limits, Rejected

# Tags a scrubbed TIFF may carry: image structure, Orientation, ICC profile.
TIFF_ALLOWED_TAGS = {
    254,
    256,
    257,
    258,
    259,
    262,
    266,
    273,
    274,
    277,
    278,
    279,
    282,
    283,
    284,
    296,
    317,
    320,
    322,
    323,
    324,
    325,
    338,
    339,
    34675,
}
_TIFF_TAG_NAMES = {
    270: "tiff.free_text",
    271: "exif.device",
    272: "exif.device",
    305: "exif.device",
    306: "exif.timestamps",
    315: "exif.owner",
    33432: "exif.owner",
    34665: "exif",
    34853: "exif.gps",
    700: "xmp",
    33723: "iptc",
    34377: "iptc",
    37724: "tiff.photoshop_layers",
    330: "tiff.sub_images",
}


@dataclass
class Recoded:
    output: bytes
    removed: list[str] = field(default_factory=list)
    captured_at: datetime | None = None
    width: int = 0
    height: int = 0
    frames: int = 1


Box = tuple[int, int, int, int]  # x1, y1, x2, y2: pixels [x1, x2) x [y1, y2)


@dataclass
class DetectionView:
    """What the detectors see: reduced RGB copies of the image as displayed (oriented).

    `width` and `height` are the displayed full size; the boxes sent back are in those pixels.
    `text_pixels` is empty when no text is to be read.
    """

    width: int
    height: int
    det_width: int
    det_height: int
    det_pixels: bytes
    text_width: int
    text_height: int
    text_pixels: bytes
    page: int = 0  # of a multi-page TIFF, from 0


@dataclass
class Rendered:
    """The de-identified image, encoded. A JPEG keeps the Orientation tag and its pixels as
    stored (rotating a 48 MP image would double the child's memory); a PNG has it applied."""

    output: bytes
    output_format: str
    orientation_applied: bool
    pages_dropped: int


def preload() -> None:
    """Import every decoder a sandbox child may need; the zygote does this once at start.

    A child that imports Pillow's plugins or pillow-heif itself pays for it on every image
    (tens of milliseconds; far more where no bytecode is cached); one forked after this
    inherits them.
    """
    from PIL import Image

    Image.init()
    _heif_opener()


def _heif_opener() -> None:
    import pillow_heif

    pillow_heif.options.THUMBNAILS = True
    pillow_heif.options.DEPTH_IMAGES = True
    pillow_heif.register_heif_opener()


def load_oriented(im: Any) -> tuple[int, int]:
    """Load the current image (or page): (its Orientation tag, the orientation still to apply
    to its pixels as loaded to show them as displayed); 1 means none.

    Pillow (13, as locked) turns a TIFF page itself as it loads it (ImageOps.exif_transpose in
    load_end) and drops the tag from `tag_v2`; pillow-heif applies the HEIF transforms; the
    other formats load as stored, their EXIF Orientation still to apply. Applying a TIFF's tag
    again would turn it twice. A Pillow that leaves TIFF pages as stored keeps the tag, and
    the caller turns the pixels itself.
    """
    if im.format == "HEIF":
        im.load()
        return 1, 1
    tags = getattr(im, "tag_v2", None) if im.format == "TIFF" else None
    tag = int((tags.get(274, 1) if tags is not None else im.getexif().get(0x0112, 1)) or 1)
    if not 1 <= tag <= 8:
        tag = 1  # an out-of-range tag means no transform, as viewers treat it
    im.load()
    if tags is not None and 274 not in im.tag_v2:  # Pillow applied it
        return tag, 1
    return tag, tag


def _lzw_tiff(pages: Iterable[tuple[Any, bytes | None]]) -> bytes:
    """A new LZW TIFF of (pixels-only image, cleaned ICC or None) pages, written one at a time
    (so a caller may produce them one at a time)."""
    from PIL import TiffImagePlugin

    buf = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buf) as out:
        for page, icc in pages:
            page.save(out, "TIFF", compression="tiff_lzw", **({"icc_profile": icc} if icc else {}))
            out.newFrame()
            del page  # before the next page is made
    return buf.getvalue()


def _fresh(im: Any) -> Any:
    """A copy holding pixels only: no info, no tag directories, nothing Pillow could write back."""
    from PIL import Image

    out = Image.new(im.mode, im.size)
    out.paste(im)
    out.info = {}
    return out


def _clean_icc_or_none(raw: Any) -> tuple[bytes | None, bool]:
    if not raw:
        return None, False
    try:
        cleaned, changed = clean_icc(bytes(raw))
        return cleaned, changed
    except ValueError:
        return None, True


def recode_tiff(data: bytes, limits: Limits) -> Recoded:
    """Every page re-encoded losslessly (LZW) with only structure, Orientation and ICC."""
    from PIL import Image

    result = Recoded(b"")
    with contextlib.suppress(ValueError, struct.error):  # no date to report, then
        result.captured_at = exif_mod.read_exif(data).captured_at
    im = Image.open(io.BytesIO(data))
    turned = False
    pages = []
    icc: bytes | None = None
    for index in range(10_000):
        try:
            im.seek(index)
        except EOFError:
            break
        if index >= limits.max_pages:
            raise Rejected("TIFF exceeds the page limit")
        for tag in getattr(im, "tag_v2", {}):
            if tag not in TIFF_ALLOWED_TAGS:
                name = _TIFF_TAG_NAMES.get(tag, "tiff.tag")
                if name not in result.removed:
                    result.removed.append(name)
        if index == 0:
            icc, changed = _clean_icc_or_none(im.info.get("icc_profile"))
            if changed:
                result.removed.append("icc.free_text")
            result.width, result.height = im.size
        # Each page as displayed, without an Orientation tag (Pillow turns TIFF pages as it
        # loads them): the same picture in every viewer, lossless all the same.
        tag, orientation = load_oriented(im)
        turned = turned or tag != 1
        pages.append(_fresh(_transpose(im, orientation)))
    if not pages:
        raise Rejected("TIFF without an image")
    if turned:
        result.removed.append("orientation (applied to pixels)")
    result.output = _lzw_tiff((page, icc) for page in pages)
    result.frames = len(pages)
    return result


def recode_heif(data: bytes, limits: Limits) -> Recoded:
    """The primary image re-encoded (HEIF, high quality); thumbnails, depth, extras dropped."""
    from PIL import Image

    _heif_opener()
    import pillow_heif

    result = Recoded(b"")
    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    if len(heif) > limits.max_pages:
        raise Rejected("HEIF exceeds the image limit")
    if len(heif) > 1:
        result.removed.append("heif.extra_images")
    primary = heif[heif.primary_index]
    if primary.size[0] * primary.size[1] > limits.max_pixels:
        raise Rejected("image exceeds the pixel limit")
    if primary.info.get("thumbnails"):
        result.removed.append("heif.thumbnail")
    if primary.info.get("depth_images"):
        result.removed.append("heif.depth")
    raw_exif = primary.info.get("exif")
    raw_exif = raw_exif if isinstance(raw_exif, bytes) else None
    if raw_exif:
        result.removed.append("exif")
        blob = raw_exif[6:] if raw_exif.startswith(b"Exif\x00\x00") else raw_exif
        try:
            got = exif_mod.read_exif(blob)
            result.captured_at = got.captured_at
            for cat in sorted(got.categories):
                if cat not in result.removed:
                    result.removed.append(cat)
        except (ValueError, struct.error):
            result.removed.append("exif.unreadable")
    if primary.info.get("xmp"):
        result.removed.append("xmp")
    if primary.info.get("metadata"):
        result.removed.append("heif.metadata")
    icc, changed = _clean_icc_or_none(primary.info.get("icc_profile"))
    if changed:
        result.removed.append("icc.free_text")
    im = Image.open(io.BytesIO(data))  # applies irot/imir: pixels come out as displayed
    im.load()
    clean = _fresh(im)
    result.width, result.height = clean.size
    buf = io.BytesIO()
    # x265 "ultrafast" keeps a 12 MP re-encode to seconds; quality 92 keeps it visually lossless.
    kwargs: dict[str, Any] = {"quality": 92, "enc_params": {"preset": "ultrafast"}}
    if icc:
        kwargs["icc_profile"] = icc
    clean.save(buf, format="HEIF", **kwargs)
    result.output = buf.getvalue()
    return result


def decodes(data: bytes, limits: Limits) -> tuple[int, int]:
    """Decode the (first) image fully, as a viewer would; its size. Raises if it cannot."""
    from PIL import Image

    _heif_opener()
    im = Image.open(io.BytesIO(data))
    if im.size[0] * im.size[1] > limits.max_pixels:
        raise Rejected("image exceeds the pixel limit")
    im.load()
    return im.size


JPEG_QUALITY = 90
_LOSSLESS_INPUTS = ("png", "gif", "tiff")


@dataclass(frozen=True)
class _Search:
    """What each image, page or frame of one render needs: the limits, the sizes of the
    detection copies, and the question to the parent (which rectangles to fill)."""

    limits: Limits
    det_side: int
    text_side: int
    ask: Callable[[DetectionView], list[Box]]


def render_redacted(
    data: bytes,
    input_format: str,
    limits: Limits,
    det_side: int,
    text_side: int,
    ask: Callable[[DetectionView], list[Box]],
) -> Rendered:
    """Decode, ask which displayed rectangles to fill, fill, encode.

    Every page of a multi-page TIFF (a series, a scanned document) is de-identified, one page
    at a time, into a multi-page TIFF, and every frame of an animated GIF, WebP or PNG into an
    animation of the same format; of a HEIF sequence the first image is.
    The image is decoded once and filled in place; the only other pixel buffers are the
    reduced copies, so a 48 MP photo costs one decoded image plus its encoded output.
    """
    from PIL import Image

    _heif_opener()
    search = _Search(limits, det_side, text_side, ask)
    im = Image.open(io.BytesIO(data))
    frames = int(getattr(im, "n_frames", 1) or 1)
    if input_format == "tiff" and frames > 1:
        return _render_pages(im, frames, search)
    if input_format in _ANIMATIONS and frames > 1:
        return _render_animation(im, frames, search, input_format)
    full, icc, tag, orientation = _redacted(im, search, 0)
    del im
    keep_alpha = full.mode == "RGBA"
    buf = io.BytesIO()
    lossless = input_format in _LOSSLESS_INPUTS or keep_alpha
    if lossless:
        # PNG has no Orientation tag our scrub keeps: the pixels are turned instead.
        _transpose(full, orientation).save(buf, "PNG", compress_level=6)
        output = png.with_icc(buf.getvalue(), icc) if icc else buf.getvalue()
    else:
        kwargs: dict[str, Any] = {"icc_profile": icc} if icc else {}
        if orientation != 1:
            kwargs["exif"] = b"Exif\x00\x00" + exif_mod.minimal_exif(orientation)
        full.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False, **kwargs)
        output = buf.getvalue()
    return Rendered(
        output=output,
        output_format="png" if lossless else "jpeg",
        orientation_applied=lossless and tag != 1,
        pages_dropped=frames - 1,
    )


def _render_pages(im: Any, frames: int, search: _Search) -> Rendered:
    """Each page of a TIFF de-identified in turn and appended to a new LZW TIFF, with its
    orientation applied to its pixels and only its cleaned colour profile kept. One page's
    pixels are held at a time."""
    if frames > search.limits.max_pages:
        raise Rejected("TIFF exceeds the page limit")
    turned = False

    def pages() -> Iterator[tuple[Any, bytes | None]]:
        nonlocal turned
        for index in range(frames):
            im.seek(index)
            page, icc, tag = _displayed(im, search, index)
            turned = turned or tag != 1
            yield page, icc
            del page

    output = _lzw_tiff(pages())
    return Rendered(
        output=output, output_format="tiff", orientation_applied=turned, pages_dropped=0
    )


# Each frame of an animation is searched like a photo (faces, barcodes, text: 0.1-0.3 s for a
# small frame, seconds for a large one), so a long one is refused rather than holding a worker
# for many minutes.
MAX_ANIMATION_FRAMES = 100


# Animated formats de-identified frame by frame: Pillow's name for each, and what it encodes
# with (a WebP animation is re-encoded lossy at the quality of a JPEG output).
_ANIMATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "gif": ("GIF", {}),
    "webp": ("WEBP", {"quality": JPEG_QUALITY}),
    "png": ("PNG", {}),
}


def _render_animation(im: Any, frames: int, search: _Search, input_format: str) -> Rendered:
    """Every frame of an animated GIF, WebP or PNG de-identified, saved again as an animation
    of the same format with the same frame times and looping (each frame is composited by
    Pillow, so a redaction covers what a viewer would see)."""
    most = min(search.limits.max_frames, MAX_ANIMATION_FRAMES)
    if frames > most:
        raise Rejected(
            f"animation too long to de-identify frame by frame ({frames} frames, at most {most})"
        )
    loop = im.info.get("loop")
    redacted, durations = [], []
    icc: bytes | None = None
    turned = False
    for index in range(frames):
        im.seek(index)
        frame, frame_icc, tag = _displayed(im, search, index)
        redacted.append(frame)
        durations.append(int(im.info.get("duration") or 0))  # a WebP's, once loaded
        icc = icc or frame_icc  # the file's profile: a later frame's info may not repeat it
        turned = turned or tag != 1
        del frame
    buf = io.BytesIO()
    encoder, options = _ANIMATIONS[input_format]
    kwargs: dict[str, Any] = {"duration": durations, **options}
    if loop is not None:
        kwargs["loop"] = loop
    if icc and input_format == "webp":
        kwargs["icc_profile"] = icc
    redacted[0].save(buf, encoder, save_all=True, append_images=redacted[1:], **kwargs)
    output = buf.getvalue()
    if icc and input_format == "png":
        output = png.with_icc(output, icc)  # the iCCP chunk a care scrub writes
    return Rendered(
        output=output,
        output_format=input_format,
        orientation_applied=turned,
        pages_dropped=0,
    )


def _displayed(im: Any, search: _Search, page: int) -> tuple[Any, bytes | None, int]:
    """A page or frame of a file that holds several, redacted and turned as displayed, in a
    new image holding pixels only: (pixels, cleaned ICC without its date, Orientation tag).

    The decoder's own image keeps its info: the next seek() reuses it, and an APNG reads its
    next frame with it. Pillow's TIFF encoder would write back a TIFF page's XMP, IPTC and
    Photoshop tags, hence the pixels-only copy.
    """
    info = im.info
    full, icc, tag, orientation = _redacted(im, search, page)
    shown = _transpose(full, orientation)  # before the info is back: a copy takes it along
    shown = _fresh(shown) if shown is full else shown
    im.info = info
    return shown, icc, tag


def _redacted(im: Any, search: _Search, page: int) -> tuple[Any, bytes | None, int, int]:
    """The current image/page decoded, its fills asked for and applied: (filled pixels as
    loaded, cleaned ICC without its date, its Orientation tag, the orientation still to apply
    to the pixels as loaded; see load_oriented)."""
    if im.size[0] * im.size[1] > search.limits.max_pixels:
        raise Rejected("image exceeds the pixel limit")
    icc, _ = _clean_icc_or_none(im.info.get("icc_profile"))
    icc = icc and without_date(icc)
    keep_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    target = "RGBA" if keep_alpha else "RGB"
    tag, orientation = load_oriented(im)
    full = im if im.mode == target else im.convert(target)
    # Nothing of the input's metadata may reach an encoder: Pillow's PNG encoder writes
    # info["icc_profile"] (the profile before cleaning) when it is not given one.
    full.info = {}

    # Detection copies: box-filtered reductions of the decoded pixels (about 10 ms for 12 MP;
    # cheaper than a second, draft()-scaled decode), oriented as displayed.
    det_side, text_side = search.det_side, search.text_side
    det = _oriented_copy(full, max(1, max(full.size) // max(1, det_side)), orientation)
    text = _oriented_copy(full, -(-max(full.size) // text_side), orientation) if text_side else None
    width, height = _oriented_size(full.size, orientation)
    boxes = search.ask(
        DetectionView(
            width=width,
            height=height,
            det_width=det.size[0],
            det_height=det.size[1],
            det_pixels=det.tobytes(),
            text_width=text.size[0] if text else 0,
            text_height=text.size[1] if text else 0,
            text_pixels=text.tobytes() if text else b"",
            page=page,
        )
    )
    del det, text
    black = (0, 0, 0, 255) if keep_alpha else (0, 0, 0)
    for box in boxes:
        full.paste(black, stored_box(box, full.size, orientation))
    return full, icc, tag, orientation


def _oriented_copy(full: Any, factor: int, orientation: int) -> Any:
    reduced = full.reduce(factor) if factor > 1 else full
    if reduced.mode != "RGB":
        reduced = reduced.convert("RGB")  # the detectors' layout
    return _transpose(reduced, orientation)


def stored_box(box: Box, size: tuple[int, int], orientation: int) -> Box:
    """The rectangle of the stored image (size W x H) that a displayed rectangle shows."""
    x1, y1, x2, y2 = box
    w, h = size
    return {
        1: (x1, y1, x2, y2),
        2: (w - x2, y1, w - x1, y2),
        3: (w - x2, h - y2, w - x1, h - y1),
        4: (x1, h - y2, x2, h - y1),
        5: (y1, x1, y2, x2),
        6: (y1, h - x2, y2, h - x1),
        7: (w - y2, h - x2, w - y1, h - x1),
        8: (w - y2, x1, w - y1, x2),
    }[orientation]


def _oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _transpose(im: Any, orientation: int) -> Any:
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return im.transpose(method) if method is not None else im
