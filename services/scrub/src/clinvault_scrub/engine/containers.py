"""WebP and GIF care scrubs: container rewrites that copy the image data bytewise."""

from __future__ import annotations

import struct
from datetime import datetime

from clinvault_scrub.engine import exif as exif_mod
from clinvault_scrub.engine.icc import clean_icc
from clinvault_scrub.engine.model import Record, Rejected

_WEBP_KEEP = {b"VP8 ", b"VP8L", b"ANIM", b"ANMF", b"ALPH"}
# WebP chunks and top-level GIF blocks: a real file has a few per frame. Without a cap a file
# of empty ones (4 MB: 0.7-0.8 s) would hold a worker for most of a minute at the size limit.
MAX_BLOCKS = 100_000


class ContainerScrub(Record):
    __slots__ = ("captured_at", "frames", "height", "output", "removed", "width")

    def __init__(self, output: bytes) -> None:
        self.output = output
        self.removed: list[str] = []
        self.captured_at: datetime | None = None
        self.width = self.height = 0
        self.frames = 1


def note_removed(removed: list[str], name: str) -> None:
    """Add `name` to a `removed` list once."""
    if name not in removed:
        removed.append(name)


def _frame_image_only(frame: bytes, removed: list[str]) -> bytes:
    """An ANMF chunk's body with its image sub-chunks only: the format lets a frame carry
    "unknown chunks" after its bitstream, which would pass through a bytewise copy."""
    if len(frame) < 16:
        raise Rejected("corrupt WebP animation frame")
    parts = [frame[:16]]
    pos = 16
    while pos < len(frame):
        if pos + 8 > len(frame):
            raise Rejected("truncated WebP frame chunk")
        fourcc = frame[pos : pos + 4]
        end = pos + 8 + struct.unpack("<I", frame[pos + 4 : pos + 8])[0]
        if end > len(frame):
            raise Rejected("truncated WebP frame chunk")
        padded = min(len(frame), end + (end - pos) % 2)
        if fourcc in (b"ALPH", b"VP8 ", b"VP8L"):
            parts.append(frame[pos:padded])
        else:
            note_removed(removed, "webp.chunk")
        pos = padded
    if not any(part[:4] in (b"VP8 ", b"VP8L") for part in parts[1:]):
        raise Rejected("WebP animation frame without image data")
    return b"".join(parts)


def scrub_webp(data: bytes, *, max_pixels: int, max_frames: int) -> ContainerScrub:
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise Rejected("not a WebP stream")
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    if riff_end > len(data):
        raise Rejected("truncated WebP")
    result = ContainerScrub(b"")
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    vp8x: bytearray | None = None
    orientation: int | None = None
    count = 0
    while pos < riff_end:
        count += 1
        if count > MAX_BLOCKS:
            raise Rejected(f"corrupt WebP: more than {MAX_BLOCKS} chunks")
        if pos + 8 > riff_end:
            raise Rejected("truncated WebP chunk")
        fourcc = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + size
        if end > riff_end:
            raise Rejected("truncated WebP chunk")
        body = data[pos + 8 : end]
        if fourcc == b"VP8X":
            if size < 10 or vp8x is not None:
                raise Rejected("corrupt WebP extended header")
            vp8x = bytearray(body[:10])
            result.width = 1 + int.from_bytes(body[4:7], "little")
            result.height = 1 + int.from_bytes(body[7:10], "little")
            chunks.append((fourcc, b""))  # placeholder, rebuilt below
        elif fourcc == b"ANIM" and size != 6:
            raise Rejected("corrupt WebP animation header")
        elif fourcc in _WEBP_KEEP:
            if fourcc == b"ANMF":
                result.frames += 1
                if result.frames > max_frames + 1:
                    raise Rejected("animation exceeds the frame limit")
                body = _frame_image_only(body, result.removed)
            if fourcc == b"VP8 " and size >= 10 and not result.width:
                result.width = struct.unpack("<H", body[6:8])[0] & 0x3FFF
                result.height = struct.unpack("<H", body[8:10])[0] & 0x3FFF
            if fourcc == b"VP8L" and size >= 5 and not result.width:
                bits = int.from_bytes(body[1:5], "little")
                result.width = (bits & 0x3FFF) + 1
                result.height = ((bits >> 14) & 0x3FFF) + 1
            chunks.append((fourcc, body))
        elif fourcc == b"ICCP":
            try:
                cleaned, changed = clean_icc(body)
                if changed:
                    note_removed(result.removed, "icc.free_text")
                chunks.append((fourcc, cleaned))
            except ValueError:
                note_removed(result.removed, "icc.unreadable")
        elif fourcc == b"EXIF":
            blob = body[6:] if body.startswith(b"Exif\x00\x00") else body
            try:
                got = exif_mod.read_exif(blob)
            except (ValueError, struct.error):
                note_removed(result.removed, "exif")
                note_removed(result.removed, "exif.unreadable")
            else:
                result.captured_at = got.captured_at
                # Orientation stays, alone in a minimal EXIF (as for JPEG); one already in
                # that form is what a care scrub writes and is not reported.
                if got.orientation not in (None, 1):
                    orientation = got.orientation
                if not exif_mod.is_minimal(body):
                    note_removed(result.removed, "exif")
                    for cat in sorted(got.categories):
                        note_removed(result.removed, cat)
        elif fourcc == b"XMP ":
            note_removed(result.removed, "xmp")
        else:
            note_removed(result.removed, "webp.chunk")
        pos = end + (size & 1)
    if result.frames > 1:
        result.frames -= 1
    if riff_end < len(data):
        note_removed(result.removed, "trailer")
    if result.width * result.height > max_pixels:
        raise Rejected("image exceeds the pixel limit")
    if result.width == 0:
        raise Rejected("WebP without image data")
    has_icc = any(c == b"ICCP" for c, _ in chunks)
    if orientation is not None and vp8x is not None:  # EXIF lives only in the extended format
        chunks.append((b"EXIF", exif_mod.minimal_exif(orientation)))  # after the image data
    parts = []
    for fourcc, body in chunks:
        if fourcc == b"VP8X" and vp8x is not None:
            vp8x[0] &= ~(0x08 | 0x04) & 0xFF
            if not has_icc:
                vp8x[0] &= ~0x20 & 0xFF
            if orientation is not None:
                vp8x[0] |= 0x08
            body = bytes(vp8x)
        parts.append(
            fourcc + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")
        )
    payload = b"WEBP" + b"".join(parts)
    result.output = b"RIFF" + struct.pack("<I", len(payload)) + payload
    return result


_LOOP_HEAD = b"\x21\xff\x0bNETSCAPE2.0\x03\x01"  # application extension, loop sub-block


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    n = len(data)
    while True:
        if pos >= n:
            raise Rejected("truncated GIF data block")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def scrub_gif(data: bytes, *, max_pixels: int, max_frames: int) -> ContainerScrub:
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        raise Rejected("not a GIF stream")
    result = ContainerScrub(b"")
    result.width, result.height = struct.unpack("<HH", data[6:10])
    if result.width * result.height > max_pixels:
        raise Rejected("image exceeds the pixel limit")
    flags = data[10]
    pos = 13
    if flags & 0x80:
        pos += 3 * (2 << (flags & 7))
    if pos > len(data):
        raise Rejected("truncated GIF")
    out = [data[:pos]]
    frames = count = 0
    while True:
        count += 1
        if count > MAX_BLOCKS:
            raise Rejected(f"corrupt GIF: more than {MAX_BLOCKS} blocks")
        if pos >= len(data):
            raise Rejected("truncated GIF: no trailer")
        block = data[pos]
        if block == 0x3B:
            out.append(b"\x3b")
            pos += 1
            break
        if block == 0x2C:
            if pos + 10 > len(data):
                raise Rejected("truncated GIF image")
            frames += 1
            if frames > max_frames:
                raise Rejected("animation exceeds the frame limit")
            fw, fh = struct.unpack("<HH", data[pos + 5 : pos + 9])
            if fw * fh > max_pixels:
                raise Rejected("image exceeds the pixel limit")
            iflags = data[pos + 9]
            start = pos
            pos += 10
            if iflags & 0x80:
                pos += 3 * (2 << (iflags & 7))
            pos = _skip_sub_blocks(data, pos + 1)  # +1: LZW minimum code size
            out.append(data[start:pos])
        elif block == 0x21:
            if pos + 2 > len(data):
                raise Rejected("truncated GIF extension")
            label = data[pos + 1]
            start = pos
            end = _skip_sub_blocks(data, pos + 2)
            if label == 0xF9:
                # Delay, disposal and transparency: one 4-byte sub-block, nothing else.
                if end - start == 8 and data[start + 2] == 4:
                    out.append(data[start:end])
                else:
                    note_removed(result.removed, "gif.malformed_block")
            elif label == 0xFF and data[pos + 3 : pos + 14] in (b"NETSCAPE2.0", b"ANIMEXTS1.0"):
                # The loop count, rebuilt: any other sub-block could carry anything.
                if data[pos + 14 : pos + 16] == b"\x03\x01" and pos + 18 <= end:
                    out.append(_LOOP_HEAD + data[pos + 16 : pos + 18] + b"\x00")
                if end - start != 19:
                    note_removed(result.removed, "gif.application")
            elif label == 0xFE:
                note_removed(result.removed, "gif.comment")
            elif label == 0x01:
                note_removed(result.removed, "gif.plain_text")
            elif label == 0xFF and data[pos + 3 : pos + 14] == b"XMP DataXMP":
                note_removed(result.removed, "xmp")
            else:
                note_removed(result.removed, "gif.application")
            pos = end
        else:
            raise Rejected("corrupt GIF block")
    if frames == 0:
        raise Rejected("GIF without an image")
    if pos < len(data):
        note_removed(result.removed, "trailer")
    result.frames = frames
    result.output = b"".join(out)
    return result
