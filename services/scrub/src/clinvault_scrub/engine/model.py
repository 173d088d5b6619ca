"""Plain data types of the scrub engine: picklable, so a process pool can pass them around."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Face detection policy (kept here so the record can name it without importing numpy).
FACE_DETECT_THRESHOLD = 0.2  # everything above is redacted
FACE_CONFIDENT = 0.5  # below this a detection is borderline and flags review


class Profile(enum.StrEnum):
    CARE = "care"
    DEIDENTIFY = "deidentify"


class Status(enum.StrEnum):
    SCRUBBED = "scrubbed"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Region:
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


@dataclass(frozen=True)
class Hints:
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


@dataclass(frozen=True)
class Limits:
    """Bounds for hostile input: the decoder runs in a child process held to these."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 120_000_000
    max_frames: int = 500
    max_pages: int = 64
    cpu_seconds: int = 60
    wall_seconds: float = 120.0
    memory_bytes: int = 2 * 1024 * 1024 * 1024


@dataclass
class Finding:
    """Something a detector found (or a check that could not run)."""

    kind: str  # face | barcode | text | identifier | region | detector_unavailable | conflict
    box: tuple[int, int, int, int] | None = None
    score: float | None = None
    label: str = ""
    redacted: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "box": list(self.box) if self.box else None,
            "score": None if self.score is None else round(self.score, 3),
            "label": self.label,
            "redacted": self.redacted,
            "note": self.note,
        }


@dataclass
class ScrubResult:
    status: Status
    output: bytes | None = None
    format: str | None = None
    output_format: str | None = None
    reason: str = ""
    removed: list[str] = field(default_factory=list)
    captured_at: datetime | None = None
    faces_redacted: int = 0
    needs_review: bool = False
    review_reasons: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    reencoded: bool = False
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.SCRUBBED


class Rejected(Exception):
    """The input cannot be scrubbed safely; the message is a reason without PHI."""
