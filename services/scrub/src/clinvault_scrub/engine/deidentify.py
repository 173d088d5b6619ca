"""De-identification of pixels: orientation, faces, caller regions, barcodes, burned-in text.

Decoding happens in the sandbox child; everything here works on trusted numpy arrays.
"""

from __future__ import annotations

import io
import mmap
import os
import re
from dataclasses import dataclass, field

import numpy as np

from clinvault_scrub.engine import barcodes, faces, ocr
from clinvault_scrub.engine.decode import Decoded, decode_display
from clinvault_scrub.engine.model import Finding, Limits, Region, Rejected
from clinvault_scrub.engine.sandbox import run_limited

DET_SIDE = 640  # long side of the face-detection copy
# Barcodes are read on the decoder's reduced copy (long side at least this: 1/4 of a 12 MP and
# 1/8 of a 48 MP phone photo); zxing finds wristband and label codes at that size.
BARCODE_SIDE = 1000
TEXT_SIDE = 2000  # long side of the copy OCR sees (small burned-in text needs the pixels)
FACE_MARGIN = 0.15
LARGE_FACE_SHARE = 0.2
OCR_REDACT_CONF = 60.0
OCR_REVIEW_CONF = 30.0
JPEG_QUALITY = 90


@dataclass
class Deidentified:
    output: bytes
    output_format: str
    findings: list[Finding] = field(default_factory=list)
    review_reasons: list[str] = field(default_factory=list)
    faces_redacted: int = 0
    pages_dropped: int = 0


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _hint_tokens(hints: list[str]) -> set[str]:
    tokens: set[str] = set()
    for hint in hints:
        for part in re.split(r"[\s,;/.-]+", hint):
            n = _norm(part)
            if len(n) >= 2:
                tokens.add(n)
        whole = _norm(hint)
        if len(whole) >= 4:
            tokens.add(whole)
    return tokens


def _clip(box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return (max(0, int(x1)), max(0, int(y1)), min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2))))


def _overlaps(box: tuple[int, int, int, int], region: Region) -> bool:
    return not (
        box[2] <= region.x
        or region.x + region.w <= box[0]
        or box[3] <= region.y
        or region.y + region.h <= box[1]
    )


def run(
    data: bytes,
    *,
    input_format: str,
    redactions: list[Region],
    keep: list[Region],
    hints: list[str],
    limits: Limits,
    detect_faces: bool = True,
    read_text: bool = True,
) -> Deidentified:
    from PIL import Image

    memfd = os.memfd_create("clinvault-pixels")
    try:
        decoded: Decoded = run_limited(decode_display, (data, limits, memfd, BARCODE_SIDE), limits)
        if decoded.mode not in ("RGBX", "RGBA"):
            raise Rejected("decoder returned an unexpected pixel layout")
        size = decoded.width * decoded.height * 4
        if os.fstat(memfd).st_size != size:
            raise Rejected("decoder returned an unexpected pixel count")
        lossless = input_format in ("png", "gif", "tiff") or decoded.mode == "RGBA"
        buf = io.BytesIO()
        kwargs: dict[str, object] = {}
        if decoded.icc:
            kwargs["icc_profile"] = decoded.icc
        with mmap.mmap(memfd, size) as mm:
            # One copy of the pixels, shared with the decoder child: redaction fills it in
            # place through this numpy view, and the encoder reads it through a Pillow image
            # over the same buffer.
            pixels = np.frombuffer(mm, dtype=np.uint8).reshape(decoded.height, decoded.width, 4)
            result = _redact(pixels, decoded, redactions, keep, hints, detect_faces, read_text)
            del pixels
            im = Image.frombuffer(
                decoded.mode,
                (decoded.width, decoded.height),
                mm,  # type: ignore[arg-type]  # a writable buffer; the stubs list bytes only
                "raw",
                decoded.mode,
                0,
                1,
            )
            if lossless:
                out = im if decoded.mode == "RGBA" else im.convert("RGB")
                out.save(buf, "PNG", compress_level=6, **kwargs)
                result.output_format = "png"
                del out
            else:
                im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False, **kwargs)
                result.output_format = "jpeg"
            del im
        result.output = buf.getvalue()
        result.pages_dropped = decoded.pages_dropped
        return result
    finally:
        os.close(memfd)


def _redact(
    pixels: np.ndarray,
    decoded: Decoded,
    redactions: list[Region],
    keep: list[Region],
    hints: list[str],
    detect_faces: bool,
    read_text: bool,
) -> Deidentified:
    h, w = pixels.shape[:2]
    out = Deidentified(b"", "")
    keep_mask: np.ndarray | None = None
    if keep:
        keep_mask = np.zeros((h, w), dtype=bool)
        for k in keep:
            keep_mask[max(0, k.y) : max(0, k.y + k.h), max(0, k.x) : max(0, k.x + k.w)] = True

    def review(reason: str) -> None:
        if reason not in out.review_reasons:
            out.review_reasons.append(reason)

    def fill(box: tuple[int, int, int, int], automatic: bool) -> bool:
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            return False
        area = pixels[y1:y2, x1:x2]
        if automatic and keep_mask is not None and keep_mask[y1:y2, x1:x2].any():
            area[~keep_mask[y1:y2, x1:x2]] = 0
            review("an automatic redaction overlaps a keep region")
            out.findings.append(Finding("conflict", box, note="keep region left visible"))
        else:
            area[...] = 0
        return True

    # Caller regions (displayed-image coordinates).
    for r in redactions:
        box = _clip((r.x, r.y, r.x + r.w, r.y + r.h), w, h)
        done = fill(box, automatic=False)
        out.findings.append(Finding("region", box, label=r.label, redacted=done))

    # Faces on a small copy (long side DET_SIDE) of the decoder's reduced copy, boxes scaled up.
    reduced = np.frombuffer(decoded.det_pixels, dtype=np.uint8).reshape(
        decoded.det_height, decoded.det_width, 3
    )
    if detect_faces:
        from PIL import Image

        small = Image.fromarray(reduced, "RGB")
        small.thumbnail((DET_SIDE, DET_SIDE))
        det = np.asarray(small)
        sx, sy = w / det.shape[1], h / det.shape[0]
        try:
            found = faces.detect(det)
        except faces.FaceDetectorUnavailable:
            out.findings.append(Finding("detector_unavailable", label="faces"))
            review("face detector not available")
            found = []
        for x1, y1, x2, y2, score in found:
            mx, my = (x2 - x1) * FACE_MARGIN, (y2 - y1) * FACE_MARGIN
            box = _clip(((x1 - mx) * sx, (y1 - my) * sy, (x2 + mx) * sx, (y2 + my) * sy), w, h)
            fill(box, automatic=True)
            out.faces_redacted += 1
            out.findings.append(Finding("face", box, score=score, redacted=True))
            if score < faces.CONFIDENT:
                review("borderline face detection")
            if (box[2] - box[0]) * (box[3] - box[1]) > LARGE_FACE_SHARE * w * h:
                review("a face covers much of the frame")
    else:
        out.findings.append(
            Finding("detector_unavailable", label="faces", note="disabled by caller")
        )
        review("face detection disabled")

    # Barcodes on the decoder's reduced copy (once; boxes scaled up to full size).
    bx, by = w / decoded.det_width, h / decoded.det_height
    try:
        for x1, y1, x2, y2, fmt in barcodes.find(reduced):
            pad = 0.1 * max(x2 - x1, y2 - y1)
            box = _clip(((x1 - pad) * bx, (y1 - pad) * by, (x2 + pad) * bx, (y2 + pad) * by), w, h)
            fill(box, automatic=True)
            out.findings.append(Finding("barcode", box, label=fmt, redacted=True))
            review("barcode found and redacted")
    except barcodes.BarcodesUnavailable:
        out.findings.append(Finding("detector_unavailable", label="barcodes"))
        review("barcode reader not available")

    if read_text:
        # Text on a mid-size copy (strided view of the full pixels, copied once for tesseract).
        factor = max(1, int(np.ceil(max(w, h) / TEXT_SIDE)))
        mid = np.ascontiguousarray(pixels[::factor, ::factor, :3])
        _text(mid, factor, w, h, hints, out, fill, review)
        del mid
    else:
        out.findings.append(
            Finding("detector_unavailable", label="text", note="disabled by caller")
        )
        review("text detection disabled")
    return out


def _text(mid, factor, w, h, hints, out, fill, review) -> None:  # type: ignore[no-untyped-def]  # closure helpers
    try:
        words = ocr.read_words(mid)
    except ocr.OcrUnavailable:
        out.findings.append(Finding("detector_unavailable", label="text"))
        review("text recognition not available")
        return
    tokens = _hint_tokens(hints)
    lines: dict[tuple[int, int, int, int], list[ocr.Word]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word)
    for line_words in lines.values():
        hit_line = False
        for word in line_words:
            n = _norm(word.text)
            is_hint = bool(n) and (n in tokens or any(len(t) >= 4 and t in n for t in tokens))
            if is_hint:
                hit_line = True
                out.findings.append(
                    Finding(
                        "identifier",
                        _scale(word.box, factor, w, h),
                        score=word.conf / 100,
                        redacted=True,
                    )
                )
                review("an identifier hint was visible in the image")
            elif len(n) >= 2 and word.conf >= OCR_REDACT_CONF:
                hit_line = True
        for word in line_words:
            n = _norm(word.text)
            box = _scale(word.box, factor, w, h)
            if hit_line and (word.conf >= OCR_REVIEW_CONF or len(n) >= 2):
                fill(box, automatic=True)
                out.findings.append(Finding("text", box, score=word.conf / 100, redacted=True))
            elif len(n) >= 3 and word.conf >= OCR_REVIEW_CONF:
                out.findings.append(
                    Finding("text", box, score=word.conf / 100, note="low confidence, not redacted")
                )
                review("possible text left for a reviewer")


def _scale(
    box: tuple[int, int, int, int], factor: int, w: int, h: int
) -> tuple[int, int, int, int]:
    pad = 2
    return _clip(
        (
            (box[0] - pad) * factor,
            (box[1] - pad) * factor,
            (box[2] + pad) * factor,
            (box[3] + pad) * factor,
        ),
        w,
        h,
    )
