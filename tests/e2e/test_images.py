"""Upload to ready, reads for a purpose, delete: the same tests in the embedded and distributed
modes (the `harness` fixture runs each twice)."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from clinvault_shared.blobstore import KeyDestroyed
from clinvault_shared.db.models import AuditEntry, BlobObject, Image
from tests.e2e.harness import Harness, make_jpeg


async def audit_entries(h: Harness, object_id: str) -> list[AuditEntry]:
    async with h.runtime.session() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.object_id == object_id).order_by(AuditEntry.seq)
        )
        return list(rows.all())


async def test_upload_scrub_and_read_for_treatment(harness: Harness) -> None:
    h = harness
    data = make_jpeg(1)
    response = await h.upload(data, extra={"patient_name": "Jane Canary", "body_site": "arm"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "received"
    assert accepted["sha256"] == hashlib.sha256(data).hexdigest()
    image_id = accepted["id"]

    status = await h.wait(f"/v1/images/{image_id}", {"ready", "rejected"})
    assert status["status"] == "ready", status
    assert status["size"] == len(data)
    assert status["removed"], "the care scrub reports what it removed"

    # The identifier hints are stored only encrypted: no column carries them in clear.
    async with h.runtime.session() as session:
        image = await session.get(Image, image_id)
        assert image is not None
        assert image.hints_object_id is not None
        raw_hints = await h.runtime.blobs.raw_ciphertext(image.hints_object_id)
        assert raw_hints is not None
        assert b"Jane Canary" not in raw_hints
        assert b"Jane Canary" in await h.runtime.blobs.read_all(session, image.hints_object_id)
        raw_original = await h.runtime.blobs.raw_ciphertext(image.original_object_id or "")
        assert raw_original is not None
        assert b"Dr Canary" not in raw_original

    # No consent on file: refused, and the refusal is audited.
    refused = await h.client.get(f"/v1/images/{image_id}/content", headers=await h.headers())
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden"

    # Break-glass: allowed, flagged; the free-text reason is not copied into the audit chain.
    emergency = await h.client.get(
        f"/v1/images/{image_id}/content",
        headers={**await h.headers(), "X-Break-Glass-Reason": "unconscious patient in ED"},
    )
    assert emergency.status_code == 200, emergency.text

    await h.add_consent()
    allowed = await h.client.get(f"/v1/images/{image_id}/content", headers=await h.headers())
    assert allowed.status_code == 200, allowed.text
    care = allowed.content
    assert care.startswith(b"\xff\xd8")
    assert b"Dr Canary" not in care
    assert hashlib.sha256(care).hexdigest() == status["care_sha256"]
    assert allowed.content == emergency.content

    entries = await audit_entries(h, image_id)
    reads = [(e.action, e.outcome, e.detail) for e in entries if e.action == "image.read_content"]
    assert [r[1] for r in reads] == ["refused", "allowed", "allowed"]
    assert reads[1][2].get("break_glass") is True
    assert "unconscious" not in repr(reads[1][2])
    assert not reads[2][2].get("break_glass")


async def test_idempotency_key_returns_first_result(harness: Harness) -> None:
    h = harness
    first = await h.upload(make_jpeg(2), headers={"Idempotency-Key": "emr-123"})
    again = await h.upload(make_jpeg(3), headers={"Idempotency-Key": "emr-123"})
    other = await h.upload(make_jpeg(2), headers={"Idempotency-Key": "emr-124"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json() == first.json()
    assert other.json()["id"] != first.json()["id"]
    async with h.runtime.session() as session:
        count = len((await session.scalars(select(Image.id))).all())
    assert count == 2


async def test_unsupported_type_is_415_naming_it(harness: Harness) -> None:
    h = harness
    response = await h.upload(
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + b"x" * 500, filename="scan.jpg"
    )
    assert response.status_code == 415
    assert "PDF" in response.json()["error"]["message"]
    async with h.runtime.session() as session:
        assert (await session.scalars(select(BlobObject.id))).first() is None


async def test_too_large_is_413(harness: Harness) -> None:
    h = harness
    limit = h.runtime.settings.max_upload_bytes
    big = make_jpeg(4) + b"\x00" * (limit + 1024)
    # Declared up front: refused on Content-Length, before the body is read.
    response = await h.upload(big)
    assert response.status_code == 413
    # Chunked, without a length: refused while streaming, once the limit is passed.
    fields = {"patient_id": "p-1", "source": "emr"}
    boundary = "cvtestboundary"

    async def chunked() -> object:
        for name, value in fields.items():
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for start in range(0, len(big), 256 * 1024):
            yield big[start : start + 256 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await h.client.post(
        "/v1/images",
        content=chunked(),  # type: ignore[arg-type]
        headers={**await h.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    async with h.runtime.session() as session:
        assert (await session.scalars(select(Image.id))).first() is None


async def test_delete_crypto_shreds_and_answers_410(harness: Harness) -> None:
    h = harness
    image_id = (await h.upload(make_jpeg(5), extra={"patient_name": "Jane Canary"})).json()["id"]
    await h.wait(f"/v1/images/{image_id}", {"ready"})
    await h.add_consent()
    async with h.runtime.session() as session:
        image = await session.get(Image, image_id)
        assert image is not None
        object_ids = [image.original_object_id, image.care_object_id, image.hints_object_id]
    # Copies of the ciphertext taken before the delete stand for backups and replicas.
    copies = {oid: await h.runtime.blobs.raw_ciphertext(oid) for oid in object_ids if oid}
    assert len(copies) == 3
    assert all(copies.values())

    deleted = await h.client.delete(f"/v1/images/{image_id}", headers=await h.headers())
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "deleted"
    gone = await h.client.get(f"/v1/images/{image_id}/content", headers=await h.headers())
    assert gone.status_code == 410
    again = await h.client.delete(f"/v1/images/{image_id}", headers=await h.headers())
    assert again.status_code == 410

    # Put the old ciphertext back where it was: no key in the system opens it any more.
    import obstore

    from clinvault_shared.blobstore.backend import object_path, store_from_url

    store = store_from_url(h.runtime.settings.resolved_blob_url, h.runtime.settings)
    async with h.runtime.session() as session:
        for object_id, ciphertext in copies.items():
            assert ciphertext is not None
            await obstore.put_async(store, object_path(object_id), ciphertext)
            assert await h.runtime.blobs.raw_ciphertext(object_id) == ciphertext
            row = await session.get(BlobObject, object_id)
            assert row is not None
            assert row.wrapped_dek is None
            assert row.destroyed_at is not None
            try:
                await h.runtime.blobs.read_all(session, object_id)
            except KeyDestroyed:
                pass
            else:
                raise AssertionError("a shredded object was readable")


async def test_a_heic_photo_is_kept_as_heic_with_its_pixels(harness: Harness) -> None:
    """An iPhone's format goes through the container rewrite: served as HEIF, the pixels as
    they came, the EXIF gone."""
    import io

    import numpy as np
    import piexif
    import pillow_heif
    from PIL import Image as PILImage

    h = harness
    exif = piexif.dump(
        {"0th": {piexif.ImageIFD.Make: b"CanaryPhone"}, "GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N"}}
    )
    photo = PILImage.effect_mandelbrot((96, 64), (-2.0, -1.0, 1.0, 1.0), 100).convert("RGB")
    buf = io.BytesIO()
    pillow_heif.from_pillow(photo).save(buf, quality=80, exif=exif)
    response = await h.upload(buf.getvalue(), filename="IMG_0001.HEIC")
    assert response.status_code == 202, response.text
    status = await h.wait(f"/v1/images/{response.json()['id']}", {"ready", "rejected"})
    assert status["status"] == "ready", status
    assert "exif.gps" in status["removed"]
    await h.add_consent()
    served = await h.client.get(f"/v1/images/{status['id']}/content", headers=await h.headers())
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "image/heif"
    assert b"CanaryPhone" not in served.content

    def pixels(data: bytes) -> np.ndarray:
        return np.asarray(pillow_heif.open_heif(io.BytesIO(data)).to_pillow())

    assert np.array_equal(pixels(served.content), pixels(buf.getvalue()))
