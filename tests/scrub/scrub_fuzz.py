"""Mutation fuzzing of the scrub engine: mutated copies of the leak corpus must end scrubbed or
rejected with a reason, never raise, never take long, and never let a canary through outside
the image data.

`test_fuzz.py` runs a short, fixed-seed campaign on every test run. A longer one, from the
project root, for as long as you like (each finding is saved for a regression test):

    .venv/bin/python tests/scrub/scrub_fuzz.py --seconds 600 --profile care --out /tmp/findings
"""

from __future__ import annotations

import argparse
import io
import random
import struct
import sys
import time
import traceback
import zlib
from collections.abc import Iterator
from hashlib import sha1
from pathlib import Path

import scrub_corpus as corpus

from clinvault_scrub import Profile, scrub

CANARY = b"CANARY"  # every corpus canary starts so (corpus.canary)
SLOW_SECONDS = 20.0


def seeds() -> dict[str, bytes]:
    """One file per format and leak vector family (animated ones too)."""
    from PIL import Image

    frames = [corpus.photo(64, 48, seed=i) for i in range(3)]
    out = {
        "jpeg": corpus.leaky_jpeg(),
        "jpeg_progressive": corpus.leaky_jpeg(progressive=True),
        "png": corpus.leaky_png(),
        "webp": corpus.leaky_webp(),
        "gif": corpus.leaky_gif(),
        "tiff": corpus.leaky_tiff(),
        "heif": corpus.leaky_heif(),
    }
    for name, fmt, extra in (("webp_animated", "WEBP", {"lossless": True}), ("apng", "PNG", {})):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **extra)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, "JPEG", icc_profile=corpus.icc_with_text("x", "y"))
    out["jpeg_icc"] = buf.getvalue()
    return out


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """A few random edits: bit flips, extreme values, cuts, insertions, copied blocks."""
    d = bytearray(data)
    for _ in range(rnd.choice((1, 1, 2, 4, 8))):
        if not d:
            break
        i = rnd.randrange(len(d))
        op = rnd.randrange(7)
        if op == 0:
            d[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            d[i] = rnd.choice((0x00, 0xFF, 0x7F, 0x80, rnd.randrange(256)))
        elif op == 2:
            del d[i : i + rnd.randrange(1, 64)]
        elif op == 3:
            d[i:i] = rnd.randbytes(rnd.randrange(1, 16))
        elif op == 4:  # a block of the file copied elsewhere (segments, chunks, text)
            j = rnd.randrange(len(d))
            d[i:i] = d[j : j + rnd.randrange(1, 512)]
        elif op == 5:  # a length or offset field set to an extreme
            field = rnd.choice((b"\xff\xff", b"\x00\x00", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff"))
            d[i : i + len(field)] = field
        else:
            del d[i:]
    return bytes(d)


_PNG_PIXELS = (b"IDAT", b"fdAT")


def _png_chunks(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, type) of each whole chunk of a PNG (none if `data` is not one)."""
    pos = 8
    while data.startswith(b"\x89PNG") and pos + 12 <= len(data):
        end = pos + 12 + struct.unpack(">I", data[pos : pos + 4])[0]
        if end > len(data):
            return
        yield pos, end, data[pos + 4 : pos + 8]
        pos = end


def with_png_checksums(data: bytes) -> bytes:
    """A mutated PNG with its chunk checksums made right again, so that the mutation reaches
    the chunk logic instead of ending at the checksum check."""
    d = bytearray(data)
    for start, end, _ in _png_chunks(data):
        d[end - 4 : end] = struct.pack(">I", zlib.crc32(d[start + 4 : end - 4]))
    return bytes(d)


def _in_image_data(out: bytes, at: int) -> bool:
    """Whether offset `at` of a care output lies in image data the scrub copies as it is (a
    JPEG's entropy-coded data, a GIF's image blocks, a PNG's IDAT and fdAT chunks): text a
    mutation moved there is pixels to a decoder, and only a new encoding (deidentify)
    removes it."""
    if out.startswith(b"\xff\xd8"):
        return out.rfind(b"\xff\xda", 0, at) >= 0
    if out.startswith(b"GIF8"):
        return out.rfind(b"\x2c", 0, at) >= 0  # after an image descriptor
    return any(start <= at < end and kind in _PNG_PIXELS for start, end, kind in _png_chunks(out))


def _inflated_metadata(out: bytes) -> bytes:
    """Every zlib stream in a PNG's chunks other than its pixels (IDAT, fdAT), decompressed."""
    return b"".join(
        corpus.inflate_all(out[:8] + out[start:end])
        for start, end, kind in _png_chunks(out)
        if kind not in _PNG_PIXELS
    )


def _leaks(out: bytes, profile: Profile) -> bool:
    for form in corpus.canary_forms("CANARY"):  # UTF-8, UTF-16 in both byte orders
        at = out.find(form)
        while at >= 0:
            if not (profile is Profile.CARE and _in_image_data(out, at)):
                return True
            at = out.find(form, at + 1)
    return CANARY in _inflated_metadata(out)


def problems(data: bytes, profile: Profile, tally: dict[str, int] | None = None) -> list[str]:
    """What is wrong with the engine's handling of `data` (empty: nothing); `tally` counts
    the outcomes (scrubbed, rejected)."""
    started = time.perf_counter()
    try:
        result = scrub(data, profile, read_text=False)
    except BaseException as exc:  # the engine must never raise
        return ["raised " + "".join(traceback.format_exception_only(exc)).strip()]
    if tally is not None:
        tally[result.status.value] = tally.get(result.status.value, 0) + 1
    found = []
    if time.perf_counter() - started > SLOW_SECONDS:
        found.append("slow")
    if not result.ok:
        if not result.reason or "internal error" in result.reason:
            found.append(f"rejected without a proper reason: {result.reason!r}")
    elif _leaks(result.output or b"", profile) and not _pixel_content(data, result.output or b""):
        found.append("canary in output")
    return found


def _pixel_content(data: bytes, out: bytes) -> bool:
    """True if every canary in a de-identified output lies in its image data and a plain
    re-encode of the input's decoded pixels holds it too: text a mutation copied into a
    JPEG's scan decodes to coefficients that an encoder with the same tables (Pillow's at
    quality 90, as the corpus was written) codes to the same bytes again. That is picture
    content, which a faithful re-encode keeps by design; metadata never is."""
    import io

    from PIL import Image

    from clinvault_scrub.engine.decode import JPEG_QUALITY

    if _leaks(out, Profile.CARE):  # a canary outside the image data
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    except Exception:
        return False
    return any(form in buf.getvalue() for form in corpus.canary_forms("CANARY"))


def campaign(
    profile: Profile,
    *,
    runs: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    tally: dict[str, int] | None = None,
) -> Iterator[tuple[str, bytes, list[str]]]:
    """(seed name, mutated file, problems) for every mutated file with a problem."""
    rnd = random.Random(seed)
    files = seeds()
    names = sorted(files)
    deadline = time.monotonic() + seconds if seconds else None
    done = 0
    while (runs is None or done < runs) and (deadline is None or time.monotonic() < deadline):
        name = rnd.choice(names)
        data = mutate(files[name], rnd)
        if data.startswith(b"\x89PNG") and rnd.random() < 0.8:
            data = with_png_checksums(data)
        done += 1
        found = problems(data, profile, tally)
        if found:
            yield name, data, found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--profile", choices=[p.value for p in Profile], default="care")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", type=Path, help="folder for the files that showed a problem")
    args = ap.parse_args()
    count = 0
    tally: dict[str, int] = {}
    profile = Profile(args.profile)
    for name, data, found in campaign(profile, seconds=args.seconds, seed=args.seed, tally=tally):
        count += 1
        digest = sha1(data).hexdigest()[:12]  # noqa: S324 - a file name, not security
        sys.stdout.write(f"{name} {digest}: {'; '.join(found)}\n")
        sys.stdout.flush()
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{args.profile}-{name}-{digest}.bin").write_bytes(data)
    sys.stdout.write(f"seed {args.seed}: {tally}, {count} files with a problem\n")
    return 1 if count else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
