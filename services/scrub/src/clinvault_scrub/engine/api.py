"""The public entry point: scrub(bytes, profile, ...) -> ScrubResult. Never raises."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import struct
from collections.abc import Sequence
from typing import Any

from clinvault_scrub.engine import containers, heif, jpeg, png, record, verify
from clinvault_scrub.engine import exif as exif_mod
from clinvault_scrub.engine.containers import note_removed
from clinvault_scrub.engine.formats import SNIFF_BYTES, describe_format, sniff_format
from clinvault_scrub.engine.model import (
    Hints,
    Limits,
    Profile,
    Region,
    Rejected,
    ScrubResult,
    Status,
    io_failure,
)

_DEFAULT_LIMITS = Limits()
_DNG_VERSION = 50706  # the TIFF tag that makes a file a DNG
# A deidentify record's checks, each with the detector label that reports it unavailable.
_SEARCHES = (("faces", "faces"), ("caller_regions", ""), ("barcodes", "barcodes"), ("ocr", "text"))
# Care-scrub names of removed timestamps (a deidentify scrub reports them as "timestamps").
_TIMESTAMPS = {"exif.timestamps", "png.time"}


# What the fail-closed check of every output proves (verify.check), as the record names it.
_OUTPUT_CHECKS = ("reparse", "metadata_whitelist", "single_image", "no_trailer")


def _is_dng(data: bytes) -> bool:
    with contextlib.suppress(ValueError, struct.error):  # unreadable tags: the decoder decides
        return _DNG_VERSION in exif_mod.read_exif(data).tags
    return False


def _care(
    data: bytes,
    fmt: str,
    limits: Limits,
    result: ScrubResult,
    runs: dict[int, int],
    *,
    prove_decodes: bool = True,
) -> bytes:
    if fmt == "jpeg":
        j = jpeg.scrub_care(data, max_pixels=limits.max_pixels)
        result.removed, result.captured_at = j.removed, j.captured_at
        runs.update(j.scan_runs)
        return j.output
    if fmt == "png":
        p = png.scrub_care(data, max_pixels=limits.max_pixels, max_frames=limits.max_frames)
        result.removed, result.captured_at = p.removed, p.captured_at
        return p.output
    if fmt in ("webp", "gif"):
        fn = containers.scrub_webp if fmt == "webp" else containers.scrub_gif
        c = fn(data, max_pixels=limits.max_pixels, max_frames=limits.max_frames)
        result.removed, result.captured_at = c.removed, c.captured_at
        return c.output
    if fmt == "heif":
        return _care_heif(data, limits, result, prove_decodes=prove_decodes)
    if _is_dng(data):
        # A RAW file in a TIFF container: its first image is a small preview and the photo
        # itself is in sub-images; scrubbed as a TIFF, the preview would pass for the photo.
        raise Rejected("unsupported file type: Adobe DNG (RAW)")
    from clinvault_scrub.engine.decode import recode_tiff

    return _recoded(recode_tiff, data, limits, result, " losslessly")


_PIXEL_LIMIT = "image exceeds the pixel limit"


def _care_heif(data: bytes, limits: Limits, result: ScrubResult, *, prove_decodes: bool) -> bytes:
    """The container rewrite (pixels as they came), its output decoded once in the sandbox to
    prove it shows a picture; the re-encode for what the rewrite does not handle or refuses.
    A deidentify scrub decodes the image itself next, and need not have it proved first."""
    from clinvault_scrub.engine.decode import decodes, recode_heif
    from clinvault_scrub.engine.sandbox import run_limited

    refused = ""  # the rewrite's own reason, clearer than a decoder's exception name
    try:
        h = heif.scrub_heif(data, max_pixels=limits.max_pixels)
    except heif.HeifUnsupported:
        pass
    except Rejected as exc:
        if str(exc) == _PIXEL_LIMIT:  # no decoder gets it either
            raise
        refused = str(exc)  # a structure this strict parser refuses may be one libheif reads
    else:
        try:
            # The coded bytes were copied unread: a file whose image data is corrupt would
            # otherwise come out "scrubbed" and show nothing.
            if prove_decodes:
                run_limited(decodes, (limits,), limits, data=h.output)
        except Rejected as exc:
            refused = str(exc)
        else:
            result.removed, result.captured_at = h.removed, h.captured_at
            return h.output
    try:
        return _recoded(recode_heif, data, limits, result, "")
    except Rejected as exc:
        raise Rejected(refused or str(exc)) from None


def _recoded(recode: Any, data: bytes, limits: Limits, result: ScrubResult, how: str) -> bytes:
    """A TIFF or HEIF re-encoded by the decoder in the sandbox, and reported as such."""
    from clinvault_scrub.engine.sandbox import run_limited

    r = run_limited(recode, (limits,), limits, data=data)
    result.removed, result.captured_at = r.removed, r.captured_at
    result.reencoded = True
    result.removed.append(f"container rewritten (pixels re-encoded{how})")
    output: bytes = r.output
    return output


def scrub(
    data: bytes,
    profile: Profile | str = Profile.CARE,
    *,
    redactions: Sequence[Region] = (),
    keep: Sequence[Region] = (),
    hints: Hints | None = None,
    limits: Limits = _DEFAULT_LIMITS,
    detect_faces: bool = True,
    read_text: bool = True,
) -> ScrubResult:
    """Scrub one image. Bad input ends as status "rejected" with a reason; this never raises."""
    profile = Profile(profile)
    result = ScrubResult(status=Status.REJECTED)
    checks: list[str] = []
    terms = hints.terms() if hints else []
    try:
        if len(data) > limits.max_bytes:
            raise Rejected("file exceeds the size limit")
        fmt = sniff_format(data[:SNIFF_BYTES])
        if fmt is None:
            raise Rejected(f"unsupported file type: {describe_format(data[:SNIFF_BYTES])}")
        result.format = fmt
        jpeg_runs: dict[int, int] = {}
        output = _care(data, fmt, limits, result, jpeg_runs, prove_decodes=profile is Profile.CARE)
        out_fmt = fmt
        if profile is Profile.DEIDENTIFY:
            from clinvault_scrub.engine import deidentify

            # A JPEG is decoded from its care output: the same entropy-coded data (pixels are
            # identical) and the Orientation tag, but none of the hostile-input surface or
            # parsing cost of the original metadata (Pillow spends ~15 ms on a phone's EXIF
            # and MPF). Other formats are decoded from the input (TIFF and HEIF care outputs
            # are re-encodes).
            d = deidentify.run(
                output if fmt == "jpeg" else data,
                input_format=fmt,
                redactions=list(redactions),
                keep=list(keep),
                hints=terms,
                limits=limits,
                detect_faces=detect_faces,
                read_text=read_text,
            )
            output, out_fmt = d.output, d.output_format
            jpeg_runs = {}  # a new encoding: every byte is searched
            result.reencoded = True
            if result.captured_at is not None or _TIMESTAMPS & set(result.removed):
                note_removed(result.removed, "timestamps")  # not even the capture time is reported
            result.captured_at = None
            if d.orientation_applied:
                note_removed(result.removed, "orientation (applied to pixels)")
            if d.pages_dropped:
                note_removed(result.removed, "extra frames/pages")
            result.findings = d.findings
            result.faces_redacted = d.faces_redacted
            result.review_reasons = d.review_reasons
            result.needs_review = bool(d.review_reasons)
            # The record names the searches that ran, not those whose detector was missing.
            missing = {f.label for f in d.findings if f.kind == "detector_unavailable"}
            checks += [check for check, label in _SEARCHES if label not in missing]
        problems = verify.check(
            output, out_fmt, hints=terms, jpeg_runs=jpeg_runs, reencoded=result.reencoded
        )
        checks += _OUTPUT_CHECKS
        if terms:
            checks.append("hint_bytes")
        if problems:
            raise Rejected("output failed verification: " + "; ".join(sorted(set(problems))))
        result.status = Status.SCRUBBED
        result.output = output
        result.output_format = out_fmt
    except Rejected as exc:
        result.status, result.reason, result.output = Status.REJECTED, str(exc), None
    except Exception as exc:
        result.status, result.output = Status.REJECTED, None
        result.reason = f"internal error while scrubbing ({type(exc).__name__})"
    return _finish(result, profile, checks)


def _finish(result: ScrubResult, profile: Profile, checks: list[str]) -> ScrubResult:
    result.record = record.build(
        profile=profile,
        input_format=result.format,
        output_format=result.output_format,
        reencoded=result.reencoded,
        removed=result.removed,
        findings=result.findings,
        checks=checks if result.ok else [*checks, "failed"],
        review_reasons=result.review_reasons,
    )
    return result


_partial_serial = itertools.count()  # next() on it is atomic under the GIL


def open_input(path: str, limits: Limits = _DEFAULT_LIMITS) -> tuple[int, int]:
    """(descriptor, size) of the regular file `path`, opened for reading. Raises OSError, or
    Rejected for anything but a regular file (a named pipe would block the open or the read
    for ever, a device would be read without end) and for a file over the size limit."""
    # O_NONBLOCK: opening a named pipe waits for a writer; with it, the open returns at once.
    # It changes nothing for a regular file, whose reads never block.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # as reading it would say
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("not a regular file")
        if st.st_size > limits.max_bytes:  # before reading it
            raise Rejected("file exceeds the size limit")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_input(path: str, limits: Limits = _DEFAULT_LIMITS) -> bytes:
    """The bytes of the regular file `path` (see open_input). Raises OSError or Rejected."""
    fd, _ = open_input(path, limits)
    try:
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limits.max_bytes + 1)  # a file that grew since: cut off, then refused
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:
        raise Rejected("file exceeds the size limit")
    return data


def scrub_file(
    source: str,
    target: str,
    profile: Profile | str = Profile.CARE,
    *,
    redactions: Sequence[Region] = (),
    limits: Limits = _DEFAULT_LIMITS,
) -> ScrubResult:
    """Scrub the file `source` into the file `target`, which appears only if the scrub succeeds.

    A care scrub of a JPEG streams from file to file (see jpeg.FileSource): the output is
    written to a hidden file beside `target`, checked there, and renamed into place. Anything
    else is read whole and goes through scrub(). The result carries no output bytes. Never
    raises: an unreadable input or unwritable target ends as a rejection with the reason.
    """
    profile = Profile(profile)
    directory, name = os.path.split(target)
    # Unique per call: threads of one process may scrub into the same directory at once.
    partial = os.path.join(directory, f".{name}.{os.getpid()}.{next(_partial_serial)}.partial")
    result = ScrubResult(status=Status.REJECTED)
    try:
        fd, size = open_input(source, limits)
    except OSError as exc:
        result.reason = io_failure("read input", exc)
        return _finish(result, profile, [])
    except Rejected as exc:
        result.reason = str(exc)
        return _finish(result, profile, [])
    try:
        try:
            head = os.pread(fd, SNIFF_BYTES, 0)
            if profile is Profile.CARE and sniff_format(head) == "jpeg":
                return _stream_care_jpeg(fd, size, partial, target, limits)
            with open(fd, "rb", closefd=False) as f:
                data = f.read(limits.max_bytes + 1)  # it may have grown since it was measured
        except OSError as exc:
            result.reason = io_failure("read input", exc)
            return _finish(result, profile, [])
        result = scrub(data, profile, redactions=redactions, limits=limits)
        del data
        if result.ok and result.output is not None:
            try:
                with open(partial, "wb") as out:
                    out.write(result.output)
                os.replace(partial, target)
            except OSError as exc:
                _discard(partial)
                result.status, result.output_format = Status.REJECTED, None
                result.reason = io_failure("write output", exc)
                return _finish(result, profile, result.record.get("checks", []))
        result.output = None
        return result
    finally:
        os.close(fd)


def _stream_care_jpeg(fd: int, size: int, partial: str, target: str, limits: Limits) -> ScrubResult:
    result = ScrubResult(status=Status.REJECTED, format="jpeg")
    checks: list[str] = []
    try:
        out = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        result.reason = io_failure("write output", exc)
        return _finish(result, Profile.CARE, checks)
    try:
        j = jpeg.scrub_care_file(jpeg.FileSource(fd, size), out, max_pixels=limits.max_pixels)
        result.removed, result.captured_at = j.removed, j.captured_at
        # The fail-closed check re-reads the output from the file it was written to.
        problems = verify.check_jpeg_file(out, j.written, jpeg_runs=j.scan_runs)
        checks += _OUTPUT_CHECKS
        if problems:
            raise Rejected("output failed verification: " + "; ".join(sorted(set(problems))))
        os.close(out)
        out = -1
        os.replace(partial, target)
        result.status, result.output_format = Status.SCRUBBED, "jpeg"
    except Rejected as exc:
        result.reason = str(exc)
    except OSError as exc:
        result.reason = io_failure("write output", exc)
    except Exception as exc:
        result.reason = f"internal error while scrubbing ({type(exc).__name__})"
    finally:
        if out >= 0:
            os.close(out)
        if not result.ok:
            _discard(partial)
    return _finish(result, Profile.CARE, checks)


def _discard(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
