"""`clinvault scrub` and `clinvault scan` through Typer's runner and as a module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import scrub_corpus as corpus
import typer
from typer.testing import CliRunner

from clinvault_scrub import scrub
from clinvault_scrub.cli import register
from conftest import CLINVAULT, scrub_cli

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("version")
    def _version() -> None:  # a second command keeps Typer in sub-command mode
        typer.echo("x")

    return app


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    files = {
        "photo.jpg": corpus.leaky_jpeg(),
        "scan.png": corpus.leaky_png(),
        "report.pdf": b"%PDF-1.7\n" + b"x" * 100,
        "notajpeg.jpg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: d / name for name in files}


def test_scrub_json_lines_and_exit_codes(
    app: typer.Typer, inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    good = [str(inputs["photo.jpg"]), str(inputs["scan.png"])]
    result = runner.invoke(app, ["scrub", *good, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["status"] for line in lines] == ["scrubbed", "scrubbed"]
    assert lines[0]["output"] == str(out / "photo.jpg")
    assert "exif.gps" in lines[0]["removed"]
    assert lines[0]["record"]["profile"] == "care"
    assert lines[0]["faces_redacted"] == 0
    assert b"CANARY" not in (out / "photo.jpg").read_bytes()

    bad = [str(inputs["report.pdf"]), str(inputs["notajpeg.jpg"]), str(inputs["photo.jpg"])]
    result = runner.invoke(app, ["scrub", *bad, "--out", str(out), "--json"])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["status"] == "rejected"
    assert lines[0]["output"] is None
    assert "PDF" in lines[0]["reason"]
    assert "SVG" in lines[1]["reason"]
    assert lines[2]["status"] == "scrubbed"
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--profile", "bogus"],
        ["--profile", "deidentify", "--redact", "1,2,3"],
        ["--profile", "deidentify", "--redact", "a,b,c,d:tattoo"],
        ["--redact", "1,2,3,4"],  # regions need the deidentify profile
    ],
)
def test_usage_errors_exit_2(
    app: typer.Typer, inputs: dict[str, Path], tmp_path: Path, args: list[str]
) -> None:
    result = runner.invoke(
        app, ["scrub", str(inputs["photo.jpg"]), "--out", str(tmp_path / "o"), *args]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_deidentify_with_redact_region(
    app: typer.Typer, inputs: dict[str, Path], tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "scrub",
            str(inputs["photo.jpg"]),
            "--out",
            str(tmp_path / "o"),
            "--profile",
            "deidentify",
            "--redact",
            "10,10,50,40:birthmark",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    line = json.loads(result.output)
    regions = [f for f in line["findings"] if f["kind"] == "region"]
    assert regions[0]["label"] == "birthmark"
    assert regions[0]["box"] == [10, 10, 60, 50]


def test_missing_input_is_rejected_not_a_crash(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["scrub", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "rejected" in result.output


def test_module_entry_point_keeps_input_order(inputs: dict[str, Path], tmp_path: Path) -> None:
    files = [str(inputs["photo.jpg"]), str(inputs["scan.png"]), str(inputs["report.pdf"])]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinvault_scrub.cli",
            "scrub",
            *files,
            "--out",
            str(tmp_path / "o"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["input"] for line in lines] == files  # input order kept
    assert "Traceback" not in proc.stderr
    assert proc.stderr == ""  # no progress bar when not on a terminal


def test_scan_reports_risks_without_pixels(
    app: typer.Typer, inputs: dict[str, Path], tmp_path: Path
) -> None:
    report_json, report_html = tmp_path / "r.json", tmp_path / "r.html"
    result = runner.invoke(
        app,
        [
            "scan",
            str(inputs["photo.jpg"].parent),
            "--json",
            str(report_json),
            "--html",
            str(report_html),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_json.read_text())
    by_path = {f["path"]: f for f in report["files"]}
    photo = by_path["photo.jpg"]["risks"]
    for cat in (
        "gps",
        "timestamps",
        "device_serials",
        "names_free_text",
        "thumbnails",
        "extra_images",
        "trailers",
    ):
        assert photo[cat], cat
    assert by_path["report.pdf"]["status"] == "not_an_image"
    assert by_path["report.pdf"]["format"] == "PDF"
    assert report["summary"]["at_risk"] == 2
    page = report_html.read_text()
    assert "<img" not in page
    assert "data:image" not in page
    assert "CANARY" not in page
    assert "CANARY" not in report_json.read_text()


def test_scrub_help_lists_every_option(app: typer.Typer) -> None:
    result = runner.invoke(app, ["scrub", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--profile", "--redact", "--json"):
        assert option in result.output


def test_process_pool_only_for_batches_worth_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from clinvault_scrub import batch

    monkeypatch.setattr(batch.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert batch._workers(3, 16) == 1  # a small care batch runs in this process
    assert batch._workers(40, 16) == 2
    assert batch._workers(1000, 16) == 4
    assert batch._workers(3, 1) == 3  # deidentify: a process per file, up to the cores
    monkeypatch.setattr(batch.os, "sched_getaffinity", lambda _pid: {0})
    assert batch._workers(1000, 1) == 1  # one core: never a pool


def test_thread_map_keeps_order_and_raises_in_the_caller() -> None:
    import time

    from clinvault_scrub import batch

    def slow_first(i: int) -> int:
        time.sleep(0.05 if i == 0 else 0)  # the first job finishes last
        return i * 10

    assert list(batch._thread_map(slow_first, list(range(20)), 3)) == [i * 10 for i in range(20)]

    def fails_on_three(i: int) -> int:
        if i == 3:
            raise ValueError("job 3")
        return i

    results = batch._thread_map(fails_on_three, list(range(6)), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="job 3"):
        next(results)


def test_inputs_with_the_same_name_get_their_own_outputs(tmp_path: Path) -> None:
    """Phone exports repeat names (IMG_0001.jpg in two folders): neither output overwrites the
    other, and each JSON line says where its output went. Nine files: worker threads on two
    cores."""
    inputs = []
    for folder in range(8):  # orientations 1-8 tell the outputs apart
        d = tmp_path / f"phone{folder}"
        d.mkdir()
        (d / "IMG_0001.jpg").write_bytes(corpus.leaky_jpeg(orientation=1 + folder))
        inputs.append(str(d / "IMG_0001.jpg"))
    inputs.append(inputs[0])  # the same file twice: two outputs too
    out = tmp_path / "out"
    status, lines, stderr = scrub_cli(*inputs, "--out", str(out))
    assert status == 0, stderr
    assert [line["input"] for line in lines] == inputs
    outputs = [line["output"] for line in lines]
    names = ("IMG_0001.jpg", "IMG_0001-2.jpg", "IMG_0001-3.jpg")
    assert outputs[:3] == [str(out / n) for n in names]
    assert len(set(outputs)) == len(inputs)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(o) for o in outputs)
    from PIL import Image

    for i, path in enumerate(outputs[:8]):  # each output is its own input's scrub
        assert (Image.open(path).getexif().get(0x0112) or 1) == 1 + i


def test_a_closed_pipe_ends_the_executable_quietly(inputs: dict[str, Path], tmp_path: Path) -> None:
    """`clinvault scrub ... | head`: the reader leaves early; no traceback, exit status 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first line written meets a closed pipe
    try:
        proc = subprocess.run(
            [CLINVAULT, "scrub", str(inputs["photo.jpg"]), "--out", str(tmp_path / "o"), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == ""
    assert (tmp_path / "o" / "photo.jpg").exists()  # the work done before the pipe closed stays


def test_output_names_follow_the_output_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deidentified one-page TIFF is a PNG and is named so; a PNG that came named .jpg
    leaves as .png; scan.tif and scan.png, both PNGs after deidentify, do not overwrite each
    other."""
    from clinvault_scrub.batch import run_scrub

    d = tmp_path / "in"
    d.mkdir()
    (d / "scan.tif").write_bytes(corpus.leaky_tiff(pages=1))  # one page: a PNG
    (d / "scan.png").write_bytes(corpus.leaky_png())
    (d / "photo.jpg").write_bytes(corpus.leaky_png())  # the content decides, not the name
    (d / "IMG_1.JPG").write_bytes(corpus.leaky_jpeg())
    inputs = [str(d / n) for n in ("scan.tif", "scan.png", "photo.jpg", "IMG_1.JPG")]
    out = tmp_path / "out"
    assert run_scrub([*inputs, "--out", str(out), "--profile", "deidentify", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [os.path.basename(line["output"]) for line in lines]
    assert names == ["scan.png", "scan-2.png", "photo.png", "IMG_1.JPG"]
    assert sorted(os.listdir(out)) == sorted(names)
    for name in names:
        assert _format_of(out / name) == ("JPEG" if name.endswith("JPG") else "PNG")


def _format_of(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return str(im.format)


def test_ctrl_c_stops_a_batch_cleanly(tmp_path: Path) -> None:
    """SIGINT in the middle of a threaded care batch: exit status 130, a one-line message and
    no traceback; every output present is whole and no partial file is left behind."""
    import signal

    d = tmp_path / "in"
    d.mkdir()
    data = corpus.leaky_jpeg()
    for i in range(2000):  # far more than can be scrubbed before the signal arrives
        (d / f"IMG_{i:04d}.jpg").write_bytes(data)
    out = tmp_path / "out"
    inputs = sorted(str(p) for p in d.iterdir())
    proc = subprocess.Popen(
        [CLINVAULT, "scrub", *inputs, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("scrubbed")  # under way
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr == "clinvault: interrupted\n"
    written = os.listdir(out)
    assert 0 < len(written) < 2000
    assert not [n for n in written if n.startswith(".")]  # no partial file left
    expected = scrub(data).output
    assert all((out / n).read_bytes() == expected for n in written)


def test_a_folder_is_scrubbed_with_its_subfolders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`clinvault scrub DCIM --out clean`: every file in the folder, subfolders kept in the
    output; what is not an image is reported, not copied."""
    from clinvault_scrub.batch import run_scrub

    dcim = tmp_path / "DCIM"
    (dcim / "100APPLE").mkdir(parents=True)
    (dcim / "101APPLE").mkdir()
    (dcim / "100APPLE" / "IMG_0001.JPG").write_bytes(corpus.leaky_jpeg())
    (dcim / "101APPLE" / "IMG_0001.JPG").write_bytes(corpus.leaky_jpeg(orientation=6))
    (dcim / "101APPLE" / "notes.txt").write_bytes(b"patient called back")
    (dcim / "cover.png").write_bytes(corpus.leaky_png())
    out = tmp_path / "clean"
    assert run_scrub([str(dcim), "--out", str(out), "--json"]) == 1  # notes.txt rejected
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [os.path.relpath(line["input"], dcim) for line in lines] == [
        "cover.png",
        "100APPLE/IMG_0001.JPG",
        "101APPLE/IMG_0001.JPG",
        "101APPLE/notes.txt",
    ]
    assert [line["status"] for line in lines] == ["scrubbed"] * 3 + ["rejected"]
    assert lines[3]["output"] is None
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["100APPLE/IMG_0001.JPG", "101APPLE/IMG_0001.JPG", "cover.png"]
    assert b"CANARY" not in (out / "101APPLE" / "IMG_0001.JPG").read_bytes()


def test_an_output_folder_inside_the_input_folder_is_not_scrubbed_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clinvault_scrub.batch import run_scrub

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "wound.jpg").write_bytes(corpus.leaky_jpeg())
    out = photos / "clean"
    for _ in range(2):  # the second run finds the first run's output inside the input folder
        assert run_scrub([str(photos), "--out", str(out), "--json"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["input"] for line in lines] == [str(photos / "wound.jpg")]
    assert sorted(p.name for p in out.rglob("*")) == ["wound.jpg"]


def test_scan_never_calls_an_image_it_could_not_search_clean(
    app: typer.Typer, tmp_path: Path
) -> None:
    """A compliance report must not count as clean what the detectors never saw: an animation
    too long to search frame by frame has clean metadata but is reported as not searched."""
    from PIL import Image

    from clinvault_scrub.engine.decode import MAX_ANIMATION_FRAMES

    folder = tmp_path / "archive"
    folder.mkdir()
    frames = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(MAX_ANIMATION_FRAMES + 1)]
    frames[0].save(folder / "long.gif", save_all=True, append_images=frames[1:])
    report_json, report_html = tmp_path / "r.json", tmp_path / "r.html"
    result = runner.invoke(
        app, ["scan", str(folder), "--json", str(report_json), "--html", str(report_html)]
    )
    assert result.exit_code == 0, result.output
    assert "1 not searched" in result.output
    report = json.loads(report_json.read_text())
    (entry,) = report["files"]
    assert entry["status"] == "unchecked"
    assert entry["review"][0].startswith("not searched for faces, text or barcodes: animation")
    assert report["summary"]["unchecked"] == 1
    page = report_html.read_text()
    assert "unchecked" in page
    assert "1 file, 1 image, 0 at risk, 1 not searched" in page  # the summary on top


def test_scan_counts_data_it_cannot_read(tmp_path: Path) -> None:
    """A vendor segment or an unknown chunk may hold anything: such a file is not clean."""
    import io
    import struct

    from PIL import Image

    from clinvault_scrub.engine.scan import scan_bytes

    buf = io.BytesIO()
    corpus.photo(64, 48).save(buf, "JPEG")
    plain_jpeg = buf.getvalue()
    app15 = b"\xff\xef" + struct.pack(">H", 2 + 9) + b"vendor123"
    vendor_jpeg = plain_jpeg[:2] + app15 + plain_jpeg[2:]
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, "PNG")
    plain_png = buf.getvalue()
    iend = plain_png.rindex(b"IEND") - 4
    chunk_png = plain_png[:iend] + corpus._chunk(b"vnDr", b"opaque") + plain_png[iend:]

    for plain, with_data in ((plain_jpeg, vendor_jpeg), (plain_png, chunk_png)):
        clean = scan_bytes(plain, detectors=False)
        assert clean["status"] == "clean", clean
        flagged = scan_bytes(with_data, detectors=False)
        assert flagged["status"] == "at_risk"
        assert flagged["risks"]["other_metadata"] == 1
        assert sum(flagged["risks"].values()) == 1


def test_scan_reports_what_it_cannot_read_and_never_blocks(
    app: typer.Typer, tmp_path: Path
) -> None:
    """A named pipe in an archive is reported, not opened for ever; a JPEG cut short still
    shows what its header holds; a file name that is not UTF-8 does not break the report."""
    folder = tmp_path / "archive"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    leaky = corpus.leaky_jpeg()
    (folder / "cut.jpg").write_bytes(leaky[: _first_scan(leaky) + 300])  # cut in its image data
    odd_name = os.fsdecode(b"odd\xffname.jpg")
    (folder / odd_name).write_bytes(corpus.leaky_jpeg())
    report_json, report_html = tmp_path / "r.json", tmp_path / "r.html"
    proc = subprocess.run(
        [CLINVAULT, "scan", str(folder), "--json", str(report_json), "--html", str(report_html)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    files = {f["path"]: f for f in json.loads(report_json.read_text())["files"]}
    assert files["pipe.jpg"]["status"] == "unreadable"
    assert files["pipe.jpg"]["reason"] == "not a regular file"
    cut = files["cut.jpg"]
    assert cut["status"] == "unreadable"
    assert cut["risks"]["gps"], cut
    assert cut["risks"]["device_serials"], cut
    assert files[odd_name]["status"] == "at_risk"
    assert r"odd\udcffname.jpg" in report_html.read_text(encoding="utf-8")
    for entry in files.values():  # one shape for every entry
        assert {"path", "format", "status", "reason", "risks", "review"} <= set(entry)


def _first_scan(jpeg: bytes) -> int:
    """Offset of the image's first SOS segment (not one inside an embedded thumbnail)."""
    pos = 2
    while jpeg[pos + 1] != 0xDA:
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    return pos


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_scan_refuses_a_report_path_it_cannot_write_before_scanning(
    app: typer.Typer, inputs: dict[str, Path], tmp_path: Path, option: str
) -> None:
    for bad in (tmp_path / "missing" / "r.out", tmp_path):  # no such folder; a folder
        result = runner.invoke(app, ["scan", str(inputs["photo.jpg"].parent), option, str(bad)])
        assert result.exit_code == 2, result.output
        assert "cannot write the report" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_scan_is_not_clean_when_text_recognition_did_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from clinvault_scrub.engine import ocr
    from clinvault_scrub.engine.scan import scan_bytes

    buf = io.BytesIO()
    corpus.photo(64, 48).save(buf, "JPEG")
    assert scan_bytes(buf.getvalue())["status"] == "clean"
    monkeypatch.setattr(ocr, "TESSERACT", "tesseract-not-installed")
    report = scan_bytes(buf.getvalue())
    assert report["status"] == "unchecked", report
    assert "text recognition not available" in " ".join(report["review"])


def test_scrub_rejects_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A named pipe would block the open for ever, a device would be read without end (the
    size limit is checked against a size of 0): both are refused before any read."""
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    proc = subprocess.run(
        [CLINVAULT, "scrub", str(pipe), "/dev/zero", "--out", str(tmp_path / "out"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["status"], r["reason"]) for r in lines] == [("rejected", "not a regular file")] * 2


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLINVAULT, "scrub", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_scrub_never_writes_over_its_inputs(inputs: dict[str, Path]) -> None:
    """`--out` naming the inputs' own folder would replace each original by its scrubbed copy
    (and its capture metadata with it): a usage error, and the originals stay as they were."""
    folder = inputs["photo.jpg"].parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for args in ([str(folder)], [str(inputs["photo.jpg"]), str(inputs["scan.png"])]):
        proc = _run(*args, "--out", str(folder / ".." / folder.name))
        assert proc.returncode == 2, proc.stderr
        assert "would replace the originals" in proc.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_usage_errors_say_what_is_wrong(inputs: dict[str, Path], tmp_path: Path) -> None:
    photo = str(inputs["photo.jpg"])
    (tmp_path / "afile").write_text("x")
    cases = {
        ("--out", str(tmp_path / "afile")): "a file of that name exists",
        ("--out", str(tmp_path / "o"), "--profile", "deidentify", "--redact", "-10,5,20,20"): (
            "--redact: region needs x,y >= 0"
        ),
    }
    for args, message in cases.items():
        proc = _run(photo, *args)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(str(empty), "--out", str(tmp_path / "o"))
    assert (proc.returncode, proc.stdout) == (0, "")
    assert "no files in the given folders" in proc.stderr


def test_plain_output_keeps_one_line_per_input(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "two\nlines.jpg").write_bytes(corpus.leaky_jpeg())
    (folder / os.fsdecode(b"odd\xff.jpg")).write_bytes(corpus.leaky_jpeg())
    proc = _run(str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert any("two\\nlines.jpg" in line for line in lines)
    assert any("odd\\udcff.jpg" in line for line in lines)


def test_on_a_terminal_result_lines_are_printed_above_the_progress_bar(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    import fcntl
    import pty
    import struct
    import termios

    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    folder = inputs["photo.jpg"].parent
    proc = subprocess.Popen(
        [CLINVAULT, "scrub", str(folder), "--out", str(tmp_path / "out")],
        stdin=sub,
        stdout=sub,
        stderr=sub,
    )
    os.close(sub)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 1  # two of the four inputs are not images
    text = seen.decode("utf-8", "replace")
    assert "scrub: 100%" in text  # the bar was drawn
    starts = [i for i in range(len(text)) if text.startswith(("scrubbed ", "rejected "), i)]
    assert len(starts) == 4
    for i in starts:  # each line begins a line of its own, never after the bar's text
        assert i == 0 or text[i - 1] in "\r\n", repr(text[max(0, i - 40) : i + 10])


def test_a_file_already_in_the_output_directory_is_never_replaced(tmp_path: Path) -> None:
    """An output folder inside the input folder may hold originals of the same name: each
    stays, and the new output takes the next free name; scrubbing again writes nothing new."""
    photos = tmp_path / "photos"
    (photos / "clean").mkdir(parents=True)
    (photos / "wound.jpg").write_bytes(corpus.leaky_jpeg())
    original = corpus.leaky_jpeg(orientation=6)
    (photos / "clean" / "wound.jpg").write_bytes(original)  # another photo, same name
    for _ in range(2):
        proc = _run(str(photos), "--out", str(photos / "clean"), "--json")
        assert proc.returncode == 0, proc.stderr
        (line,) = [json.loads(x) for x in proc.stdout.splitlines()]
        assert line["output"] == str(photos / "clean" / "wound-2.jpg")
        assert "already in the output directory" in proc.stderr
    assert (photos / "clean" / "wound.jpg").read_bytes() == original
    assert sorted(p.name for p in (photos / "clean").iterdir()) == ["wound-2.jpg", "wound.jpg"]


def test_a_scan_usage_error_leaves_an_existing_report_alone(
    app: typer.Typer, inputs: dict[str, Path], tmp_path: Path
) -> None:
    kept = tmp_path / "last-week.json"
    kept.write_text('{"summary": {}}')
    folder = str(inputs["photo.jpg"].parent)
    bad = str(tmp_path / "missing" / "r.html")
    result = runner.invoke(app, ["scan", folder, "--json", str(kept), "--html", bad])
    assert result.exit_code == 2, result.output
    assert kept.read_text() == '{"summary": {}}'
    new = tmp_path / "new.json"
    result = runner.invoke(app, ["scan", folder, "--json", str(new), "--html", bad])
    assert result.exit_code == 2
    assert not new.exists()  # made by the check, removed with the usage error


def test_a_scan_report_that_cannot_be_written_at_the_end_is_one_line() -> None:
    # /dev/full (Linux, as the named pipes and terminals above): every write fails with ENOSPC.
    folder = Path(corpus.__file__).parent / "fuzz_findings"
    proc = subprocess.run(
        [CLINVAULT, "scan", str(folder), "--json", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "clinvault scan: cannot write the report (No space left on device)"
    )
