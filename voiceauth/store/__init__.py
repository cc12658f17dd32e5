"""Voiceprint stores: the embedded SQLite default and PostgreSQL for scale-out."""

from __future__ import annotations

import os
import re

from voiceauth.errors import ErasureIncompleteError, StoreError
from voiceauth.store.base import (
    AuditCheck,
    AuditEvent,
    AuditLog,
    AuditRecord,
    Consent,
    ConsentStore,
    Namespace,
    OptOutResult,
    Store,
    StoreAdmin,
    Voiceprint,
    VoiceprintInfo,
    VoiceprintStore,
)

__all__ = [
    "AuditCheck",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "Consent",
    "ConsentStore",
    "ErasureIncompleteError",
    "Namespace",
    "OptOutResult",
    "Store",
    "StoreAdmin",
    "Voiceprint",
    "VoiceprintInfo",
    "VoiceprintStore",
    "open_store",
]


def open_store(spec: str | os.PathLike[str] | Store, *, create: bool = True, **kwargs: object) -> Store:
    """A Store instance as is; ``postgresql://`` URLs open PostgreSQL; anything else is a SQLite path.

    ``create=False`` (management commands) opens only an existing store: a missing one is a
    :class:`StoreError` ("no store at ..."), and neither a store nor a key file is created.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    kwargs["create"] = create
    text = os.fspath(spec)
    if re.match(r"postgres(ql)?(\+[\w-]+)?:", text) and not text.startswith(("postgresql://", "postgres://")):
        from voiceauth.store.common import redact

        raise StoreError(f"{redact(text, text)} is not a PostgreSQL URL; write it as "
                         "postgresql://user:password@host:port/dbname")
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
