"""Derivatives under an authorization, review, release, revocation; tenancy across every route."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import select, update

from clinvault_shared.db.models import AuditEntry, Authorization, Derivative
from tests.e2e.harness import Harness, make_jpeg


async def ready_image(h: Harness, seed: int, tenant: str = "t1") -> str:
    response = await h.upload(make_jpeg(seed, (96, 64)), tenant=tenant)
    assert response.status_code == 202, response.text
    image_id: str = response.json()["id"]
    assert (await h.wait(f"/v1/images/{image_id}", {"ready", "rejected"}, tenant=tenant))[
        "status"
    ] == "ready"
    return image_id


async def test_derivative_lifecycle(harness: Harness) -> None:
    h = harness
    image_id = await ready_image(h, 11)
    other_image = await ready_image(h, 12)
    body = {
        "purpose": "education",
        "redactions": [{"x": 2, "y": 2, "w": 10, "h": 10, "label": "tattoo"}],
        "keep": [{"x": 40, "y": 20, "w": 20, "h": 20}],
    }
    path = f"/v1/images/{image_id}/derivatives"

    # No authorization, or one that names another image or purpose: 403, audited.
    missing = await h.client.post(
        path, json={**body, "authorization_id": "auth_0000000000000000"}, headers=await h.headers()
    )
    assert missing.status_code == 403, missing.text
    elsewhere = await h.add_authorization([other_image])
    refused = await h.client.post(
        path, json={**body, "authorization_id": elsewhere}, headers=await h.headers()
    )
    assert refused.status_code == 403
    research = await h.add_authorization([image_id], purpose="research")
    wrong_purpose = await h.client.post(
        path, json={**body, "authorization_id": research}, headers=await h.headers()
    )
    assert wrong_purpose.status_code == 403

    authorization_id = await h.add_authorization([image_id])
    created = await h.client.post(
        path, json={**body, "authorization_id": authorization_id}, headers=await h.headers()
    )
    assert created.status_code == 202, created.text
    derivative_id = created.json()["id"]
    done = await h.wait(f"/v1/derivatives/{derivative_id}", {"pending_review", "rejected"})
    assert done["status"] == "pending_review", done
    assert any(
        f["kind"] == "region" and f["label"] == "tattoo" for f in done["findings"]["findings"]
    ), done["findings"]

    # Stored under the authorization's key, not the care key.
    async with h.runtime.session() as session:
        derivative = await session.get(Derivative, derivative_id)
        assert derivative is not None
        assert derivative.object_id is not None

    researcher = await h.headers(role="researcher")
    reviewer = await h.headers(role="reviewer")
    early = await h.client.get(f"/v1/derivatives/{derivative_id}/content", headers=researcher)
    assert early.status_code == 409
    preview = await h.client.get(f"/v1/derivatives/{derivative_id}/preview", headers=reviewer)
    assert preview.status_code == 200
    assert preview.content[:2] == b"\xff\xd8"
    approved = await h.client.post(
        f"/v1/derivatives/{derivative_id}/review",
        json={"decision": "approve", "note": "checked"},
        headers=reviewer,
    )
    assert approved.status_code == 200
    assert approved.json()["status"] == "approved"
    twice = await h.client.post(
        f"/v1/derivatives/{derivative_id}/review", json={"decision": "reject"}, headers=reviewer
    )
    assert twice.status_code == 409
    released = await h.client.get(f"/v1/derivatives/{derivative_id}/content", headers=researcher)
    assert released.status_code == 200
    assert hashlib.sha256(released.content).hexdigest() == done["findings"]["sha256"]

    # Revocation (as the consent service does it): status, then the scope key is destroyed.
    async with h.runtime.session() as session:
        await session.execute(
            update(Authorization)
            .where(Authorization.id == authorization_id)
            .values(status="revoked")
        )
        await h.runtime.blobs.destroy_scope(
            session, tenant_id="t1", patient_id="p-1", scope=f"auth:{authorization_id}"
        )
        await session.commit()
    gone = await h.client.get(f"/v1/derivatives/{derivative_id}/content", headers=researcher)
    assert gone.status_code == 410
    async with h.runtime.session() as session:
        outcomes = (
            await session.scalars(
                select(AuditEntry.outcome)
                .where(
                    AuditEntry.object_id == derivative_id,
                    AuditEntry.action == "derivative.read_content",
                )
                .order_by(AuditEntry.seq)
            )
        ).all()
    assert list(outcomes) == ["refused", "allowed", "refused"]


async def test_another_tenant_gets_404_on_every_route(harness: Harness) -> None:
    h = harness
    image_id = await ready_image(h, 21)
    authorization_id = await h.add_authorization([image_id])
    created = await h.client.post(
        f"/v1/images/{image_id}/derivatives",
        json={"purpose": "education", "authorization_id": authorization_id},
        headers=await h.headers(),
    )
    assert created.status_code == 202
    derivative_id = created.json()["id"]
    await h.wait(f"/v1/derivatives/{derivative_id}", {"pending_review", "rejected"})
    invitation = await h.client.post(
        "/v1/upload-invitations", json={"patient_id": "p-1"}, headers=await h.headers()
    )
    assert invitation.status_code == 201, invitation.text
    ids = {
        "image_id": image_id,
        "derivative_id": derivative_id,
        "invitation_id": invitation.json()["id"],
    }
    bodies = {
        "/v1/images/{image_id}/derivatives": {
            "purpose": "education",
            "authorization_id": authorization_id,
        },
        "/v1/derivatives/{derivative_id}/review": {"decision": "approve"},
    }
    intruder = await h.headers(tenant="t2", role="admin")
    walked = 0
    # The route table as the app publishes it (FastAPI nests included routers).
    for path, operations in h.app.openapi()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        params = re.findall(r"{(\w+)}", path)
        if not params:
            continue  # creates in the caller's own tenant
        url = path.format(**{p: ids[p] for p in params})
        for method in operations:
            response = await h.client.request(
                method.upper(), url, json=bodies.get(path), headers=intruder
            )
            assert response.status_code == 404, (method, path, response.text)
            assert image_id not in response.text
            walked += 1
    assert walked >= 9
    listed = await h.client.get("/v1/images?patient_id=p-1", headers=intruder)
    assert listed.status_code == 200
    assert image_id not in listed.text
    # Tenant A still sees everything as it was.
    mine = await h.client.get(f"/v1/images/{image_id}", headers=await h.headers())
    assert mine.json()["status"] == "ready"
