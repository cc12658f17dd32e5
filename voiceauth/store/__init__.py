"""Voiceprint stores: the embedded SQLite default and PostgreSQL for scale-out."""

from __future__ import annotations

import os

from voiceauth.errors import StoreError
from voiceauth.store.base import (
    AuditCheck,
    AuditEvent,
    AuditRecord,
    Consent,
    Namespace,
    Store,
    Voiceprint,
    VoiceprintInfo,
)

__all__ = [
    "AuditCheck",
    "AuditEvent",
    "AuditRecord",
    "Consent",
    "Namespace",
    "Store",
    "Voiceprint",
    "VoiceprintInfo",
    "open_store",
]


def open_store(spec: str | os.PathLike[str] | Store, **kwargs: object) -> Store:
    """A Store instance as is; ``postgresql://`` URLs open PostgreSQL; anything else is a SQLite path."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    text = os.fspath(spec)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            from voiceauth.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL support needs the [scale] extra ({exc}); install it with: pip install 'voiceauth[scale]'"
            ) from exc
        return PostgresStore(text, **kwargs)  # type: ignore[arg-type]
    from voiceauth.store.sqlite import SQLiteStore

    return SQLiteStore(text, **kwargs)  # type: ignore[arg-type]
