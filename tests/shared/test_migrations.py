"""One Alembic history for both databases, and it matches the models."""

from __future__ import annotations

import asyncio

from clinvault_shared.db import migrate


async def test_upgrade_head_matches_models(database_url: str) -> None:
    # `check` raises when autogenerate would find a difference between models and schema.
    await asyncio.to_thread(migrate.check, database_url)
