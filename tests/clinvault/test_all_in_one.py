"""The whole path through the composed app (`clinvault serve all`), every step over the API.

Upload, care copy, consent, authorization, derivative, review, release, revocation and deletion,
each as the role that does it in a hospital; nothing is put in the database behind the API.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from clinvault.composition import create_all_app
from clinvault_shared.auth import create_key
from clinvault_shared.runtime import Runtime

PATIENT = "MRN-E2E-1"


@pytest.fixture
async def app_client() -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    app = create_all_app()
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clinvault") as client:
            yield client, app.state.runtime


async def _key(runtime: Runtime, role: str, tenant: str = "st-marys") -> dict[str, str]:
    async with runtime.session() as session:
        issued = await create_key(session, tenant_id=tenant, role=role)
        await session.commit()
    return {"Authorization": f"Bearer {issued.secret}"}


def _photo() -> bytes:
    picture = Image.new("RGB", (640, 480), (190, 120, 110))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x013B] = "Dr Canary Artist"  # Artist
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


async def _until(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], states: set[str]
) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            body: dict[str, Any] = (await client.get(path, headers=headers)).json()
            if body["status"] in states:
                return body
            await asyncio.sleep(0.1)


async def test_a_photo_from_upload_to_revocation(
    app_client: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, runtime = app_client
    clinician = await _key(runtime, "clinician")
    consent_admin = await _key(runtime, "consent_admin")
    reviewer = await _key(runtime, "reviewer")
    researcher = await _key(runtime, "researcher")
    auditor = await _key(runtime, "auditor")

    uploaded = await client.post(
        "/v1/images",
        data={"patient_id": PATIENT, "source": "clinician_device", "body_site": "left forearm"},
        files={"file": ("wound.jpg", _photo(), "image/jpeg")},
        headers=clinician,
    )
    assert uploaded.status_code == 202, uploaded.text
    image_id = uploaded.json()["id"]
    ready = await _until(client, f"/v1/images/{image_id}", clinician, {"ready", "rejected"})
    assert ready["status"] == "ready"

    # No consent yet: the care copy is refused, with the reason.
    refused = await client.get(f"/v1/images/{image_id}/content", headers=clinician)
    assert refused.status_code == 403
    consent = await client.post("/v1/consents", headers=consent_admin, json={
        "patient_id": PATIENT, "purposes": ["treatment"], "method": "written",
        "signed_by": "the patient", "signed_at": datetime.now(UTC).isoformat(),
    })  # fmt: skip
    assert consent.status_code == 201, consent.text
    care = await client.get(f"/v1/images/{image_id}/content", headers=clinician)
    assert care.status_code == 200
    assert b"Dr Canary Artist" not in care.content
    assert b"PhoneMaker" not in care.content

    # Teaching use needs its own authorization; the general consent does not cover it.
    denied = await client.post(
        f"/v1/images/{image_id}/derivatives",
        headers=clinician,
        json={"purpose": "education", "authorization_id": "auth_none"},
    )
    assert denied.status_code == 403
    authorization = await client.post("/v1/authorizations", headers=consent_admin, json={
        "patient_id": PATIENT, "purposes": ["education"],
        "description": "Photographs of the left forearm wound, for teaching",
        "disclosed_by": "Wound clinic", "recipients": ["Grand rounds attendees"],
        "expires_at": (datetime.now(UTC) + timedelta(days=90)).isoformat(),
        "internet_disclosure_acknowledged": True, "right_to_revoke_acknowledged": True,
        "redisclosure_acknowledged": True, "signed_by": "the patient",
        "signed_at": datetime.now(UTC).isoformat(), "method": "written", "image_ids": [image_id],
    })  # fmt: skip
    assert authorization.status_code == 201, authorization.text
    authorization_id = authorization.json()["id"]
    decision = await client.get("/v1/decisions", headers=consent_admin, params={
        "patient_id": PATIENT, "purpose": "education", "image_id": image_id,
    })  # fmt: skip
    assert decision.json()["permit"] is True

    requested = await client.post(f"/v1/images/{image_id}/derivatives", headers=clinician, json={
        "purpose": "education", "authorization_id": authorization_id,
        "redactions": [{"x": 10, "y": 10, "w": 80, "h": 60, "label": "tattoo"}],
    })  # fmt: skip
    assert requested.status_code == 202, requested.text
    derivative_id = requested.json()["id"]
    pending = await _until(
        client, f"/v1/derivatives/{derivative_id}", reviewer, {"pending_review", "rejected"}
    )
    assert pending["status"] == "pending_review", pending
    assert (
        await client.get(f"/v1/derivatives/{derivative_id}/content", headers=researcher)
    ).status_code == 409  # not approved yet
    preview = await client.get(f"/v1/derivatives/{derivative_id}/preview", headers=reviewer)
    assert preview.status_code == 200
    shown = Image.open(io.BytesIO(preview.content)).convert("RGB")
    assert shown.getpixel((50, 40)) != (190, 120, 110)  # the tattoo region is covered
    review = await client.post(
        f"/v1/derivatives/{derivative_id}/review",
        headers=reviewer,
        json={"decision": "approve", "note": "checked"},
    )
    assert review.status_code == 200, review.text
    released = await client.get(f"/v1/derivatives/{derivative_id}/content", headers=researcher)
    assert released.status_code == 200
    assert b"Dr Canary Artist" not in released.content

    # The patient withdraws: what was made under the authorization is gone at once.
    revoked = await client.post(
        f"/v1/authorizations/{authorization_id}/revoke",
        headers=consent_admin,
        json={"reason": "patient request"},
    )
    assert revoked.status_code == 200, revoked.text
    gone = await client.get(f"/v1/derivatives/{derivative_id}/content", headers=researcher)
    assert gone.status_code == 410

    # Deleting the image shreds it; the audit shows the disclosures and the chain holds.
    assert (await client.delete(f"/v1/images/{image_id}", headers=clinician)).status_code == 200
    assert (
        await client.get(f"/v1/images/{image_id}/content", headers=clinician)
    ).status_code == 410
    accounting = await client.get("/v1/audit", headers=auditor, params={"patient_id": PATIENT})
    assert accounting.status_code == 200
    actions = {entry["action"] for entry in accounting.json()["entries"]}
    assert {"image.upload", "derivative.read_content", "authorization.revoke"} <= actions
    verified = await client.get("/v1/audit/verify", headers=auditor)
    assert verified.json()["ok"] is True
