"""`clinvault scrub` over a batch of files, without Typer (the executable routes here directly).

Start-up is most of the cost of scrubbing a small batch, so this module imports only the
byte-level engine; the progress bar, the worker threads or process pool and the pixel stack
(Pillow, numpy, onnxruntime) load only when a run needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import functools
import itertools
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from clinvault_scrub.engine import Profile, Region, scrub_file
from clinvault_scrub.engine.model import Status, io_failure

_staged_serial = itertools.count()  # next() on it is atomic under the GIL

# Below this many files per worker a process pool costs more than it saves (a care scrub of a
# 12 MP JPEG takes a few milliseconds; starting and feeding a pool takes tens).
_MIN_FILES_PER_WORKER = 16
# A thread costs far less to start; below this many files it still does not pay.
_MIN_CARE_FILES_PER_THREAD = 4


def parse_region(text: str) -> Region:
    """`X,Y,W,H[:LABEL]` in displayed-image pixels."""
    coords, _, label = text.partition(":")
    parts = coords.split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError("expected X,Y,W,H[:LABEL] with whole numbers") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError("region needs x,y >= 0 and a positive width and height")
    return Region(x, y, w, h, label.strip())


# File name extensions by output format; the first is given to an output whose name has none
# of them (a deidentified TIFF is a PNG, a deidentified HEIC photo a JPEG).
_EXTENSIONS = {
    "jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "png": (".png",),
    "tiff": (".tiff", ".tif"),
    "heif": (".heic", ".heif", ".hif"),
    "webp": (".webp",),
    "gif": (".gif",),
}


def _named_for_format(target: str, output_format: str | None) -> str:
    """`target` with the extension of the format it holds (unchanged when it already has one)."""
    extensions = _EXTENSIONS.get(output_format or "")
    stem, ext = os.path.splitext(target)
    if not extensions or ext.lower() in extensions:
        return target
    return stem + extensions[0]


def _place(staged: str, wanted: str) -> str:
    """Move a finished output to `wanted` without ever replacing a file that is there: one
    with the same bytes (this input, scrubbed before) is left as it is; a different one (an
    original, another photo's output) keeps its name, and the output takes the next free
    name, -2, -3... The name is claimed with O_EXCL, so two runs cannot take it both."""
    stem, ext = os.path.splitext(wanted)
    candidate = wanted
    for n in itertools.count(2):
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            if filecmp.cmp(candidate, staged, shallow=False):
                os.unlink(staged)
                return candidate
            candidate = f"{stem}-{n}{ext}"
            continue
        os.close(fd)
        os.replace(staged, candidate)
        return candidate
    raise AssertionError("unreachable")  # itertools.count never ends


def _scrub_one(args: tuple[str, str, str, list[Region]]) -> dict[str, Any]:
    path, target, profile, regions = args
    folder, name = os.path.split(target)
    # Written under a hidden name first: where it ends is decided once its format is known.
    staged = os.path.join(folder, f".{name}.{os.getpid()}.{next(_staged_serial)}.new")
    result = scrub_file(path, staged, profile, redactions=regions)
    if result.ok:
        try:
            target = _place(staged, _named_for_format(target, result.output_format))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            result.status, result.reason = Status.REJECTED, io_failure("write output", exc)
    if profile != Profile.CARE.value or result.format != "jpeg":
        _keep_freed_buffers()  # this one was read whole: reuse such buffers from now on
    return {
        "input": path,
        "output": target if result.ok else None,
        "status": result.status.value,
        "reason": result.reason,
        "removed": result.removed,
        "faces_redacted": result.faces_redacted,
        "needs_review": result.needs_review,
        "captured_at": result.captured_at.isoformat() if result.captured_at else None,
        "findings": [f.as_dict() for f in result.findings],
        "record": result.record,
    }


class _NoBar:
    def update(self) -> None:
        pass

    def close(self) -> None:
        pass


def _workers(jobs: int, min_per_worker: int) -> int:
    """Processes worth starting: the cores we may run on, but none for a small batch."""
    # The cores this process may run on (taskset, cgroup cpusets), not the machine's count.
    cores = len(os.sched_getaffinity(0)) or 1
    return max(1, min(cores, jobs // max(1, min_per_worker)))


def walk(root: str, *, skip: str | None = None) -> Iterator[str]:
    """Every file under `root`, folder by folder, in name order (`scrub` and `scan` alike);
    not inside the folder `skip` (an output folder inside the input folder)."""
    skipped = os.path.realpath(skip) if skip else None
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        if skipped:
            dirnames[:] = [
                d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) != skipped
            ]
        for name in sorted(files):
            yield os.path.join(dirpath, name)


def _expand(inputs: list[str], out_dir: str) -> list[tuple[str, str]]:
    """(file, name of its output relative to the output folder) for each input: a file is
    named after itself, a folder stands for every file in it, named by its path inside."""
    found: list[tuple[str, str]] = []
    for given in inputs:
        if os.path.isdir(given):
            found += [(p, os.path.relpath(p, given)) for p in walk(given, skip=out_dir)]
        else:
            found.append((given, os.path.basename(given)))
    return found


def _held_in_output(out_dir: str, inputs: list[str]) -> int:
    """Files in `out_dir` when it lies inside an input folder: walk() leaves them out."""
    out_real = os.path.realpath(out_dir)
    for given in inputs:
        if os.path.isdir(given) and out_real.startswith(os.path.realpath(given) + os.sep):
            return sum(len(files) for _, _, files in os.walk(out_dir))
    return 0


def _same_folder(path: str, target: str) -> bool:
    """True if `target` would land in the folder `path` is in (under the same name or not)."""
    try:
        return os.path.samefile(os.path.dirname(path) or ".", os.path.dirname(target) or ".")
    except OSError:  # a folder that does not exist yet is not the input's
        return False


def _output_paths(names: list[str], out_dir: str) -> list[str]:
    """One output per input name, inside `out_dir`; names that would collide (IMG_0001.jpg from
    two phone folders) get -2, -3... after the name instead of overwriting each other.
    Names are told apart by their stem, since an output's extension follows its format
    (scan.tif and scan.png may both end as PNGs)."""
    taken: set[str] = set()
    paths = []
    for name in names:
        stem, ext = os.path.splitext(name)
        unique, n = stem, 1
        while unique in taken:
            n += 1
            unique = f"{stem}-{n}"
        taken.add(unique)
        paths.append(os.path.join(out_dir, unique + ext))
    return paths


def _thread_map(fn: Any, jobs: list[Any], workers: int) -> Iterator[Any]:
    """fn over jobs on `workers` threads, results in input order.

    For work that runs outside the GIL (a care scrub of a JPEG is pread, the RE2 marker search
    and write): threads start in microseconds where a process pool costs tens of milliseconds
    (its import alone, with logging and multiprocessing, about 25 ms).
    """
    import threading

    results: list[Any] = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]
    pending = iter(range(len(jobs)))
    take = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            with take:
                i = next(pending, None)
            if i is None:
                return
            try:
                results[i] = (True, fn(jobs[i]))
            except BaseException as exc:  # handed to the caller, raised there
                results[i] = (False, exc)
            done[i].set()

    threads = [threading.Thread(target=work, name="scrub", daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for i in range(len(jobs)):
            done[i].wait()
            ok, value = results[i]
            results[i] = None
            if not ok:
                raise value
            yield value
    finally:
        # Interrupted (Ctrl-C, a closed pipe, a failure): no new files, and the ones in hand
        # are finished (milliseconds each) rather than cut off with their partial outputs left.
        stop.set()
        for thread in threads:
            thread.join()


def run_many(
    fn: Any,
    jobs: list[Any],
    desc: str,
    *,
    min_per_worker: int = _MIN_FILES_PER_WORKER,
    threads: bool = False,
) -> Iterator[Any]:
    """Results in input order; a thread or process per core for many files; a bar only on a
    terminal. `threads` for work that leaves the GIL (see _thread_map), else processes."""
    workers = _workers(len(jobs), min_per_worker)
    bar: Any = _NoBar()
    if sys.stderr.isatty():
        from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs in the lock

        # No monitor thread: the process pool forks its workers after the bar exists, and a
        # fork while another thread may hold a lock (stderr's, tqdm's) can leave a worker
        # waiting on it for ever.
        tqdm.monitor_interval = 0
        bar = tqdm(total=len(jobs), desc=desc, unit="file", file=sys.stderr)
    try:
        if workers <= 1:
            for job in jobs:
                yield fn(job)
                bar.update()
        elif threads:
            for item in _thread_map(fn, jobs, workers):
                yield item
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=workers) as pool:
                for item in pool.map(
                    fn, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 4)))
                ):
                    yield item
                    bar.update()
    finally:
        bar.close()


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized to the terminal without `import shutil` (which argparse does
    for every option added, about 4 ms at each start)."""

    def __init__(self, prog: str) -> None:
        try:
            columns = os.get_terminal_size().columns
        except OSError:  # not a terminal
            columns = 80
        super().__init__(prog, width=columns - 2)


def _scrub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinvault scrub",
        formatter_class=_HelpFormatter,
        description="Scrub images: metadata removed (care) or de-identified (deidentify). "
        "Each input is written to DIR under its own name (the extension of its output format; "
        "names that collide get -2, -3...); a rejected input is not written, and the reason "
        "is printed. Nothing is ever replaced: the inputs are not changed, and a file already "
        "in DIR stays (an identical output is not written again; a different one takes the "
        "next free name).",
        epilog="Exit status: 0 every input scrubbed, 1 some input rejected, 2 usage error. "
        "With --json each line holds input, output (null if rejected), status (scrubbed or "
        "rejected), reason, removed, faces_redacted, needs_review, captured_at, findings "
        "and the de-identification record.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files to scrub, or folders (every file in them, subfolders kept)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default=Profile.CARE.value,
        help="care (the default): for treatment; every identifying byte of metadata removed, "
        "the picture kept exactly. deidentify: for use beyond care (teaching, research, "
        "publication); also timestamps removed and faces, barcodes, burned-in text and the "
        "--redact regions covered, the image re-encoded",
    )
    parser.add_argument(
        "--redact",
        action="append",
        default=[],
        metavar="X,Y,W,H[:LABEL]",
        help="a region to cover: left, top, width and height in pixels of the image as it is "
        "displayed (turned upright), with an optional label such as tattoo (deidentify only; "
        "repeatable)",
    )
    parser.add_argument(
        "--json", dest="as_json", action="store_true", help="one JSON object per input per line"
    )
    return parser


@functools.cache  # once per process
def _keep_freed_buffers() -> None:
    """Let glibc reuse freed multi-megabyte buffers instead of unmapping and refaulting them.

    By default every photo-sized buffer (input read, output join) is a fresh mmap that the
    kernel zero-fills page by page and unmaps on free: for a batch of files read whole that
    costs more system time than the scrub itself (measured: 20 12 MP PNGs 2.9 s -> 1.6 s). A
    short-lived CLI can afford to keep up to this much freed memory for reuse. A care scrub of
    a JPEG streams through a small buffer and needs none of this (nor ctypes' import time).
    """
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's ceiling for this setting
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _attached_redact_values(argv: list[str]) -> list[str]:
    """`--redact -10,5,20,20` as `--redact=-10,5,20,20`: argparse takes a value that starts
    with "-" for an option and says only that --redact needs an argument; attached, the value
    reaches parse_region, which says what is wrong with it."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--redact":
            value = next(args, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                out.append(f"--redact={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def _shown(path: str) -> str:
    """A file name as the plain-text output prints it: one line, whatever the name holds (a
    newline, or bytes that are not UTF-8, would break the line or the terminal's encoding)."""
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


def run_scrub(argv: list[str]) -> int:
    """`clinvault scrub` without Typer: parse argv, scrub, print one line per input; exit code."""
    parser = _scrub_parser()
    args = parser.parse_args(_attached_redact_values(argv))
    profile = Profile(args.profile)
    try:
        regions = [parse_region(r) for r in args.redact]
    except ValueError as exc:
        parser.error(f"--redact: {exc}")
    if regions and profile is not Profile.DEIDENTIFY:
        parser.error("--redact needs --profile deidentify")
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error("--out: a file of that name exists; give a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out: cannot create the output directory ({exc.strerror or 'error'})")
    found = _expand([str(p) for p in args.inputs], str(out))
    if not found:
        sys.stderr.write("clinvault scrub: no files in the given folders\n")
    held = _held_in_output(str(out), [str(p) for p in args.inputs])
    if held:
        sys.stderr.write(
            f"clinvault scrub: {held} file(s) already in the output directory, which is inside "
            "an input folder, are not scrubbed\n"
        )
    targets = _output_paths([name for _, name in found], str(out))
    for (path, _), target in zip(found, targets, strict=True):
        if _same_folder(path, target):
            parser.error(
                "--out: the output directory holds the inputs themselves; their scrubbed "
                "copies would replace the originals (choose another directory)"
            )
    try:
        for folder in {os.path.dirname(t) for t in targets}:  # a folder's subfolders
            os.makedirs(folder, exist_ok=True)
    except OSError:
        parser.error("--out: cannot create a folder inside the output directory")
    jobs = [
        (path, target, profile.value, regions)
        for (path, _), target in zip(found, targets, strict=True)
    ]
    care = profile is Profile.CARE
    # A deidentify scrub takes a few hundred milliseconds of Python, Pillow and the face model:
    # worth a process from two files on. A care scrub is mostly I/O and the marker search,
    # which leave the GIL: threads, worth it from a handful of files.
    per_worker = _MIN_CARE_FILES_PER_THREAD if care else 1
    rejected = 0
    write = _line_writer()
    for line in run_many(_scrub_one, jobs, "scrub", min_per_worker=per_worker, threads=care):
        if line["status"] != "scrubbed":
            rejected += 1
        if args.as_json:
            write(json.dumps(line, sort_keys=True) + "\n")
        elif line["status"] == "scrubbed":
            write(f"scrubbed {_shown(line['input'])} -> {_shown(line['output'])}\n")
        else:
            write(f"rejected {_shown(line['input'])}: {line['reason']}\n")
    sys.stdout.flush()
    return 1 if rejected else 0


def _line_writer() -> Any:
    """sys.stdout.write, or, when the lines and the progress bar share a terminal, a writer
    that lifts the bar, prints the line above it and puts the bar back."""
    if not (sys.stderr.isatty() and sys.stdout.isatty()):
        return sys.stdout.write
    from tqdm import tqdm

    def write(text: str) -> None:
        with tqdm.external_write_mode(file=sys.stdout):
            sys.stdout.write(text)
            sys.stdout.flush()

    return write
