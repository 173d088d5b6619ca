"""Consents and authorizations as HL7 FHIR R4 Consent resources, and back.

Export fills the R4 elements that carry meaning (status, scope, category, patient, dateTime,
performer, organization, policyRule, sourceAttachment, provision with period, purpose, actor and
data) and puts what FHIR has no element for (method, witness, deadline, the 164.508(c)
statements) in clinvault extensions, so an export imports back to the same record.

Import accepts what maps without loss and refuses the rest with every reason at once: deny or
nested provisions, purposes, actors or data references clinvault has no place for, states other
than active/proposed. R4B's Consent (fhir.resources.R4B) is R4's Consent for these elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from clinvault_shared.db.models import Authorization, Consent
from clinvault_shared.decisions import ROUTINE_PURPOSES, SECONDARY_PURPOSES
from clinvault_shared.errors import Unprocessable

BASE = "https://clinvault.dev/fhir"
EXT = f"{BASE}/StructureDefinition"
KIND_SYSTEM = f"{BASE}/CodeSystem/consent-kind"
PURPOSE_SYSTEM = f"{BASE}/CodeSystem/purpose"
LOINC = "http://loinc.org"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
POLICY_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentpolicycodes"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

LOINC_GENERAL = ("59284-0", "Patient Consent")
LOINC_AUTHORIZATION = ("64292-6", "Release of information consent")
# The purposes that have a v3 PurposeOfUse code; the others use clinvault's code system.
V3_PURPOSES = {
    "treatment": "TREAT",
    "payment": "HPAYMT",
    "operations": "HOPERAT",
    "research": "HRESCH",
    "marketing": "HMARKT",
}
FROM_V3 = {code: purpose for purpose, code in V3_PURPOSES.items()}
FHIR_STATUS = {
    "active": "active",
    "provisional": "proposed",
    "lapsed": "inactive",
    "revoked": "inactive",
    "expired": "inactive",
}


class FhirUnmappable(Unprocessable):
    """A FHIR Consent clinvault cannot represent; `issues` says why, one reason each."""

    code = "fhir_unmappable"

    def __init__(self, issues: Sequence[str]) -> None:
        self.issues = list(issues)
        super().__init__("cannot import this Consent: " + "; ".join(self.issues))


def fhir_id(record_id: str) -> str:
    """The FHIR id of a record: FHIR ids allow no `_`, so `cns_3f..` becomes `cns-3f..`."""
    return record_id.replace("_", "-", 1)


def record_id(resource_id: str) -> str:
    """The record id of a FHIR id (either form is accepted)."""
    return resource_id.replace("-", "_", 1) if "_" not in resource_id else resource_id


def _ext(name: str, **value: Any) -> dict[str, Any]:
    return {"url": f"{EXT}/{name}", **value}


def _instant(value: datetime) -> str:
    return value.isoformat()


def _purpose_coding(purpose: str) -> list[dict[str, Any]]:
    codings = [{"system": PURPOSE_SYSTEM, "code": purpose}]
    if purpose in V3_PURPOSES:
        codings.insert(0, {"system": V3_ACT_REASON, "code": V3_PURPOSES[purpose]})
    return codings


def _category(kind: str) -> list[dict[str, Any]]:
    loinc = LOINC_GENERAL if kind == "general" else LOINC_AUTHORIZATION
    return [
        {
            "coding": [
                {"system": LOINC, "code": loinc[0], "display": loinc[1]},
                {"system": KIND_SYSTEM, "code": kind},
            ]
        }
    ]


def consent_to_fhir(consent: Consent) -> dict[str, Any]:
    """A general consent as a FHIR R4 Consent."""
    extensions = [
        _ext("record-status", valueCode=consent.status),
        _ext("method", valueCode=consent.method),
    ]
    if consent.witness:
        extensions.append(_ext("witness", valueString=consent.witness))
    if consent.documentation_due_at is not None:
        extensions.append(
            _ext("documentation-due", valueDateTime=_instant(consent.documentation_due_at))
        )
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": fhir_id(consent.id),
        "extension": extensions,
        "status": FHIR_STATUS[consent.status],
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "treatment"}]},
        "category": _category("general"),
        "patient": {"reference": f"Patient/{consent.patient_id}"},
        "dateTime": _instant(consent.signed_at),
        "performer": [{"display": consent.signed_by}],
        "policyRule": {"coding": [{"system": POLICY_SYSTEM, "code": "hipaa-npp"}]},
        "provision": {
            "type": "permit",
            "period": {"start": _instant(consent.signed_at)},
            "purpose": [c for p in consent.purposes for c in _purpose_coding(p)],
        },
    }
    if consent.documentation_ref:
        resource["sourceAttachment"] = {"title": consent.documentation_ref}
    return resource


def authorization_to_fhir(authorization: Authorization) -> dict[str, Any]:
    """A HIPAA authorization as a FHIR R4 Consent."""
    a = authorization
    extensions = [
        _ext("record-status", valueCode=a.status),
        _ext("method", valueCode=a.method),
        _ext("description", valueString=a.description),
        _ext("internet-disclosure-acknowledged", valueBoolean=a.internet_disclosure_acknowledged),
        _ext("right-to-revoke-acknowledged", valueBoolean=a.right_to_revoke_acknowledged),
        _ext("redisclosure-acknowledged", valueBoolean=a.redisclosure_acknowledged),
    ]
    if a.expiration_event:
        extensions.append(_ext("expiration-event", valueString=a.expiration_event))
    if a.signer_authority:
        extensions.append(_ext("signer-authority", valueString=a.signer_authority))
    period: dict[str, Any] = {"start": _instant(a.signed_at)}
    if a.expires_at is not None:
        period["end"] = _instant(a.expires_at)
    data = [{"meaning": "instance", "reference": {"reference": f"Media/{i}"}} for i in a.image_ids]
    if a.encounter_id:
        data.append(
            {"meaning": "related", "reference": {"reference": f"Encounter/{a.encounter_id}"}}
        )
    research_only = list(a.purposes) == ["research"]
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": fhir_id(a.id),
        "extension": extensions,
        "status": FHIR_STATUS[a.status],
        "scope": {
            "coding": [
                {"system": SCOPE_SYSTEM, "code": "research" if research_only else "patient-privacy"}
            ]
        },
        "category": _category("authorization"),
        "patient": {"reference": f"Patient/{a.patient_id}"},
        "dateTime": _instant(a.signed_at),
        "performer": [{"display": a.signed_by}],
        "policyRule": {"coding": [{"system": POLICY_SYSTEM, "code": "hipaa-auth"}]},
        "provision": {
            "type": "permit",
            "period": period,
            "purpose": [c for p in a.purposes for c in _purpose_coding(p)],
            "actor": [
                {
                    "role": {"coding": [{"system": V3_PARTICIPATION, "code": "IRCP"}]},
                    "reference": {"display": recipient},
                }
                for recipient in a.recipients
            ],
            "data": data,
        },
    }
    if a.disclosed_by:
        resource["organization"] = [{"display": a.disclosed_by}]
    return resource


# -- import ------------------------------------------------------------------------------------


def _codings(concept: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not concept:
        return []
    codings: list[dict[str, Any]] = concept.get("coding") or []
    return codings


def _extensions(resource: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for extension in resource.get("extension") or []:
        url = str(extension.get("url", ""))
        if url.startswith(f"{EXT}/"):
            value = next((v for k, v in extension.items() if k.startswith("value")), None)
            found[url.removeprefix(f"{EXT}/")] = value
    return found


def _kind(resource: dict[str, Any], issues: list[str]) -> str | None:
    codes = {
        (c.get("system"), c.get("code"))
        for cat in resource.get("category") or []
        for c in _codings(cat)
    }
    if (KIND_SYSTEM, "general") in codes or (LOINC, LOINC_GENERAL[0]) in codes:
        return "general"
    if (KIND_SYSTEM, "authorization") in codes or (LOINC, LOINC_AUTHORIZATION[0]) in codes:
        return "authorization"
    issues.append(
        "category: cannot tell a general consent from an authorization (expected LOINC "
        f"{LOINC_GENERAL[0]} or {LOINC_AUTHORIZATION[0]})"
    )
    return None


def _purposes(provision: dict[str, Any], issues: list[str]) -> list[str]:
    purposes: list[str] = []
    for coding in provision.get("purpose") or []:
        system, code = coding.get("system"), coding.get("code")
        if system == PURPOSE_SYSTEM and code in ROUTINE_PURPOSES + SECONDARY_PURPOSES:
            purpose = code
        elif system == V3_ACT_REASON and code in FROM_V3:
            purpose = FROM_V3[code]
        else:
            issues.append(f"provision.purpose: {system}|{code} has no clinvault purpose")
            continue
        if purpose not in purposes:
            purposes.append(purpose)
    if not purposes and not any("provision.purpose" in i for i in issues):
        issues.append("provision.purpose: at least one purpose is required")
    return purposes


def _reference_id(reference: dict[str, Any] | None, kind: str) -> str | None:
    value = str((reference or {}).get("reference") or "")
    prefix = f"{kind}/"
    return (
        value.removeprefix(prefix)
        if value.startswith(prefix) and len(value) > len(prefix)
        else None
    )


def parse_datetime(value: Any) -> datetime | None:
    """A FHIR dateTime with a timezone, or None (a date alone or no zone cannot be placed)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def from_fhir(resource: dict[str, Any]) -> dict[str, Any]:
    """The clinvault fields of an imported Consent; FhirUnmappable lists every reason not to.

    Returns `{"kind": "general"|"authorization", "status": ..., **fields}`; the caller applies
    the same rules as the API (164.508(c) for authorizations).
    """
    issues: list[str] = []
    kind = _kind(resource, issues)
    status = resource.get("status")
    if status not in ("active", "proposed"):
        issues.append(f"status: only active or proposed consents can be imported, not {status}")
    patient_id = _reference_id(resource.get("patient"), "Patient")
    if patient_id is None:
        issues.append("patient: a reference of the form Patient/<id> is required")
    provision: dict[str, Any] = resource.get("provision") or {}
    if not provision:
        issues.append("provision: a permit provision is required")
    if provision and provision.get("type") != "permit":
        issues.append("provision.type: only permit provisions can be mapped (deny is not)")
    if provision.get("provision"):
        issues.append("provision.provision: nested provisions cannot be mapped")
    for unsupported in ("action", "securityLabel", "class", "code", "dataPeriod"):
        if provision.get(unsupported):
            issues.append(f"provision.{unsupported}: clinvault cannot enforce it")
    purposes = _purposes(provision, issues) if provision else []
    recipients: list[str] = []
    for actor in provision.get("actor") or []:
        roles = {(c.get("system"), c.get("code")) for c in _codings(actor.get("role"))}
        reference = actor.get("reference") or {}
        name = reference.get("display") or reference.get("reference")
        if (V3_PARTICIPATION, "IRCP") not in roles or not name:
            issues.append("provision.actor: only named information recipients (IRCP) are mapped")
            continue
        recipients.append(str(name))
    image_ids: list[str] = []
    encounter_id: str | None = None
    for item in provision.get("data") or []:
        reference = item.get("reference")
        media = _reference_id(reference, "Media")
        encounter = _reference_id(reference, "Encounter")
        if media is not None:
            image_ids.append(media)
        elif encounter is not None and encounter_id in (None, encounter):
            encounter_id = encounter
        else:
            issues.append(
                "provision.data: only Media/<image id> references and one Encounter/<id> map"
            )
    period = provision.get("period") or {}
    expires_at = parse_datetime(period.get("end")) if period.get("end") else None
    if period.get("end") and expires_at is None:
        issues.append("provision.period.end: needs a full date-time with a timezone")
    signed_at = parse_datetime(resource.get("dateTime"))
    if resource.get("dateTime") and signed_at is None:
        issues.append("dateTime: needs a full date-time with a timezone")
    performers = resource.get("performer") or []
    signed_by = None
    if performers:
        signed_by = performers[0].get("display") or performers[0].get("reference")
    if len(performers) > 1:
        issues.append("performer: only one signer can be mapped")
    organizations = resource.get("organization") or []
    disclosed_by = organizations[0].get("display") if organizations else None
    attachment = resource.get("sourceAttachment") or {}
    documentation_ref = attachment.get("url") or attachment.get("title")
    extensions = _extensions(resource)
    method = extensions.get("method") or ("written" if documentation_ref else "electronic")

    fields: dict[str, Any] = {
        "kind": kind,
        "status": status,
        "patient_id": patient_id,
        "purposes": purposes,
        "signed_by": signed_by,
        "signed_at": signed_at,
        "method": method,
    }
    if kind == "general":
        if expires_at is not None:
            issues.append("provision.period.end: a general consent has no end date in clinvault")
        if recipients or image_ids or encounter_id:
            issues.append(
                "provision.actor/data: a general consent covers all of the patient's images "
                "for care; recipients and data belong to an authorization"
            )
        if status == "proposed" and method != "verbal":
            issues.append("status: proposed maps only to a verbal consent awaiting its record")
        if status == "active" and method == "verbal" and not documentation_ref:
            issues.append(
                "sourceAttachment: an active verbal consent needs its written record attached"
            )
        if signed_at is None:
            issues.append("dateTime: when the consent was given is required")
        if not signed_by:
            issues.append("performer: who gave the consent is required")
        fields.update(
            witness=extensions.get("witness"),
            documentation_ref=documentation_ref if status == "active" else None,
        )
    elif kind == "authorization":
        if status != "active":
            issues.append("status: an authorization is imported only when active")
        fields.update(
            description=extensions.get("description"),
            disclosed_by=disclosed_by,
            recipients=recipients,
            expires_at=expires_at,
            expiration_event=extensions.get("expiration-event"),
            internet_disclosure_acknowledged=extensions.get("internet-disclosure-acknowledged")
            is True,
            right_to_revoke_acknowledged=extensions.get("right-to-revoke-acknowledged") is True,
            redisclosure_acknowledged=extensions.get("redisclosure-acknowledged") is True,
            signer_is_representative=bool(extensions.get("signer-authority")),
            signer_authority=extensions.get("signer-authority"),
            image_ids=image_ids,
            encounter_id=encounter_id,
        )
    if issues:
        raise FhirUnmappable(issues)
    return fields


def operation_outcome(status_code: int, issues: Sequence[str]) -> dict[str, Any]:
    """An OperationOutcome with one error issue per reason."""
    code = {
        400: "invalid",
        401: "login",
        403: "forbidden",
        404: "not-found",
        409: "conflict",
        422: "processing",
    }.get(status_code, "exception")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text} for text in issues],
    }
