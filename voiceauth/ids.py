"""Customer ids (and watchlist labels, actors) in one canonical form at the API boundary.

An id is the bank's own opaque identifier, so its case is kept: ``CUST-42`` and
``cust-42`` are different customers (folding case would merge distinct ids and leave
voiceprints stored under the old spelling unreachable for erasure). What is not part of
an id is removed or refused: Unicode is normalised to NFC, surrounding whitespace is
trimmed, and control, format (zero-width, BOM), separator and unassigned characters are
refused, as is anything but a plain space inside the id. :func:`loose_key` finds stored
ids that differ from a given one only in case, width or spacing, so erasure can point an
operator at the id they probably meant.
"""

from __future__ import annotations

import unicodedata

from voiceauth.errors import InvalidIdError

MAX_ID_LENGTH = 256


def _invisible(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] == "C" or (category[0] == "Z" and char != " ")


def canonical_id(value: object, what: str = "customer id") -> str:
    """``value`` in canonical form (NFC, trimmed); raises :class:`InvalidIdError` if unusable."""
    if not isinstance(value, str):
        raise InvalidIdError(f"the {what} must be a string, not {type(value).__name__}")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise InvalidIdError(f"the {what} is empty; pass the id exactly as the bank's records hold it")
    if len(text) > MAX_ID_LENGTH:
        raise InvalidIdError(f"the {what} is {len(text)} characters long (at most {MAX_ID_LENGTH}); check the id")
    bad = next((c for c in text if _invisible(c)), None)
    if bad is not None:
        raise InvalidIdError(
            f"the {what} {text!r} holds the invisible or control character U+{ord(bad):04X} "
            f"({unicodedata.name(bad, 'unnamed')}); retype the id without it"
        )
    return text


def loose_key(value: str) -> str:
    """A key under which ids equal up to case, width, spacing and invisible characters collide."""
    folded = unicodedata.normalize("NFKC", value).casefold()
    return "".join(c for c in folded if not (_invisible(c) or c == " "))
