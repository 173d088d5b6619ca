"""The scrub engine: pure functions over bytes and images (no database, queue or blob I/O)."""

from clinvault_scrub.engine.api import scrub, scrub_file
from clinvault_scrub.engine.formats import ACCEPTED, describe_format, sniff_format
from clinvault_scrub.engine.model import (
    Finding,
    Hints,
    Limits,
    Profile,
    Region,
    ScrubResult,
    Status,
)

__all__ = [
    "ACCEPTED",
    "Finding",
    "Hints",
    "Limits",
    "Profile",
    "Region",
    "ScrubResult",
    "Status",
    "describe_format",
    "scrub",
    "scrub_file",
    "sniff_format",
]
