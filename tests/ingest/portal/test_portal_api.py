"""The portal's guards over HTTP (embedded mode): CSRF, acknowledgement, link states, limits."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from clinvault_ingest.portal import service as portal
from clinvault_ingest.portal.ratelimit import RateLimiter
from tests.e2e.harness import Harness, make_jpeg, serve


@pytest.fixture
async def harness(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setenv("CLINVAULT_MAX_UPLOAD_BYTES", str(256 * 1024))
    async with serve("embedded") as running:
        yield running


async def _invite(
    harness: Harness, patient_id: str = "MRN-777", max_files: int = 3
) -> dict[str, str]:
    response = await harness.client.post(
        "/v1/upload-invitations",
        json={"patient_id": patient_id, "expires_in_minutes": 30, "max_files": max_files},
        headers=await harness.headers(),
    )
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def _page(client: httpx.AsyncClient, token: str) -> tuple[httpx.Response, str]:
    page = await client.get(f"/portal/{token}")
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    return page, match.group(1) if match else ""


async def _post(
    client: httpx.AsyncClient,
    token: str,
    csrf: str,
    *,
    ack: bool = True,
    data: bytes | None = None,
    accept_json: bool = True,
) -> httpx.Response:
    fields = {"csrf": csrf}
    if ack:
        fields["acknowledged"] = "yes"
    return await client.post(
        f"/portal/{token}/upload",
        data=fields,
        files={"file": ("IMG_0001.jpg", data if data is not None else make_jpeg(), "image/jpeg")},
        headers={"Accept": "application/json"} if accept_json else {},
    )


async def test_page_has_no_patient_identifier_and_strict_headers(harness: Harness) -> None:
    invitation = await _invite(harness)
    page, csrf = await _page(harness.client, invitation["token"])
    assert page.status_code == 200
    assert "MRN-777" not in page.text
    assert csrf
    assert page.headers["referrer-policy"] == "no-referrer"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "<script>" not in page.text  # no inline script anywhere
    assert 'capture="environment"' in page.text
    assert 'accept="image/*"' in page.text
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie


async def test_upload_needs_the_csrf_field_and_cookie(harness: Harness) -> None:
    invitation = await _invite(harness)
    _, csrf = await _page(harness.client, invitation["token"])
    forged = await _post(harness.client, invitation["token"], "0" * 64)
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "forbidden"
    # A second browser without this page's cookie cannot replay the field either.
    async with httpx.AsyncClient(
        transport=harness.client._transport, base_url="http://test"
    ) as other:
        replay = await _post(other, invitation["token"], csrf)
    assert replay.status_code == 403
    ok = await _post(harness.client, invitation["token"], csrf)
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"received": 1, "remaining": 2}


async def test_acknowledgement_is_required_by_the_server(harness: Harness) -> None:
    invitation = await _invite(harness)
    _, csrf = await _page(harness.client, invitation["token"])
    refused = await _post(harness.client, invitation["token"], csrf, ack=False)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "acknowledgement_required"
    html = await _post(harness.client, invitation["token"], csrf, ack=False, accept_json=False)
    assert html.status_code == 400
    assert "Please tick the box" in html.text


async def test_uploads_land_for_the_invited_patient_as_portal_intakes(harness: Harness) -> None:
    invitation = await _invite(harness, patient_id="MRN-778")
    _, csrf = await _page(harness.client, invitation["token"])
    assert (await _post(harness.client, invitation["token"], csrf)).status_code == 202
    listed = await harness.client.get(
        "/v1/images", params={"patient_id": "MRN-778"}, headers=await harness.headers()
    )
    items = listed.json()["items"]
    assert [(i["patient_id"], i["source"]) for i in items] == [("MRN-778", "patient_portal")]
    ready = await harness.wait(f"/v1/images/{items[0]['id']}", {"ready", "rejected"})
    assert ready["status"] == "ready"


async def test_used_up_link_shows_its_page(harness: Harness) -> None:
    invitation = await _invite(harness, max_files=1)
    _, csrf = await _page(harness.client, invitation["token"])
    assert (await _post(harness.client, invitation["token"], csrf)).status_code == 202
    again = await _post(harness.client, invitation["token"], csrf)
    assert again.status_code == 410
    page = await harness.client.get(f"/portal/{invitation['token']}")
    assert page.status_code == 410
    assert "ask for a new upload link" in page.text


async def test_revoked_link_and_tenant_isolation_of_revoke(harness: Harness) -> None:
    invitation = await _invite(harness)
    other = await harness.client.post(
        f"/v1/upload-invitations/{invitation['id']}/revoke",
        headers=await harness.headers(tenant="t2"),
    )
    assert other.status_code == 404
    revoked = await harness.client.post(
        f"/v1/upload-invitations/{invitation['id']}/revoke", headers=await harness.headers()
    )
    assert revoked.status_code == 200
    page = await harness.client.get(f"/portal/{invitation['token']}")
    assert page.status_code == 410
    assert "can no longer be used" in page.text


async def test_unknown_link(harness: Harness) -> None:
    page = await harness.client.get("/portal/not-a-real-token")
    assert page.status_code == 404
    assert "does not work" in page.text


async def test_same_type_and_size_limits_as_the_api(harness: Harness) -> None:
    invitation = await _invite(harness)
    _, csrf = await _page(harness.client, invitation["token"])
    pdf = await _post(harness.client, invitation["token"], csrf, data=b"%PDF-1.7\n" + b"x" * 500)
    assert pdf.status_code == 415
    assert "PDF" in pdf.json()["error"]["message"]
    huge = await _post(
        harness.client, invitation["token"], csrf, data=make_jpeg() + b"\0" * (300 * 1024)
    )
    assert huge.status_code == 413
    # Refused files give their slot back: all three are still available.
    page = await harness.client.get(f"/portal/{invitation['token']}")
    assert "up to 3 photos" in page.text


async def test_rate_limit_per_link(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portal, "PER_TOKEN", RateLimiter(limit=3, window_seconds=60))
    invitation = await _invite(harness)
    statuses = [
        (await harness.client.get(f"/portal/{invitation['token']}")).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def test_rate_limiter_window() -> None:
    limiter = RateLimiter(limit=2, window_seconds=10)
    assert [limiter.allow("k", now=t) for t in (0, 1, 2)] == [True, True, False]
    assert limiter.allow("k", now=10.5)
    assert limiter.allow("other", now=2)
