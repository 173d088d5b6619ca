"""Barcodes and QR codes (wristbands, specimen labels) with zxing-cpp."""

from __future__ import annotations

import numpy as np


class BarcodesUnavailable(Exception):
    pass


def find(rgb: np.ndarray) -> list[tuple[int, int, int, int, str]]:
    """Boxes (x1, y1, x2, y2, format name) of every barcode zxing-cpp finds; never the content."""
    try:
        import zxingcpp
    except ImportError as exc:
        raise BarcodesUnavailable("zxing-cpp not installed") from exc
    out = []
    for result in zxingcpp.read_barcodes(np.ascontiguousarray(rgb)):
        pos = result.position
        xs = [pos.top_left.x, pos.top_right.x, pos.bottom_left.x, pos.bottom_right.x]
        ys = [pos.top_left.y, pos.top_right.y, pos.bottom_left.y, pos.bottom_right.y]
        out.append((min(xs), min(ys), max(xs), max(ys), str(result.format).split(".")[-1]))
    return out
