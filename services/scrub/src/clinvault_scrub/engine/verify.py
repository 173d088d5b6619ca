"""The fail-closed check every output passes before it is returned.

It re-parses the output with the same bounded parsers (a clean output scrubs to itself with
nothing removed), and searches its bytes for the caller's identifier hints. Any problem rejects
the file. JPEG, PNG, WebP and GIF are checked at the byte level only (segments, chunks, blocks:
the parsers prove one image, its dimensions and nothing after its end), so a care scrub never
loads Pillow; TIFF and HEIF outputs, which our parsers do not cover, are opened with Pillow
(header and tags, no pixel decode). Pixel identity is a property the tests check, not this.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from clinvault_scrub.engine import containers, heif, jpeg, png
from clinvault_scrub.engine.formats import sniff_format
from clinvault_scrub.engine.model import Rejected

_BIG = 1 << 62


def _idempotent(fn: Any, out: bytes) -> list[str]:
    try:
        again = fn(out, max_pixels=_BIG, max_frames=_BIG)
    except Rejected as exc:
        return [f"output does not re-parse: {exc}"]
    problems = [f"output still carries {name}" for name in again.removed]
    if again.output != out:
        problems.append("output is not in canonical form")
    return problems


def _tiff(out: bytes) -> list[str]:
    from PIL import Image

    from clinvault_scrub.engine.decode import TIFF_ALLOWED_TAGS

    problems = []
    im = Image.open(io.BytesIO(out))
    for index in range(10_000):
        try:
            im.seek(index)
        except EOFError:
            break
        extra = set(getattr(im, "tag_v2", {})) - TIFF_ALLOWED_TAGS
        if extra:
            problems.append("TIFF page carries metadata tags")
    return problems


def _heif(out: bytes) -> list[str]:
    import pillow_heif

    try:
        heif = pillow_heif.open_heif(io.BytesIO(out))
    except Exception as exc:  # libheif refuses what our rewrite copied (a bad colour property)
        return [f"output does not open ({type(exc).__name__})"]
    problems = []
    if len(heif) != 1:
        problems.append("HEIF holds more than one image")
    info = heif[0].info
    for key in ("exif", "xmp", "metadata", "thumbnails", "depth_images"):
        if info.get(key):
            problems.append(f"HEIF carries {key}")
    return problems


def _opens(out: bytes, fmt: str) -> list[str]:
    from PIL import Image

    if fmt == "heif":
        from clinvault_scrub.engine.decode import _heif_opener

        _heif_opener()
    try:
        with Image.open(io.BytesIO(out)) as im:
            if im.size[0] <= 0 or im.size[1] <= 0:
                return ["output has no pixels"]
    except Exception as exc:
        return [f"output does not open ({type(exc).__name__})"]
    return []


def hint_variants(term: str) -> list[bytes]:
    out: list[bytes] = []
    for t in {term, term.upper(), term.lower(), term.title()}:
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            try:
                out.append(t.encode(enc))
            except UnicodeEncodeError:
                continue
    return out


def _heif_rewrite(out: bytes, *, max_pixels: int, **_: int) -> containers.ContainerScrub:
    return heif.scrub_heif(out, max_pixels=max_pixels)


def check(
    out: bytes,
    fmt: str,
    *,
    hints: list[str],
    jpeg_runs: Mapping[int, int] | None = None,
    reencoded: bool = True,
) -> list[str]:
    """Problems found in an output (empty list: it may be returned).

    `jpeg_runs`: entropy-coded runs of a care JPEG that the scrub copied from runs its parser
    already searched for markers (see jpeg.parse); every segment around them is re-parsed.
    """
    problems: list[str] = []
    if sniff_format(out[:64]) != fmt:
        return ["output format does not match"]
    if fmt == "jpeg":
        problems += jpeg.check_clean(out, known_runs=jpeg_runs)
    elif fmt == "png":
        problems += _idempotent(png.scrub_care, out)
    elif fmt == "webp":
        problems += _idempotent(containers.scrub_webp, out)
    elif fmt == "gif":
        problems += _idempotent(containers.scrub_gif, out)
    elif fmt == "tiff":
        problems += _tiff(out)
    elif fmt == "heif":
        problems += _heif(out)
        if not reencoded:  # the container rewrite's own output: it must rewrite to itself
            problems += _idempotent(_heif_rewrite, out)
    if fmt in ("tiff", "heif"):
        problems += _opens(out, fmt)
    for term in hints:
        if len(term) >= 3 and any(v in out for v in hint_variants(term)):
            problems.append("an identifier hint occurs in the output bytes")
            break
    return problems


def check_jpeg_file(fd: int, size: int, *, jpeg_runs: Mapping[int, int] | None = None) -> list[str]:
    """check() for a care JPEG streamed to a file (the only output that is), read back where
    needed rather than whole. There are no hints to search for: a caller with identifier
    hints scrubs in memory, where every output byte is searched."""
    if sniff_format(os.pread(fd, 64, 0)) != "jpeg":
        return ["output format does not match"]
    return jpeg.check_clean(jpeg.FileSource(fd, size, chunk=1 << 16), known_runs=jpeg_runs)
