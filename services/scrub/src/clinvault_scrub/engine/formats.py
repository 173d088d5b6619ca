"""Format detection from content: one implementation, in the shared package.

The upload API answers 415 with the same function before the engine ever runs, so the two can
never disagree about what is accepted.
"""

from clinvault_shared.formats import ACCEPTED, SNIFF_BYTES, describe_format, sniff_format

__all__ = ["ACCEPTED", "SNIFF_BYTES", "describe_format", "sniff_format"]
