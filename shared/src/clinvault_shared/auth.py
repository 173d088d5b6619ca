"""API keys and roles: random keys shown once, stored as a hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clinvault_shared.db.base import utcnow
from clinvault_shared.db.models import ApiKey, Tenant
from clinvault_shared.errors import BadRequest, Forbidden, NotFound, Unauthenticated

KEY_PREFIX = "cvk"


class Permission(StrEnum):
    IMAGES_WRITE = "images:write"
    IMAGES_READ = "images:read"
    IMAGES_CONTENT = "images:content"
    IMAGES_DELETE = "images:delete"
    DERIVATIVES_CREATE = "derivatives:create"
    DERIVATIVES_READ = "derivatives:read"
    DERIVATIVES_REVIEW = "derivatives:review"
    DERIVATIVES_CONTENT = "derivatives:content"
    INVITATIONS_WRITE = "invitations:write"
    CONSENTS_WRITE = "consents:write"
    CONSENTS_READ = "consents:read"
    DECISIONS_READ = "decisions:read"
    AUDIT_READ = "audit:read"
    COMPLIANCE_READ = "compliance:read"


P = Permission
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "emr": frozenset(
        {
            P.IMAGES_WRITE,
            P.IMAGES_READ,
            P.IMAGES_CONTENT,
            P.IMAGES_DELETE,
            P.DERIVATIVES_CREATE,
            P.DERIVATIVES_READ,
            P.INVITATIONS_WRITE,
            P.CONSENTS_WRITE,
            P.CONSENTS_READ,
            P.DECISIONS_READ,
        }
    ),
    "telemedicine": frozenset(
        {
            P.IMAGES_WRITE,
            P.IMAGES_READ,
            P.IMAGES_CONTENT,
            P.INVITATIONS_WRITE,
            P.CONSENTS_READ,
            P.DECISIONS_READ,
        }
    ),
    "clinician": frozenset(
        {
            P.IMAGES_WRITE,
            P.IMAGES_READ,
            P.IMAGES_CONTENT,
            P.IMAGES_DELETE,
            P.DERIVATIVES_CREATE,
            P.DERIVATIVES_READ,
            P.INVITATIONS_WRITE,
            P.CONSENTS_READ,
            P.DECISIONS_READ,
        }
    ),
    "consent_admin": frozenset(
        {
            P.CONSENTS_WRITE,
            P.CONSENTS_READ,
            P.DECISIONS_READ,
            P.COMPLIANCE_READ,
        }
    ),
    "reviewer": frozenset({P.IMAGES_READ, P.DERIVATIVES_READ, P.DERIVATIVES_REVIEW}),
    "researcher": frozenset({P.DERIVATIVES_READ, P.DERIVATIVES_CONTENT}),
    "auditor": frozenset(
        {
            P.AUDIT_READ,
            P.COMPLIANCE_READ,
            P.CONSENTS_READ,
            P.DECISIONS_READ,
        }
    ),
    "admin": frozenset(Permission),
}
ROLES = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key id (safe to log), its tenant and what its role may do."""

    key_id: str
    tenant_id: str
    role: str

    @property
    def permissions(self) -> frozenset[Permission]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    def require(self, permission: Permission) -> None:
        """Raise 403 unless the role grants `permission`."""
        if permission not in self.permissions:
            raise Forbidden(f"role '{self.role}' lacks permission '{permission.value}'")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    tenant_id: str
    role: str
    secret: str  # the full key, shown once


def _hash_secret(secret: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(presented: str) -> tuple[str, str] | None:
    parts = presented.split(".", 1)
    if len(parts) != 2 or not parts[0].startswith(f"{KEY_PREFIX}_"):
        return None
    return parts[0].removeprefix(f"{KEY_PREFIX}_"), presented


async def create_key(
    session: AsyncSession, *, tenant_id: str, role: str, label: str | None = None
) -> IssuedKey:
    """Create a key (and its tenant on first use); the caller commits and shows `secret` once."""
    if role not in ROLE_PERMISSIONS:
        raise BadRequest(f"unknown role '{role}'; choose one of: {', '.join(ROLES)}")
    if (
        not tenant_id
        or len(tenant_id) > 64
        or not tenant_id.replace("-", "").replace("_", "").isalnum()
    ):
        raise BadRequest("tenant must be 1-64 letters, digits, '-' or '_'")
    if await session.get(Tenant, tenant_id) is None:
        session.add(Tenant(id=tenant_id))
        await session.flush()
    key_id = f"key_{secrets.token_hex(8)}"
    secret = f"{KEY_PREFIX}_{key_id}.{secrets.token_urlsafe(32)}"
    session.add(
        ApiKey(
            id=key_id, tenant_id=tenant_id, role=role, secret_hash=_hash_secret(secret), label=label
        )
    )
    await session.flush()
    return IssuedKey(key_id=key_id, tenant_id=tenant_id, role=role, secret=secret)


async def authenticate(session: AsyncSession, presented: str | None) -> Principal:
    """Resolve a presented key to its principal, or raise 401 (one answer for every failure)."""
    if not presented:
        raise Unauthenticated()
    split = _split(presented.strip())
    if split is None:
        raise Unauthenticated()
    key_id, secret = split
    key = await session.get(ApiKey, key_id)
    expected = key.secret_hash if key is not None else _hash_secret("absent")
    matches = hmac.compare_digest(expected, _hash_secret(secret))
    if key is None or not matches or key.revoked_at is not None:
        raise Unauthenticated()
    return Principal(key_id=key.id, tenant_id=key.tenant_id, role=key.role)


async def list_keys(session: AsyncSession, tenant_id: str | None = None) -> list[ApiKey]:
    """Keys (never their secrets), newest first, optionally for one tenant."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc())
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return list((await session.scalars(query)).all())


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKey:
    """Revoke a key at once; later requests with it answer 401."""
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("no such key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
