"""Burned-in text with tesseract (Debian package), run as a child process on one thread."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

TESSERACT = "tesseract"
TIMEOUT_SECONDS = 60


class OcrUnavailable(Exception):
    pass


@dataclass
class Word:
    text: str
    conf: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2
    line: tuple[int, int, int, int]  # page, block, paragraph, line


def available() -> bool:
    return shutil.which(TESSERACT) is not None


def read_words(rgb: np.ndarray) -> list[Word]:
    """Words tesseract sees in an RGB array, read as grey (sparse-text mode: text anywhere in
    a photo)."""
    from PIL import Image

    exe = shutil.which(TESSERACT)
    if exe is None:
        raise OcrUnavailable("tesseract not installed")
    buf = io.BytesIO()
    # Luminance, as most OCR pipelines read: given colour, tesseract thresholds each channel
    # its own way and can lose coloured text on a coloured ground (a magenta caption on a
    # photo was read as nothing, its grey copy as the caption).
    Image.fromarray(rgb).convert("L").save(buf, "PNG", compress_level=1)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv, image on stdin
            [exe, "stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"],
            input=buf.getvalue(),
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OcrUnavailable("tesseract timed out") from exc
    if proc.returncode != 0:
        raise OcrUnavailable("tesseract failed")
    words = []
    reader = csv.DictReader(
        io.StringIO(proc.stdout.decode("utf-8", "replace")), delimiter="\t", quoting=csv.QUOTE_NONE
    )
    for row in reader:
        text = (row.get("text") or "").strip()
        if not text:
            continue
        try:
            conf = float(row["conf"])
            x, y, w, h = (int(row[k]) for k in ("left", "top", "width", "height"))
            line = tuple(int(row[k]) for k in ("page_num", "block_num", "par_num", "line_num"))
        except (KeyError, ValueError, TypeError):
            continue
        words.append(Word(text, conf, (x, y, x + w, y + h), (line[0], line[1], line[2], line[3])))
    return words
