"""PNG care scrub: a chunk whitelist copied bytewise (pixels untouched), iCCP rebuilt clean."""

from __future__ import annotations

import struct
import zlib

from clinvault_scrub.engine import exif as exif_mod
from clinvault_scrub.engine.containers import ContainerScrub
from clinvault_scrub.engine.icc import clean_icc
from clinvault_scrub.engine.model import Rejected

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Needed to render (APNG's animation chunks are pixel data too).
_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs"}
_KEEP_ANIM = {b"acTL", b"fcTL", b"fdAT"}
# Sizes the specification fixes (least, most). A kept chunk of another size has room for
# anything: an ancillary one is dropped, a critical or animation one rejects the file.
_SIZES = {
    b"IEND": (0, 0), b"PLTE": (3, 768), b"tRNS": (1, 256), b"gAMA": (4, 4), b"cHRM": (32, 32),
    b"sRGB": (1, 1), b"sBIT": (1, 4), b"pHYs": (9, 9), b"acTL": (8, 8), b"fcTL": (26, 26),
}  # fmt: skip
_MUST_FIT = {b"IEND", b"PLTE", b"acTL", b"fcTL"}
_NAMES = {
    b"tEXt": "png.text",
    b"zTXt": "png.text",
    b"iTXt": "png.text",
    b"eXIf": "png.exif",
    b"tIME": "png.time",
}
_MAX_ICC = 8 * 1024 * 1024
_MAX_CHUNKS = 1_000_000


class PngScrub(ContainerScrub):
    __slots__ = ("orientation",)  # from eXIf; kept alone in a minimal eXIf

    def __init__(self, output: bytes) -> None:
        super().__init__(output)
        self.orientation: int | None = None


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def iccp_chunk(profile: bytes) -> bytes:
    """The iCCP chunk a scrubbed PNG carries: a cleaned profile under one fixed name."""
    return _chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile, 9))


def with_icc(data: bytes, profile: bytes) -> bytes:
    """`data`, a PNG an encoder wrote without a profile, with iCCP put right after IHDR.

    Pillow names the profile "ICC Profile" and compresses it its own way; the output check
    wants exactly what a care scrub writes, so the chunk is ours.
    """
    ihdr_end = len(SIGNATURE) + 12 + 13
    if data[12:16] != b"IHDR":
        raise Rejected("encoder wrote a PNG without IHDR first")
    return data[:ihdr_end] + iccp_chunk(profile) + data[ihdr_end:]


def scrub_care(data: bytes, *, max_pixels: int, max_frames: int) -> PngScrub:
    mv = memoryview(data)
    if not data.startswith(SIGNATURE):
        raise Rejected("not a PNG stream")
    pos = 8
    out: list[bytes | memoryview] = [SIGNATURE]
    result = PngScrub(b"")
    removed = result.removed
    seen_iend = False
    count = 0
    while pos < len(data):
        count += 1
        if count > _MAX_CHUNKS:
            raise Rejected("PNG with too many chunks")
        if pos + 12 > len(data):
            raise Rejected("truncated PNG chunk")
        length = struct.unpack(">I", mv[pos : pos + 4])[0]
        ctype = bytes(mv[pos + 4 : pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise Rejected("truncated PNG chunk")
        body = mv[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", mv[end - 4 : end])[0]
        kept = ctype in _KEEP or ctype in _KEEP_ANIM or ctype == b"iCCP"
        if kept and zlib.crc32(mv[pos + 4 : pos + 8 + length]) != crc:
            raise Rejected("corrupt PNG chunk (checksum)")
        if ctype == b"IHDR":
            if count != 1 or length != 13:
                raise Rejected("corrupt PNG header")
            result.width, result.height = struct.unpack(">II", body[:8])
            if result.width == 0 or result.height == 0:
                raise Rejected("PNG with zero dimensions")
            if result.width * result.height > max_pixels:
                raise Rejected("image exceeds the pixel limit")
        elif count == 1:
            raise Rejected("corrupt PNG: header chunk missing")
        if ctype == b"acTL" and length >= 8:
            result.frames = struct.unpack(">I", body[:4])[0]
            if result.frames > max_frames:
                raise Rejected("animation exceeds the frame limit")
        least, most = _SIZES.get(ctype, (0, length))
        if (kept and not least <= length <= most) or (ctype == b"PLTE" and length % 3):
            if ctype in _MUST_FIT:
                raise Rejected(f"corrupt PNG chunk ({ctype.decode()} of the wrong size)")
            if "png.malformed_chunk" not in removed:
                removed.append("png.malformed_chunk")
        elif ctype in _KEEP or ctype in _KEEP_ANIM:
            out.append(mv[pos:end])
        elif ctype == b"iCCP":
            nul = bytes(body[:80]).find(b"\x00")
            try:
                if nul < 1 or body[nul + 1] != 0:
                    raise ValueError("bad iCCP header")
                dec = zlib.decompressobj()
                profile = dec.decompress(bytes(body[nul + 2 :]), _MAX_ICC)
                if dec.unconsumed_tail:
                    raise ValueError("ICC profile too large")
                cleaned, changed = clean_icc(profile)
            except (ValueError, zlib.error):
                removed.append("icc.unreadable")
            else:
                if changed or bytes(body[:nul]) != b"ICC profile":
                    removed.append("icc.free_text")
                out.append(iccp_chunk(cleaned))
        else:
            name = _NAMES.get(ctype, "png.chunk." + ctype.decode("latin-1", "replace"))
            if ctype == b"eXIf":
                try:
                    got = exif_mod.read_exif(bytes(body))
                except (ValueError, struct.error):
                    removed.append("exif.unreadable")
                else:
                    result.captured_at = got.captured_at
                    # Orientation stays, alone in a minimal eXIf (as for JPEG and WebP); one
                    # already in that form is what a care scrub writes and is not reported.
                    if got.orientation not in (None, 1):
                        result.orientation = got.orientation
                    if exif_mod.is_minimal(bytes(body)):
                        name = ""
                    for cat in sorted(got.categories):
                        if cat not in removed:
                            removed.append(cat)
            if name and name not in removed:
                removed.append(name)
        pos = end
        if ctype == b"IEND":
            seen_iend = True
            break
    if not seen_iend:
        raise Rejected("truncated PNG: no end chunk")
    if pos < len(data):
        removed.append("trailer")
    if result.orientation is not None:  # right after IHDR: before the image data, as is usual
        out.insert(2, _chunk(b"eXIf", exif_mod.minimal_exif(result.orientation)))
    result.output = b"".join(out)
    return result
