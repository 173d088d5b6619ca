"""Format detection from content (never the file name), used by two services: the upload API
answers 415 from an upload's first bytes, and the scrub engine decides how to scrub a file.
"""

from __future__ import annotations

import codecs

ACCEPTED = ("jpeg", "png", "webp", "heif", "tiff", "gif")

# Bytes of the head an upload API should pass (enough for every check below).
SNIFF_BYTES = 256

_HEIF_BRANDS = {
    b"heic",
    b"heix",
    b"hevc",
    b"hevx",
    b"heim",
    b"heis",
    b"hevm",
    b"hevs",
    b"mif1",
    b"msf1",
}
_VIDEO_BRANDS = {
    b"isom": "MP4 video",
    b"iso2": "MP4 video",
    b"mp41": "MP4 video",
    b"mp42": "MP4 video",
    b"avc1": "MP4 video",
    b"dash": "MP4 video",
    b"M4V ": "MP4 video",
    b"qt  ": "QuickTime video",
    b"3gp4": "3GPP video",
    b"3gp5": "3GPP video",
    b"3g2a": "3GPP video",
    b"crx ": "Canon CR3 RAW",
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"jxl ": "JPEG XL",
}


def _ftyp_brand(head: bytes) -> bytes | None:
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return head[8:12]
    return None


def sniff_format(head: bytes) -> str | None:
    """Name of the accepted format the first bytes show ("jpeg", "png", ...), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        # TIFF-structured camera RAW files are not images we scrub.
        if head[:4] == b"II*\x00" and head[8:10] == b"CR":
            return None
        return "tiff"
    brand = _ftyp_brand(head)
    if brand in _HEIF_BRANDS:
        return "heif"
    return None


def describe_format(head: bytes) -> str:
    """A human name for whatever the first bytes show, for rejection reasons (no content)."""
    fmt = sniff_format(head)
    if fmt is not None:
        return {
            "jpeg": "JPEG",
            "png": "PNG",
            "webp": "WebP",
            "heif": "HEIF",
            "tiff": "TIFF",
            "gif": "GIF",
        }[fmt]
    if not head:
        return "empty file"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"%PDF"):
        return "PDF"
    if head[:4] == b"II*\x00" and head[8:10] == b"CR":
        return "Canon CR2 RAW"
    if head[:4] in (b"IIRO", b"IIRS"):
        return "Olympus ORF RAW"
    if head[:4] == b"IIU\x00":
        return "Panasonic RW2 RAW"
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "Fujifilm RAF RAW"
    brand = _ftyp_brand(head)
    if brand is not None:
        return _VIDEO_BRANDS.get(brand, "ISO media file")
    low = stripped[:64].lower()
    if low.startswith((b"<svg", b"<?xml")) and b"svg" in head.lower():
        return "SVG"
    if low.startswith(b"<?xml"):
        return "XML document"
    if low.startswith((b"<!doctype html", b"<html")):
        return "HTML document"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI video"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV audio"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM video"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith(b"PK\x03\x04"):
        return "ZIP archive"
    if head.startswith(b"DICM") or head[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL"
    if head.startswith(b"\x00\x00\x00\x0cjP  "):
        return "JPEG 2000"
    if head.startswith((b"ID3", b"\xff\xfb")):
        return "MP3 audio"
    if head.startswith(b"bplist"):
        return "property list"
    if _is_text(head):
        return "text file"
    return "unknown type"


def _is_text(head: bytes) -> bool:
    """Printable UTF-8 (a note, a CSV, a log) rather than binary data."""
    try:
        # Incremental: a character cut at the end of the head is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return False
    return bool(text) and all(c.isprintable() or c in "\t\r\n\f" for c in text)
