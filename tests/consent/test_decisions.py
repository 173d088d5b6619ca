"""The decision table: purpose x record state x time, with frozen clocks (`at=`), on SQLite and
PostgreSQL, through the in-process function and over HTTP (both must give the same answer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest

from clinvault_shared.db.models import Authorization, Consent
from clinvault_shared.decisions import Decision, HttpDecisionClient, decide, decide_via
from clinvault_shared.errors import ServiceUnavailable
from clinvault_shared.settings import Settings
from tests.consent.conftest import T0, ConsentApi

TENANT = "hospital-a"
H = timedelta(hours=1)
D = timedelta(days=1)


def consent(
    cid: str,
    patient: str,
    purposes: list[str],
    *,
    method: str = "written",
    status: str = "active",
    signed_at: datetime = T0 - 10 * D,
    due: datetime | None = None,
) -> Consent:
    return Consent(
        id=cid,
        tenant_id=TENANT,
        patient_id=patient,
        purposes=purposes,
        method=method,
        signed_by="patient",
        signed_at=signed_at,
        witness="nurse" if method == "verbal" else None,
        status=status,
        documentation_due_at=due,
    )


def authorization(
    aid: str,
    patient: str,
    purposes: list[str],
    *,
    images: list[str] | None = None,
    encounter: str | None = None,
    status: str = "active",
    expires_at: datetime | None = T0 + 30 * D,
) -> Authorization:
    return Authorization(
        id=aid,
        tenant_id=TENANT,
        patient_id=patient,
        purposes=purposes,
        description="d",
        disclosed_by="clinic",
        recipients=["r"],
        expires_at=expires_at,
        signed_by="patient",
        signed_at=T0 - D,
        method="written",
        image_ids=images or [],
        encounter_id=encounter,
        status=status,
        internet_disclosure_acknowledged=True,
        right_to_revoke_acknowledged=True,
        redisclosure_acknowledged=True,
    )


@dataclass(frozen=True)
class Case:
    name: str
    patient: str
    purpose: str
    at: datetime
    permit: bool
    basis: str | None
    reason: str  # a substring the reason must contain
    image: str | None = None  # a key of the images dict
    authorization_id: str | None = None


CASES = [
    # General consent: the purposes it names, from its signing, never secondary uses.
    Case("written covers treatment", "p-written", "treatment", T0, True, "consent:cns_w", "active"),
    Case("written covers payment", "p-written", "payment", T0, True, "consent:cns_w", "active"),
    Case(
        "written does not cover operations",
        "p-written",
        "operations",
        T0,
        False,
        None,
        "no general consent on file covers operations",
    ),
    Case(
        "general consent never permits research",
        "p-written",
        "research",
        T0,
        False,
        None,
        "a general consent never permits it",
    ),
    Case(
        "general consent never permits education",
        "p-auth",
        "education",
        T0,
        False,
        None,
        "does not name image",
        image="img_b",
    ),
    Case(
        "before signing nothing",
        "p-written",
        "treatment",
        T0 - 11 * D,
        False,
        None,
        "not signed yet",
    ),
    # Verbal: provisional until the deadline (exclusive), lapsed from it, active once documented.
    Case(
        "verbal provisional permits",
        "p-verbal",
        "treatment",
        T0 + H,
        True,
        "consent:cns_v",
        "provisional",
    ),
    Case(
        "verbal one second before the deadline",
        "p-verbal",
        "treatment",
        T0 + 72 * H - timedelta(seconds=1),
        True,
        "consent:cns_v",
        "provisional",
    ),
    Case(
        "verbal at the deadline lapses", "p-verbal", "treatment", T0 + 72 * H, False, None, "lapsed"
    ),
    Case(
        "verbal documented is active",
        "p-verbal-doc",
        "treatment",
        T0 + 100 * H,
        True,
        "consent:cns_vd",
        "active",
    ),
    Case("lapsed permits nothing", "p-lapsed", "treatment", T0, False, None, "lapsed"),
    Case("revoked consent permits nothing", "p-revoked", "treatment", T0, False, None, "revoked"),
    Case("no consent at all", "p-none", "treatment", T0, False, None, "no general consent"),
    Case("active beside revoked wins", "p-two", "treatment", T0, True, "consent:cns_2b", "active"),
    # Authorizations: that purpose, that image, until expires_at (exclusive), not revoked.
    Case(
        "authorization covers a named image",
        "p-auth",
        "education",
        T0,
        True,
        "authorization:aut_edu",
        "image",
        image="img_a",
    ),
    Case(
        "authorization without an image asked",
        "p-auth",
        "education",
        T0,
        True,
        "authorization:aut_edu",
        "the images it names",
    ),
    Case(
        "authorization does not cover an unnamed image",
        "p-auth",
        "education",
        T0,
        False,
        None,
        "does not name image",
        image="img_b",
    ),
    Case(
        "education does not permit publication",
        "p-auth",
        "publication",
        T0,
        False,
        None,
        "no authorization on file covers publication",
        image="img_a",
    ),
    Case(
        "expired at expires_at",
        "p-auth",
        "education",
        T0 + 30 * D,
        False,
        None,
        "expired",
        image="img_a",
    ),
    Case(
        "one second before expiry",
        "p-auth",
        "education",
        T0 + 30 * D - timedelta(seconds=1),
        True,
        "authorization:aut_edu",
        "active",
        image="img_a",
    ),
    Case(
        "encounter authorization covers its images",
        "p-auth",
        "research",
        T0,
        True,
        "authorization:aut_res",
        "image",
        image="img_c",
    ),
    Case(
        "encounter authorization, other encounter",
        "p-auth",
        "research",
        T0,
        False,
        None,
        "does not name image",
        image="img_a",
    ),
    Case(
        "named authorization of another purpose",
        "p-auth",
        "education",
        T0,
        False,
        None,
        "does not cover education",
        image="img_c",
        authorization_id="aut_res",
    ),
    Case(
        "named authorization of that purpose",
        "p-auth",
        "research",
        T0,
        True,
        "authorization:aut_res",
        "active",
        image="img_c",
        authorization_id="aut_res",
    ),
    Case(
        "care use of an authorized patient uses the consent",
        "p-auth",
        "treatment",
        T0,
        True,
        "consent:cns_a",
        "active",
        image="img_a",
    ),
    Case("revoked authorization", "p-auth-revoked", "education", T0, False, None, "revoked"),
    Case("expired authorization", "p-auth-expired", "marketing", T0, False, None, "expired"),
    Case(
        "event-expiring authorization stays active",
        "p-auth-event",
        "ai_training",
        T0 + 3650 * D,
        True,
        "authorization:aut_evt",
        "active",
    ),
    Case("unknown purpose", "p-written", "sales", T0, False, None, "unknown purpose"),
    Case(
        "image of another patient",
        "p-written",
        "treatment",
        T0,
        False,
        None,
        "not on file for this patient",
        image="img_a",
    ),
]


async def build_world(api: ConsentApi) -> dict[str, str]:
    images = {
        "img_a": await api.image(TENANT, "p-auth", encounter_id="enc-1"),
        "img_b": await api.image(TENANT, "p-auth", encounter_id="enc-1"),
        "img_c": await api.image(TENANT, "p-auth", encounter_id="enc-2"),
    }
    async with api.runtime.session() as session:
        session.add_all(
            [
                consent("cns_w", "p-written", ["treatment", "payment"]),
                consent(
                    "cns_v",
                    "p-verbal",
                    ["treatment"],
                    method="verbal",
                    status="provisional",
                    signed_at=T0,
                    due=T0 + 72 * H,
                ),
                consent(
                    "cns_vd",
                    "p-verbal-doc",
                    ["treatment"],
                    method="verbal",
                    status="active",
                    signed_at=T0,
                    due=T0 + 72 * H,
                ),
                consent(
                    "cns_l",
                    "p-lapsed",
                    ["treatment"],
                    method="verbal",
                    status="lapsed",
                    signed_at=T0 - 5 * D,
                    due=T0 - 2 * D,
                ),
                consent("cns_r", "p-revoked", ["treatment"], status="revoked"),
                consent("cns_2a", "p-two", ["treatment"], status="revoked", signed_at=T0 - 20 * D),
                consent("cns_2b", "p-two", ["treatment"], signed_at=T0 - 5 * D),
                consent("cns_a", "p-auth", ["treatment"]),
                authorization("aut_edu", "p-auth", ["education"], images=[images["img_a"]]),
                authorization("aut_res", "p-auth", ["research"], encounter="enc-2"),
                authorization("aut_rev", "p-auth-revoked", ["education"], status="revoked"),
                authorization("aut_exp", "p-auth-expired", ["marketing"], status="expired"),
                authorization("aut_evt", "p-auth-event", ["ai_training"], expires_at=None),
            ]
        )
        await session.commit()
    return images


async def test_decision_table_local_and_http(consent_api: ConsentApi) -> None:
    images = await build_world(consent_api)
    secret = await consent_api.key(TENANT, "auditor")
    http = HttpDecisionClient(
        "http://consent.test", secret, transport=httpx.ASGITransport(app=consent_api.app)
    )
    wrong: list[str] = []
    for case in CASES:
        image_id = images[case.image] if case.image else None
        async with consent_api.runtime.session() as session:
            local = await decide(
                session,
                tenant_id=TENANT,
                patient_id=case.patient,
                purpose=case.purpose,
                image_id=image_id,
                authorization_id=case.authorization_id,
                at=case.at,
            )
            again = await decide(
                session,
                tenant_id=TENANT,
                patient_id=case.patient,
                purpose=case.purpose,
                image_id=image_id,
                authorization_id=case.authorization_id,
                at=case.at,
            )
        remote = await http.decide(
            tenant_id=TENANT,
            patient_id=case.patient,
            purpose=case.purpose,
            image_id=image_id,
            authorization_id=case.authorization_id,
            at=case.at,
        )
        if (local.permit, local.basis) != (
            case.permit,
            case.basis,
        ) or case.reason not in local.reason:
            wrong.append(f"{case.name}: got {local}")
        if again != local:
            wrong.append(f"{case.name}: not deterministic ({local} then {again})")
        if remote != local:
            wrong.append(f"{case.name}: HTTP {remote} != local {local}")
    assert not wrong, "\n".join(wrong)


async def test_reasons_never_carry_the_patient_id(consent_api: ConsentApi) -> None:
    images = await build_world(consent_api)
    async with consent_api.runtime.session() as session:
        for case in CASES:
            result = await decide(
                session,
                tenant_id=TENANT,
                patient_id=case.patient,
                purpose=case.purpose,
                image_id=images[case.image] if case.image else None,
                authorization_id=case.authorization_id,
                at=case.at,
            )
            assert case.patient not in result.reason


async def test_other_tenants_objects_are_404_and_deny_alike(consent_api: ConsentApi) -> None:
    images = await build_world(consent_api)
    other = await consent_api.client("hospital-b", "auditor")
    async with other:
        response = await other.get(
            "/v1/decisions",
            params={"patient_id": "p-auth", "purpose": "education", "image_id": images["img_a"]},
        )
        assert response.status_code == 404
        response = await other.get(
            "/v1/decisions",
            params={"patient_id": "p-auth", "purpose": "research", "authorization_id": "aut_res"},
        )
        assert response.status_code == 404
        # A patient id of another tenant is just a patient with nothing on file here.
        response = await other.get(
            "/v1/decisions", params={"patient_id": "p-written", "purpose": "treatment"}
        )
        assert response.status_code == 200
        assert response.json()["permit"] is False
    secret = await consent_api.key("hospital-b", "auditor")
    http = HttpDecisionClient(
        "http://consent.test", secret, transport=httpx.ASGITransport(app=consent_api.app)
    )
    async with consent_api.runtime.session() as session:
        local = await decide(
            session,
            tenant_id="hospital-b",
            patient_id="p-auth",
            purpose="education",
            image_id=images["img_a"],
            at=T0,
        )
    remote = await http.decide(
        tenant_id="hospital-b",
        patient_id="p-auth",
        purpose="education",
        image_id=images["img_a"],
        at=T0,
    )
    assert (
        remote
        == local
        == Decision(False, None, f"image {images['img_a']} is not on file for this patient")
    )


async def test_decide_via_uses_http_when_configured(consent_api: ConsentApi) -> None:
    await build_world(consent_api)
    secret = await consent_api.key(TENANT, "emr")
    settings = Settings(consent_service_url="http://consent.test", consent_service_api_key=secret)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=consent_api.app)
    async with consent_api.runtime.session() as session:
        remote = await decide_via(
            settings,
            session,
            tenant_id=TENANT,
            patient_id="p-verbal",
            purpose="treatment",
            at=T0 + H,
            transport=transport,
        )
        local = await decide_via(
            Settings(),
            session,
            tenant_id=TENANT,
            patient_id="p-verbal",
            purpose="treatment",
            at=T0 + H,
        )
    assert remote == local
    assert remote.permit
    assert remote.basis == "consent:cns_v"
    # A key of another tenant is refused rather than answering for the wrong tenant.
    with pytest.raises(ServiceUnavailable, match="refused"):
        async with consent_api.runtime.session() as session:
            await decide_via(
                settings,
                session,
                tenant_id="hospital-b",
                patient_id="p-verbal",
                purpose="treatment",
                transport=transport,
            )
