"""De-identification of pixels: orientation, faces, caller regions, barcodes, burned-in text.

The sandbox child decodes and holds the full-size pixels (decode.render_redacted); this side
runs the detectors on the small oriented copies it sends, in displayed coordinates, and
answers with the rectangles to fill. Everything here works on trusted numpy arrays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from clinvault_scrub.engine import barcodes, faces, ocr
from clinvault_scrub.engine.decode import Box, DetectionView, Rendered, render_redacted
from clinvault_scrub.engine.model import Finding, Limits, Region
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


@dataclass
class Deidentified:
    output: bytes
    output_format: str
    findings: list[Finding] = field(default_factory=list)
    review_reasons: list[str] = field(default_factory=list)
    faces_redacted: int = 0
    pages_dropped: int = 0
    orientation_applied: bool = False


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


def _clip(box: tuple[float, float, float, float], w: int, h: int) -> Box:
    x1, y1, x2, y2 = box
    return (max(0, int(x1)), max(0, int(y1)), min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2))))


def _overlaps(a: Box, b: Box) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def subtract(box: Box, cut: Box) -> list[Box]:
    """`box` without `cut`, as at most four disjoint rectangles."""
    if not _overlaps(box, cut):
        return [box]
    x1, y1, x2, y2 = box
    cx1, cy1, cx2, cy2 = cut
    pieces = []
    if y1 < cy1:
        pieces.append((x1, y1, x2, cy1))
    if cy2 < y2:
        pieces.append((x1, cy2, x2, y2))
    top, bottom = max(y1, cy1), min(y2, cy2)
    if x1 < cx1:
        pieces.append((x1, top, cx1, bottom))
    if cx2 < x2:
        pieces.append((cx2, top, x2, bottom))
    return pieces


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
    result = Deidentified(b"", "")

    def plan(view: DetectionView) -> list[Box]:
        """One image's (or page's, or frame's) fills; caller and keep regions apply to each."""
        before = len(result.findings)
        fills = _plan(view, result, redactions, keep, hints, detect_faces, read_text)
        for finding in result.findings[before:]:
            finding.page = view.page
        return fills

    rendered: Rendered = run_limited(
        render_redacted,
        (input_format, limits, BARCODE_SIDE, TEXT_SIDE if read_text else 0),
        limits,
        answer=plan,
        data=data,
    )
    result.output, result.output_format = rendered.output, rendered.output_format
    result.pages_dropped = rendered.pages_dropped
    result.orientation_applied = rendered.orientation_applied
    return result


def _unavailable(out: Deidentified, label: str, note: str = "") -> None:
    """A detector that is missing or disabled: reported once per image, not once per page or
    frame of it (like the review reasons)."""
    if not any(
        f.kind == "detector_unavailable" and f.label == label and f.note == note
        for f in out.findings
    ):
        out.findings.append(Finding("detector_unavailable", label=label, note=note))


def _plan(
    view: DetectionView,
    out: Deidentified,
    redactions: list[Region],
    keep: list[Region],
    hints: list[str],
    detect_faces: bool,
    read_text: bool,
) -> list[Box]:
    """The rectangles to fill (displayed pixels); findings and review reasons go into `out`."""
    w, h = view.width, view.height
    keeps = [_clip(k.as_box(), w, h) for k in keep]
    fills: list[Box] = []

    def review(reason: str) -> None:
        if reason not in out.review_reasons:
            out.review_reasons.append(reason)

    def fill(box: Box, automatic: bool) -> bool:
        if box[2] <= box[0] or box[3] <= box[1]:
            return False
        pieces = [box]
        if automatic and any(_overlaps(box, k) for k in keeps):
            for k in keeps:
                pieces = [p for piece in pieces for p in subtract(piece, k)]
            review("an automatic redaction overlaps a keep region")
            out.findings.append(Finding("conflict", box, note="keep region left visible"))
        fills.extend(pieces)
        return True

    # Caller regions (displayed-image coordinates), cut to the image.
    for r in redactions:
        box = _clip(r.as_box(), w, h)
        if fill(box, automatic=False):
            out.findings.append(Finding("region", box, label=r.label, redacted=True))
        else:  # nothing of it is in the image: the caller meant another picture, or a typo
            out.findings.append(
                Finding("region", r.as_box(), label=r.label, note="outside the image")
            )
            review("a caller region lies outside the image")

    # Faces on a small copy (long side DET_SIDE) of the decoder's reduced copy, boxes scaled up.
    reduced = np.frombuffer(view.det_pixels, dtype=np.uint8).reshape(
        view.det_height, view.det_width, 3
    )
    if detect_faces:
        from PIL import Image

        small = Image.fromarray(reduced, "RGB")
        scale = DET_SIDE / max(small.size)
        if scale < 1:
            # An area average: as good a downscale for the detector as thumbnail()'s bicubic,
            # at a third of its time.
            size = (max(1, round(small.width * scale)), max(1, round(small.height * scale)))
            small = small.resize(size, Image.Resampling.BOX)
        det = np.asarray(small)
        sx, sy = w / det.shape[1], h / det.shape[0]
        try:
            found = faces.detect(det)
        except faces.FaceDetectorUnavailable:
            _unavailable(out, "faces")
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
        _unavailable(out, "faces", "disabled by caller")
        review("face detection disabled")

    # Barcodes on the decoder's reduced copy (boxes scaled up to full size).
    bx, by = w / view.det_width, h / view.det_height
    try:
        for x1, y1, x2, y2, fmt in barcodes.find(reduced):
            pad = 0.1 * max(x2 - x1, y2 - y1)
            box = _clip(((x1 - pad) * bx, (y1 - pad) * by, (x2 + pad) * bx, (y2 + pad) * by), w, h)
            fill(box, automatic=True)
            out.findings.append(Finding("barcode", box, label=fmt, redacted=True))
            review("barcode found and redacted")
    except barcodes.BarcodesUnavailable:
        _unavailable(out, "barcodes")
        review("barcode reader not available")

    if read_text and view.text_pixels:
        # OCR sees the text copy with what is already to be filled blanked out, as the output
        # will show it (text inside a redacted face is gone, not "left for a reviewer").
        text = np.frombuffer(view.text_pixels, dtype=np.uint8).reshape(
            view.text_height, view.text_width, 3
        )
        text = text.copy()
        tx, ty = w / view.text_width, h / view.text_height
        for x1, y1, x2, y2 in fills:
            text[int(y1 / ty) : int(np.ceil(y2 / ty)), int(x1 / tx) : int(np.ceil(x2 / tx))] = 0
        _text(text, (tx, ty), w, h, hints, out, fill, review)
    elif not read_text:
        _unavailable(out, "text", "disabled by caller")
        review("text detection disabled")
    return fills


def _text(mid, scale, w, h, hints, out, fill, review) -> None:  # type: ignore[no-untyped-def]  # closure helpers
    try:
        words = ocr.read_words(mid)
    except ocr.OcrUnavailable:
        _unavailable(out, "text")
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
                        _scale(word.box, scale, w, h),
                        score=word.conf / 100,
                        redacted=True,
                    )
                )
                review("an identifier hint was visible in the image")
            elif len(n) >= 2 and word.conf >= OCR_REDACT_CONF:
                hit_line = True
        for word in line_words:
            n = _norm(word.text)
            box = _scale(word.box, scale, w, h)
            if hit_line and (word.conf >= OCR_REVIEW_CONF or len(n) >= 2):
                fill(box, automatic=True)
                out.findings.append(Finding("text", box, score=word.conf / 100, redacted=True))
            elif len(n) >= 3 and word.conf >= OCR_REVIEW_CONF:
                out.findings.append(
                    Finding("text", box, score=word.conf / 100, note="low confidence, not redacted")
                )
                review("possible text left for a reviewer")


def _scale(box: Box, scale: tuple[float, float], w: int, h: int) -> Box:
    pad = 2
    sx, sy = scale
    return _clip(
        ((box[0] - pad) * sx, (box[1] - pad) * sy, (box[2] + pad) * sx, (box[3] + pad) * sy),
        w,
        h,
    )
