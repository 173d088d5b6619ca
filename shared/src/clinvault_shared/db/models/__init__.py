"""Every table, one per module; importing this package registers them all on `Base.metadata`."""

from clinvault_shared.db.models.api_key import ApiKey
from clinvault_shared.db.models.audit_entry import AuditEntry
from clinvault_shared.db.models.authorization import Authorization
from clinvault_shared.db.models.blob_object import BlobObject
from clinvault_shared.db.models.consent import Consent
from clinvault_shared.db.models.derivative import Derivative
from clinvault_shared.db.models.image import Image
from clinvault_shared.db.models.scope_key import ScopeKey
from clinvault_shared.db.models.tenant import Tenant
from clinvault_shared.db.models.upload_invitation import UploadInvitation

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Authorization",
    "BlobObject",
    "Consent",
    "Derivative",
    "Image",
    "ScopeKey",
    "Tenant",
    "UploadInvitation",
]
