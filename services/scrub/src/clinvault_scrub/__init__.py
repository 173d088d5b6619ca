"""clinvault de-identification engine; see clinvault_scrub.engine for the API."""

from clinvault_scrub.engine import (
    Finding,
    Hints,
    Limits,
    Profile,
    Region,
    ScrubResult,
    Status,
    describe_format,
    scrub,
    sniff_format,
)

__all__ = [
    "Finding",
    "Hints",
    "Limits",
    "Profile",
    "Region",
    "ScrubResult",
    "Status",
    "describe_format",
    "scrub",
    "sniff_format",
]
