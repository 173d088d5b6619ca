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
    scrub_file,
    sniff_format,
)

# Kept equal to the version in services/scrub/pyproject.toml (a test compares them): reading it
# through importlib.metadata costs about 20 ms per process, a tenth of a care batch.
__version__ = "0.1.0"

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
    "scrub_file",
    "sniff_format",
]
