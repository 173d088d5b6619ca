"""The `clinvault` executable: `scrub` goes straight to the scrubber, the rest to the full CLI.

Start-up is most of the cost of scrubbing a small batch, and the full CLI (Typer's group, with
pydantic behind it) roughly doubles it; `clinvault scrub` parses its own options (argparse), so it
skips that. Every other command, and `clinvault --help`, goes through `clinvault.cli`.
"""

from __future__ import annotations

import os
import sys


def _run() -> None:
    if sys.argv[1:2] == ["scrub"]:
        from clinvault_scrub.batch import run_scrub

        raise SystemExit(run_scrub(sys.argv[2:]))
    from clinvault.cli import main as full_cli

    full_cli()


def main() -> None:
    try:
        _run()
    except BrokenPipeError:
        # The reader of our output went away (`clinvault scrub ... | head`): stop quietly, as
        # Unix tools do. Python flushes stdout again at exit, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        # Ctrl-C: the files already written stay, none is left half-written; no traceback.
        sys.stderr.write("clinvault: interrupted\n")
        raise SystemExit(130) from None  # 128 + SIGINT, as shells report it


if __name__ == "__main__":
    main()
