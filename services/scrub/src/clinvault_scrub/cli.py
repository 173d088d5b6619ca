"""`clinvault scrub` and `clinvault scan`; the top-level CLI registers them with register(app)."""

from __future__ import annotations

import html
import json
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer

from clinvault_scrub.engine import Profile, Region, scrub
from clinvault_scrub.engine.scan import CATEGORIES, scan_bytes


def parse_region(text: str) -> Region:
    """`X,Y,W,H[:LABEL]` in displayed-image pixels."""
    coords, _, label = text.partition(":")
    parts = coords.split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise typer.BadParameter("expected X,Y,W,H[:LABEL] with whole numbers") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise typer.BadParameter("region needs x,y >= 0 and a positive width and height")
    return Region(x, y, w, h, label.strip())


def _scrub_one(args: tuple[str, str, str, list[Region]]) -> dict[str, Any]:
    path, out_dir, profile, regions = args
    line: dict[str, Any] = {"input": path, "output": None}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        line.update(status="rejected", reason=f"cannot read input ({exc.strerror or 'error'})")
        line.update(removed=[], faces_redacted=0, needs_review=False)
        return line
    result = scrub(data, profile, redactions=regions)
    if result.ok and result.output is not None:
        target = Path(out_dir) / Path(path).name
        try:
            target.write_bytes(result.output)
            line["output"] = str(target)
        except OSError as exc:
            line.update(
                status="rejected", reason=f"cannot write output ({exc.strerror or 'error'})"
            )
            line.update(removed=[], faces_redacted=0, needs_review=False)
            return line
    line.update(
        status=result.status.value,
        reason=result.reason,
        removed=result.removed,
        faces_redacted=result.faces_redacted,
        needs_review=result.needs_review,
        captured_at=result.captured_at.isoformat() if result.captured_at else None,
        findings=[f.as_dict() for f in result.findings],
        record=result.record,
    )
    return line


def _run_many(fn: Any, jobs: list[Any], desc: str) -> Iterator[Any]:
    """Results in input order; a process per core for many files; a bar only on a terminal."""
    from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs in the lock; one call site

    # The cores this process may run on (taskset, cgroup cpusets), not the machine's count.
    workers = min(len(jobs), len(os.sched_getaffinity(0)) or 1)
    bar = tqdm(
        total=len(jobs), desc=desc, unit="file", disable=not sys.stderr.isatty(), file=sys.stderr
    )
    try:
        if workers <= 1:
            for job in jobs:
                yield fn(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for item in pool.map(
                    fn, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 4)))
                ):
                    yield item
                    bar.update()
    finally:
        bar.close()


def scrub_command(
    inputs: Annotated[list[Path], typer.Argument(help="image files to scrub")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    profile: Annotated[
        Profile, typer.Option("--profile", help="care or deidentify")
    ] = Profile.CARE,
    redact: Annotated[
        list[str] | None, typer.Option("--redact", help="X,Y,W,H[:LABEL] region to redact")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per input per line")
    ] = False,
) -> None:
    """Scrub images: metadata removed (care) or de-identified (deidentify)."""
    regions = [parse_region(r) for r in (redact or [])]
    if regions and profile is not Profile.DEIDENTIFY:
        raise typer.BadParameter("--redact needs --profile deidentify", param_hint="--redact")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise typer.BadParameter("cannot create the output directory", param_hint="--out") from None
    jobs = [(str(p), str(out), profile.value, regions) for p in inputs]
    rejected = 0
    for line in _run_many(_scrub_one, jobs, "scrub"):
        if line["status"] != "scrubbed":
            rejected += 1
        if as_json:
            typer.echo(json.dumps(line, sort_keys=True))
        elif line["status"] == "scrubbed":
            typer.echo(f"scrubbed {line['input']} -> {line['output']}")
        else:
            typer.echo(f"rejected {line['input']}: {line['reason']}")
    raise typer.Exit(1 if rejected else 0)


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            yield Path(dirpath) / name


def _scan_one(args: tuple[str, str]) -> dict[str, Any]:
    path, root = args
    try:
        data = Path(path).read_bytes()
    except OSError:
        return {
            "path": os.path.relpath(path, root),
            "status": "unreadable",
            "reason": "cannot read",
        }
    report = scan_bytes(data)
    report["path"] = os.path.relpath(path, root)
    return report


def _html(files: list[dict[str, Any]], totals: dict[str, int]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in CATEGORIES)
    rows = []
    for f in files:
        risks = f.get("risks", {})
        cells = "".join(f"<td>{risks.get(c, 0) or ''}</td>" for c in CATEGORIES)
        rows.append(
            f"<tr><td>{html.escape(f['path'])}</td><td>{html.escape(str(f.get('format', '')))}</td>"
            f"<td>{html.escape(f['status'])}</td>{cells}</tr>"
        )
    total_cells = "".join(f"<td>{totals[c]}</td>" for c in CATEGORIES)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>clinvault scan</title>"
        "<style>td,th{border:1px solid #999;padding:2px 6px}table{border-collapse:collapse}</style>"
        "</head><body><h1>PHI-risk report</h1><p>Counts of what identifies patients; "
        "no image content is shown.</p><table><tr><th>file</th><th>type</th><th>status</th>"
        f"{head}</tr>{''.join(rows)}<tr><th colspan='3'>files with risk</th>{total_cells}</tr>"
        "</table></body></html>"
    )


def scan_command(
    directory: Annotated[Path, typer.Argument(help="archive folder to scan")],
    json_file: Annotated[
        Path | None, typer.Option("--json", help="write the report as JSON")
    ] = None,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="write the report as HTML")
    ] = None,
) -> None:
    """Report what identifies patients in an archive of photos (per file and in total)."""
    if not directory.is_dir():
        raise typer.BadParameter("not a directory", param_hint="DIR")
    jobs = [(str(p), str(directory)) for p in _walk(directory)]
    files = list(_run_many(_scan_one, jobs, "scan")) if jobs else []
    totals = {c: sum(1 for f in files if f.get("risks", {}).get(c)) for c in CATEGORIES}
    summary = {
        "files": len(files),
        "images": sum(1 for f in files if f["status"] in ("clean", "at_risk")),
        "at_risk": sum(1 for f in files if f["status"] == "at_risk"),
        "not_images": sum(1 for f in files if f["status"] == "not_an_image"),
        "unreadable": sum(1 for f in files if f["status"] == "unreadable"),
        "totals": totals,
    }
    report = {"summary": summary, "files": files}
    if json_file:
        json_file.write_text(json.dumps(report, indent=2, sort_keys=True))
    if html_file:
        html_file.write_text(_html(files, totals))
    typer.echo(
        f"{summary['files']} files, {summary['images']} images, {summary['at_risk']} at risk, "
        f"{summary['unreadable']} unreadable, {summary['not_images']} not images"
    )
    for cat in CATEGORIES:
        if totals[cat]:
            typer.echo(f"  {cat}: {totals[cat]} files")


def register(app: typer.Typer) -> None:
    """Add `scrub` and `scan` to the top-level clinvault app."""
    app.command("scrub")(scrub_command)
    app.command("scan")(scan_command)


def main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":
    main()
