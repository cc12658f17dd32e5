"""Store operations that scale with the number of customers (issue 17), mixed into SQLStore.

- **Streaming reads** (``iter_ids``, ``iter_list``, ``iter_embeddings``): keyset pagination on
  ``(namespace, subject_id)``, one short query per batch. No read transaction stays open between
  batches (a long SQLite reader would keep erased pages in the WAL), so a stream sees each row as
  it is when its batch is read, not one snapshot of the whole store.
- **Batched writes** (``bulk_insert``): a million voiceprints in batches of a thousand, each batch one
  transaction with its version counters, ciphertexts and one ``enroll`` audit event per voiceprint,
  the audit head sealed once per batch.
- **Batched purge** (``purge_unused_batched``): retention in transactions of ``batch_size`` rows.
- **The voiceprint change feed** (``voiceprint_changes``): every change of a customer voiceprint is
  audited in its own transaction, and audit sequence numbers follow commit order (the chain lock),
  so ``enroll`` / ``delete`` / ``opt_out`` / ``purge`` events after a sequence number are exactly the
  voiceprints to reload or forget. Caches in other processes (the cohort, the 1:N index) follow it.
- **Settings** (``setting`` / ``put_setting``): small non-biometric values in the ``meta`` table under
  the ``setting:`` prefix (the bounded cohort's membership), audited when written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceauth.errors import StoreError
from voiceauth.store.audit import Head, Sealer
from voiceauth.store.base import AuditRecord, Namespace, Voiceprint, VoiceprintInfo
from voiceauth.store.common import (
    AUDIT_COLUMNS,
    BUMP_VERSION,
    INFO_COLUMNS,
    VOICEPRINT_COLUMNS,
    VOICEPRINT_SELECT,
    check_built,
    next_audit_row,
    purge_cutoff,
    row_to_info,
    row_to_voiceprint,
    rows_to_matrix,
    voiceprint_params,
)

if TYPE_CHECKING:
    from voiceauth.store.trials import Trial


ENROL_ACTIONS = ("enroll",)
ERASE_ACTIONS = ("delete", "opt_out", "purge")
"""Audit actions that change (or erase) a customer voiceprint, in the change feed."""
IN_CHUNK = 500
"""Ids per ``IN (...)`` list (SQLite's historical limit is 999 parameters)."""
SETTING_PREFIX = "setting:"


@dataclass(frozen=True)
class BulkInsertResult:
    inserted: int
    existing: list[str]
    """Already enrolled: left as they were (a bulk load never overwrites a voiceprint)."""
    opted_out: list[str]
    """Opted out: skipped (they can be enrolled again only one by one, with fresh consent)."""


@dataclass(frozen=True)
class Change:
    """One change of a customer voiceprint: ``erased`` (delete, opt-out, purge) or (re)written."""

    seq: int
    subject_id: str
    erased: bool


class StreamingOps:
    """Streaming, batched and change-feed operations of :class:`~voiceauth.store.sql.SQLStore`."""

    # provided by SQLStore
    keyring: Any
    store_id: str
    LOCK_ROWS: str
    _write: Any
    _query: Any
    _exec: Any
    _sql: Any
    _meta: Any
    _set_meta: Any
    _current_key: Any
    _lock_audit: Any
    _lock_subject: Any
    _append_audit: Any
    _erase: Any
    _scrub: Any
    _upsert: Any
    _insert_trials: Any  # from TrialTables

    # -- counting and streaming reads ---------------------------------------------------------------
    def count(self, namespace: Namespace = Namespace.CUSTOMER, model_id: str | None = None) -> int:
        """Voiceprints in ``namespace``; with ``model_id``, only that model's complete ones."""
        if model_id is None:
            rows = self._query("SELECT COUNT(*) FROM voiceprints WHERE namespace = ?", (Namespace(namespace).value,))
        else:
            rows = self._query("SELECT COUNT(*) FROM voiceprints WHERE namespace = ? AND model_id = ? AND complete = 1",
                               (Namespace(namespace).value, model_id))
        return int(rows[0][0])

    def _pages(self, columns: str, namespace: Namespace, model_id: str | None,
               batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
        if batch_size < 1:
            raise StoreError(f"batch_size must be at least 1, got {batch_size}")
        where = "namespace = ?" + ("" if model_id is None else " AND model_id = ? AND complete = 1")
        base: tuple[Any, ...] = (Namespace(namespace).value,) + (() if model_id is None else (model_id,))
        after: str | None = None
        while True:
            cursor, params = ("", base) if after is None else (" AND subject_id > ?", (*base, after))
            rows = self._query(f"SELECT {columns} FROM voiceprints WHERE {where}{cursor} ORDER BY subject_id "
                               f"LIMIT {int(batch_size)}", params)
            if not rows:
                return
            yield rows
            if len(rows) < batch_size:
                return
            after = str(rows[-1][1])

    def iter_ids(self, namespace: Namespace = Namespace.CUSTOMER, model_id: str | None = None, *,
                 batch_size: int = 20_000) -> Iterator[str]:
        """Subject ids in id order (with ``model_id``: that model's complete voiceprints), streamed."""
        for rows in self._pages("namespace, subject_id", namespace, model_id, batch_size):
            yield from (str(r[1]) for r in rows)

    def iter_list(self, namespace: Namespace = Namespace.CUSTOMER, *,
                  batch_size: int = 10_000) -> Iterator[VoiceprintInfo]:
        """What :meth:`list` returns, streamed in id order (no embedding is decrypted)."""
        for rows in self._pages(INFO_COLUMNS, namespace, None, batch_size):
            yield from (row_to_info(r) for r in rows)

    def iter_embeddings(self, namespace: Namespace, model_id: str, *,
                        batch_size: int = 10_000) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, (n, dim) float32) batches of ``model_id``'s complete voiceprints; tampering raises."""
        for rows in self._pages(VOICEPRINT_SELECT, namespace, model_id, batch_size):
            yield rows_to_matrix(self.keyring, self.store_id, rows, model_id, "the store")

    def get_many(self, namespace: Namespace, subject_ids: Sequence[str]) -> dict[str, Voiceprint]:
        """The voiceprints of ``subject_ids`` that exist (decrypted), by id; tampering raises."""
        out: dict[str, Voiceprint] = {}
        ids = list(dict.fromkeys(subject_ids))
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start:start + IN_CHUNK]
            rows = self._query(f"SELECT {VOICEPRINT_SELECT} FROM voiceprints WHERE namespace = ? AND subject_id IN "
                               f"({', '.join('?' * len(chunk))})", (Namespace(namespace).value, *chunk))
            for row in rows:
                vp = row_to_voiceprint(self.keyring, self.store_id, row)
                out[vp.subject_id] = vp
        return out

    # -- the change feed -------------------------------------------------------------------------
    def change_seq(self) -> int:
        """The latest audit sequence number: changes after it are not yet in a cache built now."""
        rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM audit")
        return int(rows[0][0])

    def voiceprint_changes(self, after_seq: int, *, limit: int = 50_000) -> tuple[int, list[Change]]:
        """Customer-voiceprint changes audited after ``after_seq``, oldest first, and the sequence
        number to ask after next time (``after_seq`` when there were none)."""
        actions = (*ENROL_ACTIONS, *ERASE_ACTIONS)
        rows = self._query(f"SELECT seq, action, subject_id FROM audit WHERE seq > ? AND action IN "
                           f"({', '.join('?' * len(actions))}) ORDER BY seq LIMIT {int(limit)}",
                           (int(after_seq), *actions))
        changes = [Change(int(s), str(subject), action in ERASE_ACTIONS) for s, action, subject in rows if subject]
        last = int(rows[-1][0]) if rows else int(after_seq)
        return last, changes

    def touch_audited(self, namespace: Namespace, subject_id: str, when: float, event: AuditRecord,
                      trials: Sequence[Trial] = ()) -> None:
        """``touch``, ``audit`` and the decision's trial rows in one transaction: one commit (one fsync)
        per verification, not three."""
        with self._write() as con:
            self._exec(con, "UPDATE voiceprints SET last_used_at = ? WHERE namespace = ? AND subject_id = ?",
                       (float(when), Namespace(namespace).value, subject_id))
            self._append_audit(con, event)
            if trials:
                self._insert_trials(con, trials)

    # -- settings (non-biometric, in the meta table) ------------------------------------------------
    def setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (SETTING_PREFIX + key,))
        return str(rows[0][0]) if rows else None

    def put_setting(self, key: str, value: str, *, event: AuditRecord) -> None:
        """Write a setting and its audit event in one transaction."""
        with self._write() as con:
            self._set_meta(con, SETTING_PREFIX + key, value)
            self._append_audit(con, event)

    # -- batched writes ----------------------------------------------------------------------------
    def _append_audit_many(self, con: Any, records: Sequence[AuditRecord]) -> None:
        """Append ``records`` after the head and seal the new head once (what ``_append_audit`` does
        per event; the head's seal depends only on the previous head, so the result is the same)."""
        if not records:
            return
        if any(r.action == "key_rotation" for r in records):
            raise StoreError("key rotations are audited one by one")
        self._lock_audit(con)
        previous = Head.parse(self._meta(con, "audit_head"))
        last = (previous.seq, previous.hash) if previous else self._exec(
            con, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        rows = []
        for record in records:
            row = next_audit_row(last, record)
            rows.append(row)
            last = (row[0], row[-1])
        con.cursor().executemany(self._sql(f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({', '.join('?' * 9)})"), rows)
        head = Sealer(self.keyring, self.store_id).next_head(previous, self._meta(con, "current_key_id") or "",
                                                            records[-1], rows[-1][0], rows[-1][-1])
        self._set_meta(con, "audit_head", head.encode())

    def _lock_subjects(self, con: Any, namespace: Namespace, subject_ids: Sequence[str]) -> None:
        """Serialise with other writers of these subjects (the dialect may do it in one statement)."""
        for subject_id in sorted(subject_ids):
            self._lock_subject(con, namespace, subject_id)

    def bulk_insert(self, voiceprints: Iterable[Voiceprint], *, actor: str = "system", batch_size: int = 1000,
                    on_batch: Callable[[int], None] | None = None) -> BulkInsertResult:
        """Insert new voiceprints (a migration, or synthetic ones for a benchmark) in batches.

        Each batch is one transaction: version counters, ciphertexts and one ``enroll`` audit event
        per voiceprint (outcome ``bulk``; no consent record is written: for migrated voiceprints
        whose consent is held elsewhere). Already enrolled subjects are left untouched and opted-out
        customers skipped; both are returned. ``on_batch(inserted_so_far)`` after each commit.
        """
        if batch_size < 1:
            raise StoreError(f"batch_size must be at least 1, got {batch_size}")
        inserted, existing, opted_out = 0, [], []
        batch: list[Voiceprint] = []
        for vp in voiceprints:
            check_built(vp, vp.namespace, vp.subject_id)
            batch.append(vp)
            if len(batch) >= batch_size:
                inserted += self._insert_batch(batch, actor, existing, opted_out)
                batch = []
                if on_batch is not None:
                    on_batch(inserted)
        if batch:
            inserted += self._insert_batch(batch, actor, existing, opted_out)
            if on_batch is not None:
                on_batch(inserted)
        return BulkInsertResult(inserted, existing, opted_out)

    def _present(self, con: Any, sql: str, params: tuple[Any, ...], ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start:start + IN_CHUNK]
            cur = self._exec(con, sql.format(ids=", ".join("?" * len(chunk))), (*params, *chunk))
            found.update(str(r[0]) for r in cur.fetchall())
        return found

    def _insert_batch(self, batch: list[Voiceprint], actor: str, existing: list[str], opted_out: list[str]) -> int:
        by_key = {(vp.namespace.value, vp.subject_id): vp for vp in batch}  # the last one of a repeated id wins
        with self._write() as con:
            kid = self._current_key(con)
            todo: list[Voiceprint] = []
            for ns in sorted({k[0] for k in by_key}):
                ids = sorted(k[1] for k in by_key if k[0] == ns)
                self._lock_subjects(con, Namespace(ns), ids)
                there = self._present(con, "SELECT subject_id FROM voiceprints WHERE namespace = ? AND subject_id IN "
                                      "({ids})", (ns,), ids)
                out = self._present(con, "SELECT subject_id FROM opt_outs WHERE subject_id IN ({ids})", (), ids) \
                    if ns == Namespace.CUSTOMER.value else set()
                existing += sorted(there)
                opted_out += sorted(out - there)
                todo += [by_key[(ns, i)] for i in ids if i not in there and i not in out]
            rows, events = [], []
            for vp in todo:
                version = int(self._exec(con, BUMP_VERSION.format(p="?"),
                                         (vp.namespace.value, vp.subject_id)).fetchone()[0])
                rows.append(voiceprint_params(self.keyring, self.store_id, vp, kid, version))
                action = "enroll" if vp.namespace is Namespace.CUSTOMER else "watchlist_add"
                events.append(AuditRecord(action, vp.subject_id, "bulk", actor,
                                          {"speech_s": round(vp.speech_s, 1), "recordings": vp.recordings,
                                           "model": vp.model_id}))
            if rows:
                con.cursor().executemany(self._sql(
                    f"INSERT INTO voiceprints ({VOICEPRINT_COLUMNS}) VALUES ({', '.join('?' * 13)})"), rows)
            self._append_audit_many(con, events)
        return len(todo)

    def purge_unused_batched(self, older_than: float, *, actor: str = "system", batch_size: int = 1000,
                             on_batch: Callable[[list[str]], None] | None = None) -> int:
        """What :meth:`purge_unused` does, in transactions of ``batch_size`` voiceprints, without
        holding every id: ``on_batch(ids)`` after each committed (and scrubbed) batch; returns the count."""
        cutoff = purge_cutoff(older_than)
        if batch_size < 1:
            raise StoreError(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        while True:
            with self._write() as con:
                ids = [str(r[0]) for r in self._exec(
                    con, "SELECT subject_id FROM voiceprints WHERE namespace = ? AND COALESCE(last_used_at, "
                    f"updated_at) < ? ORDER BY subject_id LIMIT {int(batch_size)} {self.LOCK_ROWS}",
                    (Namespace.CUSTOMER.value, cutoff)).fetchall()]
                for subject_id in ids:
                    self._erase(con, Namespace.CUSTOMER, subject_id)
                self._append_audit_many(con, [AuditRecord("purge", s, "purged", actor, {"older_than": round(cutoff)})
                                              for s in ids])
            if not ids:
                return total
            total += len(ids)
            self._scrub(tuple(ids))
            if on_batch is not None:
                on_batch(ids)
