"""The engine call that runs in the CPU pool: a top-level function of plain, picklable values."""

from __future__ import annotations

from typing import Any

from clinvault_scrub.engine import Hints, Limits, Profile, Region, ScrubResult, scrub


def run_engine(
    data: bytes,
    profile: str,
    redactions: list[dict[str, Any]],
    keep: list[dict[str, Any]],
    hints: dict[str, str],
    max_bytes: int,
    max_pixels: int,
) -> ScrubResult:
    """Scrub `data` with `profile`; regions and hints come as the JSON the API stored."""
    return scrub(
        data,
        Profile(profile),
        redactions=[Region(r["x"], r["y"], r["w"], r["h"], r.get("label", "")) for r in redactions],
        keep=[Region(k["x"], k["y"], k["w"], k["h"]) for k in keep],
        hints=Hints(
            patient_name=hints.get("patient_name"),
            record_number=hints.get("record_number"),
            date_of_birth=hints.get("date_of_birth"),
        )
        if hints
        else None,
        limits=Limits(max_bytes=max(max_bytes, 1), max_pixels=max_pixels),
    )
