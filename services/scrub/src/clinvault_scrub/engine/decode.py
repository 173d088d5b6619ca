"""Decoder-side work that runs inside the sandbox child (see sandbox.py).

Each function takes the untrusted bytes and returns plain values (bytes, ints, strings) that
the parent can trust: re-encoded containers for TIFF and HEIF, or oriented pixels for
de-identification (written into a memfd the parent maps, so a 48 MP image is not copied
through a pipe).
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clinvault_scrub.engine import exif as exif_mod
from clinvault_scrub.engine.icc import clean_icc
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


@dataclass
class Decoded:
    """Oriented display pixels (in a memfd, 4 bytes a pixel) and a small detection copy (inline).

    `mode` is "RGBX" (the fourth byte is padding) or "RGBA": Pillow keeps RGB images with four
    bytes a pixel, so this layout is copied line by line in the child and maps into a Pillow
    image in the parent without another copy (Image.frombuffer shares the buffer).
    """

    mode: str
    width: int
    height: int
    det_mode: str
    det_width: int
    det_height: int
    det_pixels: bytes
    icc: bytes | None
    pages_dropped: int


def _heif_opener() -> None:
    import pillow_heif

    pillow_heif.options.THUMBNAILS = True
    pillow_heif.options.DEPTH_IMAGES = True
    pillow_heif.register_heif_opener()


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
    try:
        info = exif_mod.read_exif(data)
        result.captured_at = info.captured_at
        orientation = info.orientation
    except (ValueError, struct.error):
        orientation = None
    im = Image.open(io.BytesIO(data))
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
        im.load()
        pages.append(_fresh(im))
    if not pages:
        raise Rejected("TIFF without an image")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"compression": "tiff_lzw"}
    if orientation:
        kwargs["tiffinfo"] = {274: orientation}
    if icc:
        kwargs["icc_profile"] = icc
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:], **kwargs)
    result.output = buf.getvalue()
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


_STRIP_BYTES = 8 * 1024 * 1024  # pixels go to the memfd in strips of about this size


def decode_display(data: bytes, limits: Limits, memfd: int, det_side: int) -> Decoded:
    """Oriented pixels of the first image/page/frame into memfd; a reduced copy for detectors.

    The image is decoded once. Memory stays at one decoded image plus the memfd: no converted,
    transposed or `tobytes()` copy of the whole image is made (strips are oriented and copied
    one at a time), which is what keeps a 48 MP image within a few hundred megabytes.
    """
    from PIL import Image

    _heif_opener()
    im = Image.open(io.BytesIO(data))
    if im.size[0] * im.size[1] > limits.max_pixels:
        raise Rejected("image exceeds the pixel limit")
    frames = int(getattr(im, "n_frames", 1) or 1)
    icc, _ = _clean_icc_or_none(im.info.get("icc_profile"))
    # pillow-heif applies the HEIF transforms itself; EXIF orientation must not be applied twice.
    orientation = 1 if im.format == "HEIF" else int(im.getexif().get(0x0112, 1) or 1)
    if not 1 <= orientation <= 8:
        orientation = 1  # an out-of-range tag means no transform, as viewers treat it
    keep_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    mode = "RGBA" if keep_alpha else "RGBX"
    im.load()
    target = "RGBA" if keep_alpha else "RGB"
    full = im if im.mode == target else im.convert(target)

    # Detection copy: a box-filtered reduction of the decoded pixels (about 10 ms for 12 MP;
    # cheaper here than a second, draft()-scaled JPEG decode), long side at least det_side.
    factor = max(1, max(full.size) // max(1, det_side))
    det = (full.reduce(factor) if factor > 1 else full).convert("RGB")
    det = _transpose(det, orientation)

    w, h = _oriented_size(full.size, orientation)
    size = w * h * 4
    os.ftruncate(memfd, size)
    rows = max(1, _STRIP_BYTES // (w * 4))
    with mmap.mmap(memfd, size) as mm:
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            box = _source_box(full.size, orientation, top, bottom)
            strip = _transpose(full.crop(box), orientation)
            raw = strip.tobytes("raw", mode)
            mm[top * w * 4 : bottom * w * 4] = raw
            del strip, raw
    return Decoded(
        mode=mode,
        width=w,
        height=h,
        det_mode="RGB",
        det_width=det.size[0],
        det_height=det.size[1],
        det_pixels=det.tobytes(),
        icc=icc,
        pages_dropped=frames - 1,
    )


def _source_box(
    size: tuple[int, int], orientation: int, top: int, bottom: int
) -> tuple[int, int, int, int]:
    """The box of the stored image that rows [top, bottom) of the displayed image come from."""
    w, h = size
    if orientation in (1, 2):
        return (0, top, w, bottom)
    if orientation in (3, 4):
        return (0, h - bottom, w, h - top)
    if orientation in (5, 6):
        return (top, 0, bottom, h)
    return (w - bottom, 0, w - top, h)  # 7, 8


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
