"""Request logs carry the route template, never the raw path or query (tokens, patient ids)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import serve


async def test_access_lines_hold_no_token_and_no_patient_id(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with serve("embedded") as harness:
        headers = await harness.headers()
        await harness.client.get("/portal/SecretUploadToken0123456789abcdef")
        await harness.client.get(
            "/v1/images", params={"patient_id": "MRN-LOG-4242"}, headers=headers
        )
        await harness.client.get("/v1/images/img_doesnotexist", headers=headers)
    err = capfd.readouterr().err
    assert "SecretUploadToken0123456789abcdef" not in err
    assert "MRN-LOG-4242" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    routes = {line.get("route") for line in lines if line.get("logger") == "clinvault.access"}
    assert {"/portal/{token}", "/v1/images", "/v1/images/{image_id}"} <= routes
    assert not any(line.get("logger") == "uvicorn.access" for line in lines)
