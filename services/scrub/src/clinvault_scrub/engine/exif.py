"""A bounded reader for EXIF (TIFF-structured) blocks: what is in them, never trusting offsets.

We only read; the scrubbed output never carries the original block. Every offset is checked
against the block, loops are cut by a visited set, and entry counts are capped, so a hostile
block costs at most a few thousand steps.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone

from clinvault_scrub.engine.model import Record

_MAX_ENTRIES = 1000
_MAX_IFDS = 16
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}

# Tag groups reported as removed (names only, never values).
_CATEGORIES = {
    0x927C: "exif.makernote",
    0xA431: "exif.serial",
    0xA435: "exif.serial",
    0xC62F: "exif.serial",
    0xA420: "exif.serial",
    0xA430: "exif.owner",
    0x013B: "exif.owner",
    0x8298: "exif.owner",
    0x9C9D: "exif.owner",
    0x010E: "exif.free_text",
    0x9286: "exif.free_text",
    0x9C9B: "exif.free_text",
    0x9C9C: "exif.free_text",
    0x9C9E: "exif.free_text",
    0x9C9F: "exif.free_text",
    0x010F: "exif.device",
    0x0110: "exif.device",
    0x0131: "exif.device",
    0xA433: "exif.device",
    0xA434: "exif.device",
    0x0132: "exif.timestamps",
    0x9003: "exif.timestamps",
    0x9004: "exif.timestamps",
    0x0201: "exif.thumbnail",
}


class ExifInfo(Record):
    __slots__ = ("captured_at", "categories", "orientation", "tags")

    def __init__(self) -> None:
        self.orientation: int | None = None
        self.captured_at: datetime | None = None
        self.categories: set[str] = set()
        self.tags: set[int] = set()


def _parse_datetime(raw: bytes, offset: bytes | None) -> datetime | None:
    text = raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
    # "YYYY:MM:DD HH:MM:SS", read without strptime (whose import costs more than a care scrub).
    if len(text) < 19 or text[4] != ":" or text[7] != ":" or text[10] != " ":
        return None
    try:
        value = datetime.fromisoformat(f"{text[:4]}-{text[5:7]}-{text[8:10]}T{text[11:19]}")
    except ValueError:
        return None
    if value.tzinfo is not None:  # fromisoformat read a zone out of the time part: not EXIF
        return None
    tz = UTC
    if offset:
        otext = offset.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
        try:
            sign = -1 if otext.startswith("-") else 1
            hh, mm = otext.lstrip("+-").split(":")
            tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))
        except (ValueError, OverflowError):
            tz = UTC
    # Without an offset tag the camera's local time is unknown; UTC is a stated assumption.
    return value.replace(tzinfo=tz)


def read_exif(blob: bytes) -> ExifInfo:
    """Read a TIFF-structured EXIF block (starting at the byte order mark). Raises ValueError."""
    info = ExifInfo()
    if len(blob) < 8 or blob[:2] not in (b"II", b"MM"):
        raise ValueError("not a TIFF header")
    bo = "<" if blob[:2] == b"II" else ">"
    if struct.unpack(bo + "H", blob[2:4])[0] != 42:
        raise ValueError("bad TIFF magic")
    values: dict[int, bytes] = {}
    visited: set[int] = set()
    queue: list[tuple[int, str]] = [(struct.unpack(bo + "I", blob[4:8])[0], "ifd0")]
    while queue and len(visited) < _MAX_IFDS:
        off, kind = queue.pop(0)
        if off in visited or off < 8 or off + 2 > len(blob):
            continue
        visited.add(off)
        count = struct.unpack(bo + "H", blob[off : off + 2])[0]
        if count > _MAX_ENTRIES or off + 2 + 12 * count > len(blob):
            raise ValueError("IFD out of bounds")
        if kind == "gps":
            info.categories.add("exif.gps")
        if kind == "ifd1":
            info.categories.add("exif.thumbnail")
        for i in range(count):
            e = off + 2 + 12 * i
            tag, typ, n = struct.unpack(bo + "HHI", blob[e : e + 8])
            size = _TYPE_SIZES.get(typ, 1) * n
            if size <= 4:
                raw = blob[e + 8 : e + 8 + size]
            else:
                voff = struct.unpack(bo + "I", blob[e + 8 : e + 12])[0]
                raw = blob[voff : voff + size] if voff + size <= len(blob) else b""
            info.tags.add(tag)
            if tag in _CATEGORIES:
                info.categories.add(_CATEGORIES[tag])
            if kind in ("ifd0", "exif") and tag in (0x0112, 0x0132, 0x9003, 0x9004, 0x9011, 0x9010):
                values.setdefault(tag, raw)
            if tag in (0x8769, 0x8825, 0xA005) and len(raw) == 4:
                sub = struct.unpack(bo + "I", raw)[0]
                queue.append((sub, {0x8769: "exif", 0x8825: "gps", 0xA005: "interop"}[tag]))
        if kind == "ifd0":
            nxt_at = off + 2 + 12 * count
            if nxt_at + 4 <= len(blob):
                nxt = struct.unpack(bo + "I", blob[nxt_at : nxt_at + 4])[0]
                if nxt:
                    queue.append((nxt, "ifd1"))
    raw_orientation = values.get(0x0112)
    if raw_orientation is not None and len(raw_orientation) >= 2:
        o = struct.unpack(bo + "H", raw_orientation[:2])[0]
        info.orientation = o if 1 <= o <= 8 else None
    for tag, otag in ((0x9003, 0x9011), (0x9004, 0x9010), (0x0132, 0x9010)):
        if tag in values:
            info.captured_at = _parse_datetime(values[tag], values.get(otag))
            if info.captured_at is not None:
                break
    return info


def is_minimal(blob: bytes) -> bool:
    """True if `blob` is exactly a minimal_exif() block: the EXIF a care scrub keeps."""
    try:
        orientation = read_exif(blob).orientation
    except (ValueError, struct.error):
        return False
    return orientation is not None and blob == minimal_exif(orientation)


def minimal_exif(orientation: int) -> bytes:
    """A TIFF block holding only the Orientation tag (big-endian, one IFD, nothing else)."""
    return b"MM\x00*\x00\x00\x00\x08" + struct.pack(">HHHIHH I", 1, 0x0112, 3, 1, orientation, 0, 0)
