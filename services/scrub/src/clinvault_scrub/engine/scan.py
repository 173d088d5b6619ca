"""PHI-risk analysis of one file for `clinvault scan`: what identifies a patient, not values."""

from __future__ import annotations

from typing import Any

from clinvault_scrub.engine import jpeg
from clinvault_scrub.engine.api import scrub
from clinvault_scrub.engine.formats import SNIFF_BYTES, describe_format, sniff_format
from clinvault_scrub.engine.model import Limits, Profile

CATEGORIES = (
    "gps",
    "timestamps",
    "device_serials",
    "names_free_text",
    "thumbnails",
    "extra_images",
    "trailers",
    "faces",
    "text",
    "barcodes",
    "other_metadata",
)
_FROM_REMOVED = {
    "exif.gps": "gps",
    "exif.timestamps": "timestamps",
    "png.time": "timestamps",
    "exif.serial": "device_serials",
    "exif.owner": "names_free_text",
    "exif.free_text": "names_free_text",
    "comment": "names_free_text",
    "png.text": "names_free_text",
    "iptc": "names_free_text",
    "xmp": "names_free_text",
    "xmp.extended": "names_free_text",
    "gif.comment": "names_free_text",
    "gif.plain_text": "names_free_text",
    "tiff.free_text": "names_free_text",
    "icc.free_text": "names_free_text",
    "exif.thumbnail": "thumbnails",
    "jfif.thumbnail": "thumbnails",
    "jfxx.thumbnail": "thumbnails",
    "heif.thumbnail": "thumbnails",
    "mpf": "extra_images",
    "heif.extra_images": "extra_images",
    "heif.depth": "extra_images",
    "tiff.sub_images": "extra_images",
    "trailer": "trailers",
}
# Data the scrubber removes without reading it (maker notes, vendor segments and chunks,
# content credentials, malformed structures): it may hold anything, so it is counted too.
_OPAQUE = {
    "exif.makernote",
    "exif.unreadable",
    "icc.unreadable",
    "icc.after_image",
    "jumbf",
    "ducky",
    "fpxr",
    "unknown_segment",
    "webp.chunk",
    "gif.application",
    "gif.malformed_block",
    "png.malformed_chunk",
    "heif.metadata",
    "tiff.tag",
    "tiff.photoshop_layers",
}


def _category(removed: str) -> str | None:
    """The report category of one name from a care scrub's `removed` list, if any."""
    if removed in _FROM_REMOVED:
        return _FROM_REMOVED[removed]
    if removed in _OPAQUE or removed.startswith(("png.chunk.", "app")):
        return "other_metadata"  # app0...app15: a segment of no known kind
    return None


def _count_removed(removed: list[str], risks: dict[str, int]) -> None:
    for name in removed:
        cat = _category(name)
        if cat:
            risks[cat] = 1


def unsearched(status: str, fmt: str, reason: str = "") -> dict[str, Any]:
    """The report of a file whose pixels were not searched: not an image, or not readable;
    the same keys as any other report, every risk at 0 until counted."""
    return {
        "format": fmt,
        "status": status,
        "reason": reason,
        "risks": dict.fromkeys(CATEGORIES, 0),
        "review": [],
    }


def scan_bytes(
    data: bytes, *, detectors: bool = True, limits: Limits | None = None
) -> dict[str, Any]:
    """Risks in one file: {"format", "status", "reason", "risks": {category: count}, "review"}.

    Status: at_risk (something found), clean (searched, nothing found), unchecked (metadata
    clean but the pixels could not be searched: see "review"), unreadable, not_an_image.
    """
    limits = limits or Limits()
    fmt = sniff_format(data[:SNIFF_BYTES])
    risks = dict.fromkeys(CATEGORIES, 0)
    if fmt is None:
        return unsearched("not_an_image", describe_format(data[:SNIFF_BYTES]))
    care = scrub(data, Profile.CARE, limits=limits)
    if not care.ok:
        report = unsearched("unreadable", fmt, care.reason)
        if fmt == "jpeg":  # its header can still say what identifies the patient
            _count_removed(jpeg.metadata_before_image(data), report["risks"])
        return report
    _count_removed(care.removed, risks)
    if care.captured_at is not None:
        risks["timestamps"] = 1
    review: list[str] = []
    searched = True
    if detectors:
        deid = scrub(data, Profile.DEIDENTIFY, limits=limits)
        if not deid.ok:
            # Not searched for faces, text or barcodes (an animation too long, pixels that do
            # not decode): never reported as clean.
            searched = False
            review.append(f"not searched for faces, text or barcodes: {deid.reason}")
        for finding in deid.findings:
            if finding.kind == "face":
                risks["faces"] += 1
            elif finding.kind in ("text", "identifier"):
                risks["text"] += 1
            elif finding.kind == "barcode":
                risks["barcodes"] += 1
            elif finding.kind == "detector_unavailable":
                searched = False  # a detector that did not run found nothing: not clean
        review += deid.review_reasons
    status = "at_risk" if any(risks.values()) else "clean" if searched else "unchecked"
    return {
        "format": fmt,
        "status": status,
        "reason": "",
        "risks": risks,
        "review": review,
    }
