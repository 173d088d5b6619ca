"""`clinvault scrub` and `clinvault scan` for Typer; the top-level CLI calls register(app).

The scrub itself lives in `batch` (no Typer): the `clinvault` executable sends `scrub` there
directly, because Typer's start-up is as long as a care scrub of a small batch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from clinvault_scrub.batch import parse_region, run_many, run_scrub, walk
from clinvault_scrub.engine.model import io_failure

__all__ = ["parse_region", "register", "run_scrub"]


def scrub_command(ctx: typer.Context) -> None:
    """Scrub images: metadata removed (care) or de-identified (deidentify)."""
    # Reached only through a Typer app (tests, `clinvault --help`); the executable routes
    # `scrub` to batch.run_scrub before Typer loads. One argparse parser serves both.
    raise typer.Exit(run_scrub(ctx.args))


def _scan_one(args: tuple[str, str]) -> dict[str, Any]:
    from clinvault_scrub.engine.api import read_input
    from clinvault_scrub.engine.model import Rejected
    from clinvault_scrub.engine.scan import scan_bytes, unsearched

    path, root = args
    try:
        report = scan_bytes(read_input(path))
    except OSError as exc:
        report = unsearched("unreadable", "", io_failure("read", exc))
    except Rejected as exc:  # not a regular file, too large
        report = unsearched("unreadable", "", str(exc))
    report["path"] = os.path.relpath(path, root)
    return report


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_line(summary: dict[str, Any]) -> str:
    return (
        f"{_count(summary['files'], 'file')}, {_count(summary['images'], 'image')}, "
        f"{summary['at_risk']} at risk, {summary['unchecked']} not searched, "
        f"{summary['unreadable']} unreadable, {summary['not_images']} not images"
    )


def _html(files: list[dict[str, Any]], totals: dict[str, int], summary: dict[str, Any]) -> str:
    import html

    from clinvault_scrub.engine.scan import CATEGORIES

    head = "".join(f"<th>{html.escape(c)}</th>" for c in CATEGORIES)
    rows = []
    for f in files:
        risks = f.get("risks", {})
        cells = "".join(f"<td>{risks.get(c, 0) or ''}</td>" for c in CATEGORIES)
        notes = "; ".join([f.get("reason") or "", *f.get("review", [])]).strip("; ")
        rows.append(
            f"<tr><td>{html.escape(f['path'])}</td><td>{html.escape(str(f.get('format', '')))}</td>"
            f"<td>{html.escape(f['status'])}</td>{cells}<td>{html.escape(notes)}</td></tr>"
        )
    total_cells = "".join(f"<td>{totals[c]}</td>" for c in CATEGORIES)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>clinvault scan</title>"
        "<style>td,th{border:1px solid #999;padding:2px 6px}table{border-collapse:collapse}</style>"
        "</head><body><h1>PHI-risk report</h1><p>Counts of what identifies patients; "
        f"no image content is shown.</p><p>{html.escape(_summary_line(summary))}</p>"
        "<table><tr><th>file</th><th>type</th><th>status</th>"
        f"{head}<th>for review</th></tr>{''.join(rows)}"
        f"<tr><th colspan='3'>files with risk</th>{total_cells}<td></td></tr>"
        "</table></body></html>"
    )


def _check_report_paths(paths: dict[str, Path | None]) -> None:
    """Each report path writable, checked before the scan (which may take minutes), so that a
    bad one is a usage error at once. Nothing is truncated yet, and a file made by the check
    is removed again if another path fails: a usage error leaves every file as it was."""
    made: list[Path] = []
    for option, path in paths.items():
        if path is None:
            continue
        existed = path.exists()
        try:
            path.open("a").close()  # appending truncates nothing
        except OSError as exc:
            for new in made:
                new.unlink(missing_ok=True)
            raise typer.BadParameter(
                io_failure("write the report", exc), param_hint=option
            ) from None
        if not existed:
            made.append(path)


def _write_report(path: Path, text: str) -> None:
    """A file name that is not UTF-8 is written with its odd bytes as escapes."""
    try:
        path.write_text(text, encoding="utf-8", errors="backslashreplace")
    except OSError as exc:  # a full disk, found only now
        typer.echo(f"clinvault scan: {io_failure('write the report', exc)}", err=True)
        raise typer.Exit(1) from None


def scan_command(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="folder to scan (subfolders too)")
    ],
    json_file: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="write the full report as JSON"),
    ] = None,
    html_file: Annotated[
        Path | None,
        typer.Option(
            "--html", metavar="FILE", help="write the report as an HTML table (no pictures)"
        ),
    ] = None,
) -> None:
    """Report what identifies patients in a folder of photos (see SCAN_HELP)."""
    from clinvault_scrub.engine.scan import CATEGORIES

    if not directory.is_dir():
        raise typer.BadParameter("not a directory", param_hint="DIR")
    _check_report_paths({"--json": json_file, "--html": html_file})
    jobs = [(path, str(directory)) for path in walk(str(directory))]
    # A scan runs the face, barcode and text detectors: a process per core pays from 2 files.
    files = list(run_many(_scan_one, jobs, "scan", min_per_worker=1)) if jobs else []
    totals = {c: sum(1 for f in files if f.get("risks", {}).get(c)) for c in CATEGORIES}
    summary = {
        "files": len(files),
        "images": sum(1 for f in files if f["status"] in ("clean", "at_risk", "unchecked")),
        "at_risk": sum(1 for f in files if f["status"] == "at_risk"),
        "unchecked": sum(1 for f in files if f["status"] == "unchecked"),
        "not_images": sum(1 for f in files if f["status"] == "not_an_image"),
        "unreadable": sum(1 for f in files if f["status"] == "unreadable"),
        "totals": totals,
    }
    report = {"summary": summary, "files": files}
    if json_file:
        _write_report(json_file, json.dumps(report, indent=2, sort_keys=True))
    if html_file:
        _write_report(html_file, _html(files, totals, summary))
    typer.echo(_summary_line(summary))
    for cat in CATEGORIES:
        if totals[cat]:
            typer.echo(f"  {cat}: {_count(totals[cat], 'file')}")


# Typer keeps a docstring's line breaks in its help; paragraphs written out reflow.
SCAN_HELP = "\n\n".join(
    [
        "Report what identifies patients in a folder of photos, per file and in total.",
        "Reads every file under DIR and changes none. Counts GPS positions, timestamps, "
        "device serials, names and free text, thumbnails, extra images, data after the image "
        "and other metadata, and searches the pixels for faces, burned-in text and barcodes.",
        "Each file is at_risk (something found), clean (searched, nothing found), unchecked "
        "(nothing found, but a detector could not run or the pixels could not be searched), "
        "unreadable, or not_an_image. Prints a summary. Exit 0, or 2 for a usage error.",
    ]
)


def register(app: typer.Typer) -> None:
    """Add `scrub` and `scan` to the top-level clinvault app."""
    app.command(
        "scrub",
        # INPUT... --out DIR [--profile care|deidentify] [--redact X,Y,W,H[:LABEL]] [--json]
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,  # argparse prints the help, with every option
    )(scrub_command)
    app.command("scan", help=SCAN_HELP)(scan_command)


def main() -> None:
    if sys.argv[1:2] == ["scrub"]:
        # Straight to the scrubber: a Typer group coerces its own --help option through
        # pydantic (about 0.1 s of imports), as long as a care scrub of a small batch.
        raise SystemExit(run_scrub(sys.argv[2:]))
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":
    main()
