"""Integrator-facing errors of the upload form (embedded mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Harness, make_jpeg, serve


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with serve("embedded") as running:
        yield running


async def test_file_before_fields_names_the_missing_fields(harness: Harness) -> None:
    # curl -F file=@x.jpg -F patient_id=... sends the file first: the photo cannot be encrypted
    # under its patient's key before the patient is known, so the answer must say what to change.
    boundary = "clinvaultboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + make_jpeg()
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="patient_id"\r\n\r\n'
            f"MRN-1\r\n--{boundary}--\r\n"
        ).encode()
    )
    response = await harness.client.post(
        "/v1/images",
        content=body,
        headers={
            **await harness.headers(),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "missing before the file part: patient_id, source" in message
    assert "file last" in message
    assert "MRN-1" not in message


async def test_invalid_field_is_named_without_echoing_it(harness: Harness) -> None:
    response = await harness.upload(make_jpeg(), extra={"source": "carrier-pigeon"})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "invalid form fields: source" in message
    assert "carrier-pigeon" not in message
