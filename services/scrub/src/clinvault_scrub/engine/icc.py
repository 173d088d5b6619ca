"""Cleaning ICC colour profiles: keep the colour transform, drop free text.

A profile is a 128-byte header, a tag table and tag data. Text tags (description, copyright,
device and viewing descriptions, metadata) can carry anything a tool wrote; we keep a
description only when it is a well-known standard profile name and replace every other text
with a neutral one, then rebuild the table with fresh offsets and a zero profile ID (the ID is
an MD5 over the content, which changed; zero means "not computed" and is valid).

A tag is judged by the type of its data, not only by its name: vendors add private tags
(Apple's `dscm` description, `mmod` make and model), and text under any name is still text.
Only types that carry colour (numbers, curves, matrices, look-up tables) are kept; any other
type, from a profile sequence to a calibration date, is dropped.
"""

from __future__ import annotations

import struct

_TEXT_TAGS = {b"desc", b"cprt", b"dmnd", b"dmdd", b"vued", b"meta", b"scrd", b"ciis", b"targ"}
_REQUIRED_TEXT = {b"desc", b"cprt"}
# Tag types that hold text, whatever the tag is called.
_TEXT_TYPES = {b"desc", b"text", b"mluc", b"utf8", b"utf1", b"zut8", b"zxml", b"dict"}
# Tag types that carry colour: everything a colour engine needs to render the image.
_COLOUR_TYPES = {
    b"curv", b"para", b"XYZ ", b"sf32", b"uf32", b"ui08", b"ui16", b"ui32", b"ui64",
    b"mft1", b"mft2", b"mAB ", b"mBA ", b"mpet", b"chrm", b"meas", b"view", b"sig ",
    b"cicp", b"vcgt",
}  # fmt: skip
_STANDARD_NAMES = {
    "srgb iec61966-2.1",
    "srgb iec61966-2-1 black scaled",
    "srgb",
    "display p3",
    "adobe rgb (1998)",
    "prophoto rgb",
    "generic rgb profile",
    "generic gray profile",
    "generic gray gamma 2.2 profile",
    "dot gain 20%",
    "uncoated fogra29 (iso 12647-2:2004)",
    "coated fogra39 (iso 12647-2:2004)",
    "u.s. web coated (swop) v2",
    "gray gamma 2.2",
    "linear srgb",
    "rec. itu-r bt.2020-1",
    "rec. itu-r bt.709-5",
    "dci-p3",
    "p3",
    "gimp built-in srgb",
    "camera rgb profile",
    "apple rgb",
    "colormatch rgb",
    "ecirgb v2",
    "ecirgb v4",
}
_MAX_TAGS = 200
# Real profiles are a few hundred bytes to a few megabytes (printer LUTs); this bounds the copy
# of a hostile one, which arrives in the calling process (a care scrub has no child).
MAX_ICC_BYTES = 16 * 1024 * 1024


def _text_of(data: bytes) -> str:
    """Best-effort text content of a desc/text/mluc tag (for the standard-name check only)."""
    sig = data[:4]
    try:
        if sig == b"desc" and len(data) >= 12:
            n = struct.unpack(">I", data[8:12])[0]
            return data[12 : 12 + n].split(b"\x00", 1)[0].decode("latin-1")
        if sig == b"text":
            return data[8:].split(b"\x00", 1)[0].decode("latin-1")
        if sig == b"mluc" and len(data) >= 16:
            count, rec = struct.unpack(">II", data[8:16])
            texts = []
            for i in range(min(count, 64)):
                r = 16 + i * rec
                length, offset = struct.unpack(">II", data[r + 4 : r + 12])
                texts.append(data[offset : offset + length].decode("utf-16-be", "replace"))
            return "|".join(texts)
    except (struct.error, UnicodeDecodeError, ValueError):
        return "\x00unreadable"
    return "\x00other"


def _neutral(sig: bytes, version_major: int, text: str) -> bytes:
    raw = text.encode("ascii")
    if version_major >= 4:
        body = text.encode("utf-16-be")
        return (
            b"mluc\x00\x00\x00\x00"
            + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(body), 28)
            + body
        )
    if sig == b"desc":
        return (
            b"desc\x00\x00\x00\x00"
            + struct.pack(">I", len(raw) + 1)
            + raw
            + b"\x00"
            + b"\x00" * 8  # unicode language code + count
            + b"\x00" * 3  # scriptcode code + count
            + b"\x00" * 67
        )
    return b"text\x00\x00\x00\x00" + raw + b"\x00"


def is_standard_name(data: bytes) -> bool:
    return all(part.strip().lower() in _STANDARD_NAMES for part in _text_of(data).split("|"))


def clean_icc(profile: bytes) -> tuple[bytes, bool]:
    """Return (cleaned profile, whether anything was removed). Raises ValueError if malformed."""
    if len(profile) < 132 or profile[36:40] != b"acsp":
        raise ValueError("not an ICC profile")
    if len(profile) > MAX_ICC_BYTES:
        raise ValueError("ICC profile too large")
    version_major = profile[8]
    count = struct.unpack(">I", profile[128:132])[0]
    if count > _MAX_TAGS or 132 + 12 * count > len(profile):
        raise ValueError("ICC tag table out of bounds")
    tags: list[tuple[bytes, bytes]] = []
    # Tags may share data (same offset and size, as rTRC/gTRC/bTRC often do) but not overlap
    # otherwise: so the copies taken here add up to at most the profile, not 200 times it.
    regions: dict[tuple[int, int], bytes] = {}
    copied = 0
    for i in range(count):
        sig, off, size = struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i])
        if off + size > len(profile) or size > len(profile):
            raise ValueError("ICC tag out of bounds")
        data = regions.get((off, size))
        if data is None:
            copied += size
            if copied > len(profile):
                raise ValueError("ICC tags overlap")
            data = regions[(off, size)] = profile[off : off + size]
        kind = data[:4]
        if sig in _TEXT_TAGS or kind in _TEXT_TYPES:
            if sig == b"desc" and is_standard_name(data):
                tags.append((sig, data))
                continue
            if sig in _REQUIRED_TEXT:
                neutral = "Colour profile" if sig == b"desc" else "No copyright, use freely"
                tags.append((sig, _neutral(sig, version_major, neutral)))
        elif kind in _COLOUR_TYPES:
            tags.append((sig, data))
    # Rebuild: identical tag data shares one copy, as in the original (e.g. rTRC/gTRC/bTRC).
    table = bytearray()
    blob = bytearray()
    placed: dict[bytes, int] = {}
    base = 132 + 12 * len(tags)
    for sig, data in tags:
        if data not in placed:
            while (base + len(blob)) % 4:
                blob.append(0)
            placed[data] = base + len(blob)
            blob += data
        table += struct.pack(">4sII", sig, placed[data], len(data))
    header = bytearray(profile[:128])
    total = base + len(blob)
    header[0:4] = struct.pack(">I", total)
    if header[84:100] != b"\x00" * 16:
        header[84:100] = b"\x00" * 16
    out = bytes(header) + struct.pack(">I", len(tags)) + bytes(table) + bytes(blob)
    # Cleaning is idempotent: a clean profile comes back byte-identical, so "changed" is exact.
    return out, out != profile


def icc_is_clean(profile: bytes) -> bool:
    """True if the profile is already in cleaned form (cleaning is idempotent)."""
    try:
        return clean_icc(profile)[0] == profile
    except ValueError:
        return False


def without_date(profile: bytes) -> bytes:
    """The profile with its header's creation date zeroed (de-identified outputs keep no
    timestamp at all). The date is informational: colour engines do not use it, and the
    profile ID that covers it is already zero in a cleaned profile."""
    if len(profile) < 128:
        return profile
    return profile[:24] + b"\x00" * 12 + profile[36:]
