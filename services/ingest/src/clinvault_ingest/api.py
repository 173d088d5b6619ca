"""The ingest API's routes: images, derivatives, upload invitations and the patient portal."""

from __future__ import annotations

from fastapi import APIRouter

from clinvault_ingest.derivatives.endpoints import router as derivatives
from clinvault_ingest.images.endpoints import router as images
from clinvault_ingest.invitations.endpoints import router as invitations
from clinvault_ingest.portal.endpoints import router as portal

router = APIRouter()
router.include_router(images)
router.include_router(derivatives)
router.include_router(invitations)
router.include_router(portal)
