"""Plain data types of the scrub engine: picklable, so a process pool can pass them around."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NamedTuple

# Face detection policy (kept here so the record can name it without importing numpy).
FACE_DETECT_THRESHOLD = 0.2  # everything above is redacted
FACE_CONFIDENT = 0.5  # below this a detection is borderline and flags review


class Profile(enum.StrEnum):
    CARE = "care"
    DEIDENTIFY = "deidentify"


class Status(enum.StrEnum):
    SCRUBBED = "scrubbed"
    REJECTED = "rejected"


class Region(NamedTuple):
    """A rectangle in displayed-image pixels (after orientation), with an optional label."""

    x: int
    y: int
    w: int
    h: int
    label: str = ""

    def as_box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    def intersects(self, other: Region) -> bool:
        return not (
            self.x + self.w <= other.x
            or other.x + other.w <= self.x
            or self.y + self.h <= other.y
            or other.y + other.h <= self.y
        )


class Hints(NamedTuple):
    """Identifiers the caller knows; matched against OCR text and searched in the output bytes."""

    patient_name: str | None = None
    record_number: str | None = None
    date_of_birth: str | None = None
    other: tuple[str, ...] = ()

    def terms(self) -> list[str]:
        out: list[str] = []
        for value in (self.patient_name, self.record_number, self.date_of_birth, *self.other):
            if value and value.strip():
                out.append(value.strip())
        return out


class Limits(NamedTuple):
    """Bounds for hostile input: the decoder runs in a child process held to these."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 120_000_000
    max_frames: int = 500
    max_pages: int = 64
    cpu_seconds: int = 60
    wall_seconds: float = 120.0
    memory_bytes: int = 2 * 1024 * 1024 * 1024


class Record:
    """Field-wise repr and equality for the engine's mutable records.

    Plain classes with __slots__ rather than dataclasses: importing `dataclasses` (and the
    `inspect` it pulls in) costs about 25 ms, which is a tenth of `clinvault scrub` on a folder
    of phone photos, and the care path needs none of its features.
    """

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> list[str]:
        """The slots of this class and its bases."""
        return [
            name for k in reversed(type(self).__mro__) for name in k.__dict__.get("__slots__", ())
        ]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self._fields()
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable, as a dataclass


class Finding(Record):
    """Something a detector found (or a check that could not run)."""

    __slots__ = ("box", "kind", "label", "note", "page", "redacted", "score")

    def __init__(
        self,
        kind: str,  # face | barcode | text | identifier | region | detector_unavailable | conflict
        box: tuple[int, int, int, int] | None = None,
        score: float | None = None,
        label: str = "",
        redacted: bool = False,
        note: str = "",
        page: int = 0,  # of a multi-page TIFF, from 0; `box` is in that page's pixels
    ) -> None:
        self.kind, self.box, self.score = kind, box, score
        self.label, self.redacted, self.note, self.page = label, redacted, note, page

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "box": list(self.box) if self.box else None,
            "score": None if self.score is None else round(self.score, 3),
            "label": self.label,
            "redacted": self.redacted,
            "note": self.note,
            "page": self.page,
        }


class ScrubResult(Record):
    __slots__ = (
        "captured_at",
        "faces_redacted",
        "findings",
        "format",
        "needs_review",
        "output",
        "output_format",
        "reason",
        "record",
        "reencoded",
        "removed",
        "review_reasons",
        "status",
    )

    def __init__(
        self,
        status: Status,
        output: bytes | None = None,
        format: str | None = None,
        output_format: str | None = None,
        reason: str = "",
    ) -> None:
        self.status, self.output, self.reason = status, output, reason
        self.format, self.output_format = format, output_format
        self.removed: list[str] = []
        self.captured_at: datetime | None = None
        self.faces_redacted = 0
        self.needs_review = False
        self.review_reasons: list[str] = []
        self.findings: list[Finding] = []
        self.reencoded = False
        self.record: dict[str, Any] = {}

    @property
    def ok(self) -> bool:
        return self.status is Status.SCRUBBED


def io_failure(what: str, exc: OSError) -> str:
    """The reason for a failed read or write: the system's words, never the path (a file name
    may name a patient)."""
    return f"cannot {what} ({exc.strerror or 'error'})"


class Rejected(Exception):
    """The input cannot be scrubbed safely; the message is a reason without PHI."""
