"""The decision answer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DecisionOut(BaseModel):
    """Whether the purpose is permitted, the record it rests on, and why (no PHI)."""

    permit: bool
    basis: str | None = Field(
        description="`consent:<id>` or `authorization:<id>` when permitted",
        examples=["consent:cns_1"],
    )
    reason: str
