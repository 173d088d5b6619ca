"""The patient portal in a real browser: Debian's Chromium driven by Playwright at phone size.

A real `clinvault serve` runs in a subprocess on the embedded defaults; the browser opens the
invitation link, reads the notice, is blocked before acknowledging, uploads two photos (one with GPS
in its EXIF) and sees the confirmation. The API then proves both photos belong to the right patient
and that the care copies carry no GPS. Screenshots of each step go to test-artifacts/portal/.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import piexif
import pytest
from PIL import Image

from tests.processes import free_port, wait_healthy

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "portal"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
ISSUED_TOKENS: list[str] = []  # every link this module opens; none may reach the server log

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def _clinvault(env: dict[str, str], *args: str) -> str:
    exe = Path(sys.executable).with_name("clinvault")
    done = subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    data = tmp_path_factory.mktemp("portal-data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINVAULT_")}
    env.update(CLINVAULT_DATA_DIR=str(data), CLINVAULT_PUBLIC_BASE_URL=base)
    admin = _clinvault(env, "keys", "create", "--tenant", "clinic", "--role", "admin")
    exe = Path(sys.executable).with_name("clinvault")
    log = (data / "server.log").open("w")
    process = subprocess.Popen(
        [str(exe), "serve", "all", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    if not wait_healthy(base, process):
        process.kill()
        raise RuntimeError("server did not start: " + (data / "server.log").read_text()[-2000:])
    yield {"base": base, "admin": admin, "data": data}
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _api(server: dict[str, object]) -> httpx.Client:
    return httpx.Client(
        base_url=str(server["base"]),
        headers={"Authorization": f"Bearer {server['admin']}"},
        timeout=30,
    )


def _jpeg(path: Path, colour: tuple[int, int, int], *, gps: bool) -> Path:
    image = Image.new("RGB", (1200, 900), colour)
    exif = {"0th": {piexif.ImageIFD.Make: b"PhoneMaker"}, "Exif": {}, "GPS": {}, "1st": {}}
    if gps:
        exif["GPS"] = {
            piexif.GPSIFD.GPSLatitudeRef: b"N",
            piexif.GPSIFD.GPSLatitude: ((51, 1), (30, 1), (2600, 100)),
            piexif.GPSIFD.GPSLongitudeRef: b"W",
            piexif.GPSIFD.GPSLongitude: ((0, 1), (7, 1), (3900, 100)),
        }
    image.save(path, "JPEG", quality=90, exif=piexif.dump(exif))
    return path


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _invite(api: httpx.Client, patient_id: str, max_files: int = 5) -> dict[str, str]:
    response = api.post(
        "/v1/upload-invitations",
        json={
            "patient_id": patient_id,
            "expires_in_minutes": 60,
            "max_files": max_files,
            "requested_by": "Dr. Rivera, Dermatology",
        },
    )
    assert response.status_code in (200, 201), response.text
    ISSUED_TOKENS.append(response.json()["token"])
    return dict(response.json())


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


def test_patient_uploads_two_photos_from_a_phone(
    server: dict[str, object], browser: object, tmp_path: Path
) -> None:
    api = _api(server)
    invitation = _invite(api, "MRN-PORTAL-1")
    assert "MRN-PORTAL-1" not in invitation["url"]
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)  # type: ignore[attr-defined]
    page = context.new_page()
    response = page.goto(invitation["url"])
    assert response.status == 200
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"

    # The notice: who asked, care-only use, text and email are not secure.
    body = page.inner_text("main")
    assert "Dr. Rivera, Dermatology" in body
    assert "only for your care" in body
    assert "not secure" in body
    assert "MRN-PORTAL-1" not in page.content()
    _shot(page, "1-notice")

    # Before acknowledging, the photo pickers and the send button are disabled.
    assert page.locator("#gallery").is_disabled()
    assert page.locator("#camera").is_disabled()
    assert page.locator("#send").is_disabled()
    _shot(page, "2-blocked-before-acknowledging")

    page.get_by_label("I have read this notice").check()
    assert page.locator("#gallery").is_enabled()
    with_gps = _jpeg(tmp_path / "wound-1.jpg", (200, 120, 110), gps=True)
    without_gps = _jpeg(tmp_path / "wound-2.jpg", (180, 140, 120), gps=False)
    page.locator("#gallery").set_input_files([str(with_gps), str(without_gps)])
    _shot(page, "3-acknowledged-photos-chosen")
    page.locator("#send").click()
    page.locator("#done").wait_for(state="visible", timeout=30_000)
    assert "2 photos were" in page.inner_text("#done")
    assert "delete any copies" in page.inner_text("#done")
    retries = page.locator("#progress-list button")
    assert retries.count() == 2
    for retry in retries.all():
        assert not retry.is_visible()  # shown only for a photo that failed
    _shot(page, "4-confirmation")
    context.close()

    # Through the API: both stored for this patient, care copies without GPS.
    listed = api.get("/v1/images", params={"patient_id": "MRN-PORTAL-1"})
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert len(items) == 2
    assert {item["source"] for item in items} == {"patient_portal"}
    deadline = time.monotonic() + 60
    for item in items:
        while time.monotonic() < deadline:
            status = api.get(f"/v1/images/{item['id']}").json()
            if status["status"] in ("ready", "rejected"):
                break
            time.sleep(0.3)
        assert status["status"] == "ready", status
        content = api.get(
            f"/v1/images/{item['id']}/content",
            headers={"X-Break-Glass-Reason": "portal browser test"},
        )
        assert content.status_code == 200, content.text
        assert b"GPS" not in content.content
        exif = Image.open(io.BytesIO(content.content)).getexif()
        assert 0x8825 not in exif  # GPSInfo IFD pointer
        assert 0x010F not in exif  # Make
    if shutil.which("exiftool"):
        pass  # the scrub engine's own suite runs exiftool over its outputs


def test_a_failed_upload_can_be_retried(
    server: dict[str, object], browser: object, tmp_path: Path
) -> None:
    """A dropped connection (a phone losing signal) shows the error and a retry that works."""
    api = _api(server)
    invitation = _invite(api, "MRN-PORTAL-5")
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(invitation["url"])
    dropped: list[str] = []

    def drop_first(route: object) -> None:
        if not dropped:
            dropped.append("x")
            route.abort("connectionreset")  # type: ignore[attr-defined]
        else:
            route.continue_()  # type: ignore[attr-defined]

    page.route("**/upload", drop_first)
    page.get_by_label("I have read this notice").check()
    page.locator("#gallery").set_input_files(
        str(_jpeg(tmp_path / "ulcer.jpg", (90, 60, 50), gps=False))
    )
    page.locator("#send").click()
    retry = page.get_by_role("button", name="Try again")
    retry.wait_for(state="visible", timeout=30_000)
    assert "connection failed" in page.inner_text("#progress-list")
    assert page.locator("#done").is_hidden()
    _shot(page, "7-upload-failed-retry-offered")
    retry.click()
    page.locator("#done").wait_for(state="visible", timeout=30_000)
    assert "1 photo was" in page.inner_text("#done")
    context.close()
    items = api.get("/v1/images", params={"patient_id": "MRN-PORTAL-5"}).json()["items"]
    assert len(items) == 1  # the dropped attempt stored nothing


def test_plain_form_post_without_javascript(
    server: dict[str, object], browser: object, tmp_path: Path
) -> None:
    """Progressive enhancement: with JavaScript off the form still uploads (and still insists on
    the acknowledgement, enforced by the server)."""
    api = _api(server)
    invitation = _invite(api, "MRN-PORTAL-2", max_files=3)
    context = browser.new_context(viewport=PHONE, java_script_enabled=False)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(invitation["url"])
    photo = _jpeg(tmp_path / "rash.jpg", (150, 100, 90), gps=True)
    page.locator("#gallery").set_input_files(str(photo))
    page.locator("#send").click()
    assert "Please tick the box" in page.inner_text("main")
    _shot(page, "5-no-js-acknowledgement-required")
    page.get_by_label("I have read this notice").check()
    page.locator("#gallery").set_input_files(str(photo))
    page.locator("#send").click()
    assert "your photos were received" in page.inner_text("main")
    context.close()
    items = api.get("/v1/images", params={"patient_id": "MRN-PORTAL-2"}).json()["items"]
    assert len(items) == 1


def test_expired_link_shows_what_to_do(server: dict[str, object], browser: object) -> None:
    api = _api(server)
    invitation = _invite(api, "MRN-PORTAL-3")
    database = Path(str(server["data"])) / "clinvault.db"
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat(sep=" ")
    with sqlite3.connect(database) as conn:
        conn.execute(
            "UPDATE upload_invitations SET expires_at = ? WHERE id = ?", (past, invitation["id"])
        )
    context = browser.new_context(viewport=PHONE)  # type: ignore[attr-defined]
    page = context.new_page()
    response = page.goto(invitation["url"])
    assert response.status == 410
    text = page.inner_text("main")
    assert "can no longer be used" in text
    assert "ask for a new upload link" in text
    _shot(page, "6-expired-link")
    context.close()


def test_page_passes_automated_accessibility_check(
    server: dict[str, object], browser: object
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    api = _api(server)
    invitation = _invite(api, "MRN-PORTAL-4")
    # axe is injected by the test, so this context alone lifts the page's CSP.
    context = browser.new_context(viewport=PHONE, bypass_csp=True)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(invitation["url"])
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()
    # Keyboard: Tab reaches the acknowledgement and Space ticks it.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "ack":
            break
    assert page.evaluate("document.activeElement.id") == "ack"
    page.keyboard.press("Space")
    assert page.locator("#ack").is_checked()
    assert page.locator("#gallery").is_enabled()
    context.close()


def test_server_log_holds_no_link_token_and_no_patient_id(server: dict[str, object]) -> None:
    """Runs last: the real server's log of every step above (uvicorn + JSON lines)."""
    log = (Path(str(server["data"])) / "server.log").read_text()
    assert ISSUED_TOKENS
    assert '"route": "/portal/{token}"' in log
    for token in ISSUED_TOKENS:
        assert token not in log
        assert token[:12] not in log
    assert "MRN-PORTAL" not in log
