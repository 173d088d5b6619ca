"""A short mutation-fuzzing campaign on every run (fixed seeds, so a failure reproduces):
each mutated corpus file ends scrubbed or rejected with a reason, quickly, with no canary in
its output. Longer campaigns: `python tests/scrub/scrub_fuzz.py --help`."""

from __future__ import annotations

from pathlib import Path

import pytest
import scrub_corpus as corpus
import scrub_fuzz

from clinvault_scrub import Profile

FINDINGS = Path(__file__).parent / "fuzz_findings"


@pytest.mark.parametrize(("profile", "runs"), [(Profile.CARE, 600), (Profile.DEIDENTIFY, 40)])
def test_mutated_files_end_safely(profile: Profile, runs: int) -> None:
    tally: dict[str, int] = {}
    campaign = scrub_fuzz.campaign(profile, runs=runs, seed=7, tally=tally)
    found = [(name, problems) for name, _, problems in campaign]
    assert found == []
    # Both outcomes occur: the mutations reach past the first checks.
    assert tally["scrubbed"] >= runs // 5, tally
    assert tally["rejected"] >= runs // 5, tally


def test_the_fuzzer_sees_a_leak_and_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above could fail: a canary in an output, or an exception, is reported."""
    from clinvault_scrub.engine import jpeg

    out = scrub_fuzz.scrub(corpus.leaky_jpeg()).output
    assert out is not None
    assert not scrub_fuzz._leaks(out, Profile.CARE)
    in_metadata = out[:2] + b"\xff\xfe\x00\x0bCANARYXQZ" + out[2:]
    in_image_data = out[:-2] + b"CANARYXQZ" + out[-2:]  # copied as it is by a care scrub
    assert scrub_fuzz._leaks(in_metadata, Profile.CARE)
    assert not scrub_fuzz._leaks(in_image_data, Profile.CARE)
    assert scrub_fuzz._leaks(in_image_data, Profile.DEIDENTIFY)  # a new encoding has none
    assert scrub_fuzz._leaks(
        out[:2] + b"\xff\xfe\x00\x0e" + "CANARY".encode("utf-16-le") + out[2:], Profile.CARE
    )
    # The findings that made these rules: each scrubbed, its canary only in image data.
    for name in ("care-jpeg-in-scan-text.bin", "care-png-in-idat-text.bin"):
        data = (FINDINGS / name).read_bytes()
        result = scrub_fuzz.scrub(data)
        assert result.ok
        assert result.output is not None
        assert b"CANARY" in result.output
        assert not scrub_fuzz._leaks(result.output, Profile.CARE)
        assert not scrub_fuzz._leaks(
            scrub_fuzz.scrub(data, Profile.DEIDENTIFY).output or b"", Profile.DEIDENTIFY
        )

    def broken(data: bytes, **kw: object) -> jpeg.JpegScrub:
        raise RuntimeError("engine bug")

    monkeypatch.setattr(jpeg, "scrub_care", broken)
    assert scrub_fuzz.problems(corpus.leaky_jpeg(), Profile.CARE) == [
        "rejected without a proper reason: 'internal error while scrubbing (RuntimeError)'"
    ]


def test_a_rewritten_heif_libheif_refuses_is_rejected_with_a_reason() -> None:
    """Found by the fuzzer: a mutated colour property the rewrite copies and libheif refuses
    to open (unknown NCLX transfer characteristics) ended as an internal error."""
    data = (FINDINGS / "heif-bad-nclx.bin").read_bytes()
    for profile in (Profile.CARE, Profile.DEIDENTIFY):  # the sandboxed decoder refuses it
        result = scrub_fuzz.scrub(data, profile)
        assert result.reason == "image cannot be decoded (UnidentifiedImageError)"
    from clinvault_scrub.engine import heif, verify

    rewritten = heif.scrub_heif(data, max_pixels=10**8).output  # the output check alone
    problems = verify.check(rewritten, "heif", hints=[], reencoded=False)
    assert "output does not open (ValueError)" in problems


def test_text_in_a_scan_that_round_trips_through_the_encoder_is_picture_content() -> None:
    """Found by the fuzzer: text copied into the scan of a JPEG coded with the deidentify
    encoder's own tables decodes to coefficients that code to the same bytes again, so it
    comes out of the re-encode; only there, and only as a plain re-encode of the pixels has it."""
    data = (FINDINGS / "deidentify-jpeg-scan-text-round-trips.bin").read_bytes()
    result = scrub_fuzz.scrub(data, Profile.DEIDENTIFY)
    assert result.ok, result.reason
    out = result.output or b""
    assert b"CANARY" in out  # the fact this test documents
    assert not scrub_fuzz._leaks(out, Profile.CARE)  # in the image data, nowhere else
    assert scrub_fuzz._pixel_content(data, out)
    assert scrub_fuzz.problems(data, Profile.DEIDENTIFY) == []
    # A canary outside the image data is never excused.
    assert not scrub_fuzz._pixel_content(data, out[:2] + b"\xff\xfe\x00\x08CANARY" + out[2:])
