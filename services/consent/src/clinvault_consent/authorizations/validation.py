"""The core elements of a valid authorization, 45 CFR 164.508(c), checked all at once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clinvault_shared.decisions import INTERNET_PURPOSES, ROUTINE_PURPOSES, SECONDARY_PURPOSES
from clinvault_shared.errors import Unprocessable


class AuthorizationIncomplete(Unprocessable):
    """The authorization lacks core elements; the message names each one."""

    code = "authorization_incomplete"
    default_message = "the authorization lacks core elements of 45 CFR 164.508(c)"


@dataclass(frozen=True)
class AuthorizationDraft:
    """The fields the rule looks at, from the API or from a FHIR import."""

    purposes: list[str]
    description: str | None
    disclosed_by: str | None
    recipients: list[str]
    expires_at: datetime | None
    expiration_event: str | None
    internet_disclosure_acknowledged: bool
    right_to_revoke_acknowledged: bool
    redisclosure_acknowledged: bool
    signed_by: str | None
    signed_at: datetime | None
    signer_is_representative: bool
    signer_authority: str | None
    method: str | None
    image_ids: list[str]
    encounter_id: str | None


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def missing_elements(draft: AuthorizationDraft, at: datetime) -> list[str]:
    """Every problem with the draft, one phrase each, in the order of 164.508(c)."""
    problems: list[str] = []
    # (c)(1)(i): a specific and meaningful description of the information.
    if _blank(draft.description):
        problems.append("description: a specific description of the images")
    if not draft.image_ids and _blank(draft.encounter_id):
        problems.append("image_ids or encounter_id: which images it covers")
    # (c)(1)(ii): who may make the disclosure.
    if _blank(draft.disclosed_by):
        problems.append("disclosed_by: who may disclose the images")
    # (c)(1)(iii): the recipients.
    if not [r for r in draft.recipients if r.strip()]:
        problems.append("recipients: to whom the images may be disclosed")
    # (c)(1)(iv): the purpose of each use or disclosure.
    if not draft.purposes:
        problems.append(f"purposes: one or more of {', '.join(SECONDARY_PURPOSES)}")
    routine = sorted({p for p in draft.purposes if p in ROUTINE_PURPOSES})
    unknown = sorted({p for p in draft.purposes if p not in ROUTINE_PURPOSES + SECONDARY_PURPOSES})
    if routine:
        problems.append(
            f"purposes: {', '.join(routine)} need(s) a general consent, not an authorization"
        )
    if unknown:
        problems.append(f"purposes: unknown purpose(s) {', '.join(repr(p) for p in unknown)}")
    # (c)(1)(v): an expiration date or event.
    if draft.expires_at is None and _blank(draft.expiration_event):
        problems.append("expires_at or expiration_event: when the authorization ends")
    elif draft.expires_at is not None and draft.expires_at <= at:
        problems.append("expires_at: the expiration date is already past")
    # (c)(1)(vi): signature and date; a representative's authority.
    if _blank(draft.signed_by):
        problems.append("signed_by: the signature of the patient or a representative")
    if draft.signed_at is None:
        problems.append("signed_at: the date of the signature")
    if draft.signer_is_representative and _blank(draft.signer_authority):
        problems.append("signer_authority: the representative's authority to act for the patient")
    # (c)(2)(i) and (iii): the required statements.
    if not draft.right_to_revoke_acknowledged:
        problems.append("right_to_revoke_acknowledged: the statement of the right to revoke")
    if not draft.redisclosure_acknowledged:
        problems.append(
            "redisclosure_acknowledged: the statement that disclosed images may be redisclosed"
        )
    internet = sorted(INTERNET_PURPOSES.intersection(draft.purposes))
    if internet and not draft.internet_disclosure_acknowledged:
        problems.append(
            "internet_disclosure_acknowledged: the acknowledgement that the images may appear on "
            f"the internet or social media (required for {', '.join(internet)})"
        )
    # An authorization must be signed (164.508(b)(1), (c)(1)(vi)); a verbal agreement is not.
    if draft.method is None:
        problems.append("method: written or electronic signature")
    elif draft.method not in ("written", "electronic"):
        problems.append(
            "method: a verbal agreement never makes an authorization (it must be signed, "
            "written or electronic)"
        )
    return problems


def validate(draft: AuthorizationDraft, at: datetime) -> None:
    """Raise one 422 naming every missing or invalid core element."""
    problems = missing_elements(draft, at)
    if problems:
        raise AuthorizationIncomplete(
            "the authorization lacks core elements of 45 CFR 164.508(c): " + "; ".join(problems)
        )
