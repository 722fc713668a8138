"""Rows in datasette-secrets' real encrypted store, written and read as datasette-secrets does."""

from __future__ import annotations

from cryptography.fernet import Fernet
from datasette.app import Datasette

EARLIER_USER = "earlier-user"
"""Who last used a secret ``store_secret`` writes: its audit record before the test."""


async def store_secret(datasette: Datasette, name: str, value: str, encryption_key: str) -> None:
    """Store ``value`` as secret ``name``, Fernet-encrypted, last used by ``EARLIER_USER``.

    ``datasette`` must have started (datasette-secrets creates its table at startup).
    """
    encrypted = Fernet(encryption_key.encode()).encrypt(value.encode())
    await datasette.get_internal_database().execute_write(
        "insert into datasette_secrets (name, version, encrypted, encryption_key_name, "
        "last_used_by) values (?, 1, ?, 'default', ?)",
        [name, encrypted, EARLIER_USER],
    )


async def audit(datasette: Datasette, name: str) -> tuple[object, object]:
    """Return secret ``name``'s ``(last_used_at, last_used_by)``."""
    row = (
        await datasette.get_internal_database().execute(
            "select last_used_at, last_used_by from datasette_secrets where name = ?", [name]
        )
    ).first()
    assert row is not None, f"no secret {name!r} in the store"
    return row["last_used_at"], row["last_used_by"]
