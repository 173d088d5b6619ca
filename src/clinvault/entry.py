"""The `clinvault` executable: `scrub` goes straight to the scrubber, the rest to the full CLI.

Start-up is most of the cost of scrubbing a small batch, and the full CLI (Typer's group, with
pydantic behind it) roughly doubles it; `clinvault scrub` parses its own options (argparse), so it
skips that. Every other command, and `clinvault --help`, goes through `clinvault.cli`.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["scrub"]:
        from clinvault_scrub.batch import run_scrub

        raise SystemExit(run_scrub(sys.argv[2:]))
    from clinvault.cli import main as full_cli

    full_cli()


if __name__ == "__main__":
    main()
