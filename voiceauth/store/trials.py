"""In-domain trials and calibration versions: the tables behind calibrating on the bank's own calls.

A *trial* is one score the bank's traffic produced: a recording of an enrolment against the
customer's other recordings (genuine) or against other customers' voiceprints (impostor), the
evidence behind a verification or a live call (label unknown until the bank reports an
outcome), or the spoof check's bona fide score of a consented enrolment. A trial row holds only
scores, net speech, the normalisation, a channel tag, the day and its label: never an embedding,
audio or a customer id. Nothing in the store links a trial to a customer: its id is random, is
handed to the bank in the result and is never written to the audit trail; its time is kept to
the day; SQLite keeps the rows in the order of their random ids (no insertion order).

Calibration versions keep every calibration fitted from these trials (the calibration file's
JSON and its held-out report); one version per model and channel is active, and activating an
older one rolls back. Both are audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from voiceauth.errors import OutcomeError, StoreError
from voiceauth.store.base import AuditRecord

DAY_S = 86_400.0

TRIAL_COLUMNS = ("trial_id, kind, model_id, channel, normalisation, raw, as_norm, speech_s, llr, label, source, "
                 "day, calibration, trajectory")
MAX_TRAJECTORY = 40
"""Points of a call's trajectory kept: the first ones, 60 s of speech in 1.5 s segments, where
nearly every decision is made (about 0.6 kB a call)."""
CALIBRATION_COLUMNS = "version, model_id, channel, created_at, actor, payload, report, active"
_INSERT_TRIAL = f"INSERT INTO trials ({TRIAL_COLUMNS}) VALUES ({', '.join('?' * len(TRIAL_COLUMNS.split(',')))})"


class TrialKind:
    """What produced a trial."""

    ENROL_GENUINE = "enrol_genuine"
    ENROL_IMPOSTOR = "enrol_impostor"
    VERIFY = "verify"
    CALL = "call"
    SPOOF_BONA_FIDE = "spoof_bona_fide"
    """The spoof check's bona fide score of a consented enrolment recording (``raw`` holds it)."""

    SPEAKER = (ENROL_GENUINE, ENROL_IMPOSTOR, VERIFY, CALL)


@dataclass(frozen=True)
class Trial:
    """One in-domain trial. Plain numbers and tags only (a test scans the table for anything else)."""

    trial_id: str
    kind: str
    model_id: str
    channel: str
    """The channel tag (``ivr-8k``, ``app-16k``...); ``""`` when none was given."""
    normalisation: str
    """The normalisation the decision used (``raw`` / ``as-norm``)."""
    raw: float
    """Cosine score (for ``spoof_bona_fide``: the spoof check's bona fide score)."""
    as_norm: float | None
    """The AS-norm score, when a cohort large enough existed."""
    speech_s: float
    llr: float | None = None
    """The calibrated LLR behind the decision (verifications and calls)."""
    label: bool | None = None
    """True genuine, False impostor, None not (yet) known."""
    source: str | None = None
    """Where the label came from: ``enrolment``, ``kba``, ``fraud_case``..."""
    day: float = 0.0
    """Start (UTC) of the day the trial was made."""
    calibration: int = 0
    """Calibration version in force when it was scored (0: the shipped or a file calibration)."""
    trajectory: tuple[tuple[float, float], ...] | None = None
    """Calls only: (score, net speech) of each update once the call had enough speech for a
    decision, in the trial's normalisation, at most :data:`MAX_TRAJECTORY` of them. With a
    reported outcome it shows how high a call's LLR went under any calibration (the live
    accept margin is derived from these, :mod:`voiceauth.scoring.margin`)."""


def today(now: float | None = None) -> float:
    t = time.time() if now is None else now
    return float(int(t // DAY_S) * DAY_S)


def _row(t: Trial) -> tuple[Any, ...]:
    label = None if t.label is None else int(bool(t.label))
    return (t.trial_id, t.kind, t.model_id, t.channel, t.normalisation, round(float(t.raw), 5),
            None if t.as_norm is None else round(float(t.as_norm), 5), round(float(t.speech_s), 2),
            None if t.llr is None else round(float(t.llr), 3), label, t.source, today(t.day or None),
            int(t.calibration), _trajectory_text(t.trajectory))


def _trajectory_text(points: Sequence[Sequence[float]] | None) -> str | None:
    if points is None:
        return None
    return json.dumps([[round(float(v), 4), round(float(s), 2)] for v, s in list(points)[:MAX_TRAJECTORY]])


def _trial(r: Sequence[Any]) -> Trial:
    return Trial(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), float(r[5]),
                 None if r[6] is None else float(r[6]), float(r[7]), None if r[8] is None else float(r[8]),
                 None if r[9] is None else bool(r[9]), r[10], float(r[11]), int(r[12]),
                 None if r[13] is None else tuple((float(v), float(sp)) for v, sp in json.loads(r[13])))


@dataclass(frozen=True)
class CalibrationVersion:
    """One stored calibration: the calibration file's JSON and what its fit reported."""

    version: int
    model_id: str
    channel: str
    created_at: float
    actor: str
    payload: dict[str, Any]
    report: dict[str, Any]
    active: bool


@runtime_checkable
class TrialStore(Protocol):
    """What harvesting and in-domain calibration need from a store (both SQL stores have it)."""

    def add_trials(self, trials: Sequence[Trial]) -> None: ...
    def label_trial(self, trial_id: str, genuine: bool, source: str, *, actor: str) -> Trial: ...
    def trials(self, *, kinds: Sequence[str] = TrialKind.SPEAKER, model_id: str | None = None,
               channel: str | None = None, labelled: bool | None = None, since: float | None = None) -> list[Trial]: ...
    def trial_channels(self) -> list[str]: ...
    def save_calibration(self, model_id: str, channel: str, payload: dict[str, Any], report: dict[str, Any], *,
                         actor: str, activate: bool = True) -> int: ...
    def calibration_versions(self, model_id: str | None = None) -> list[CalibrationVersion]: ...
    def active_calibration(self, model_id: str, channel: str = "") -> CalibrationVersion | None: ...
    def activate_calibration(self, version: int, *, actor: str, reason: str = "rollback") -> CalibrationVersion: ...


class TrialTables:
    """The trial and calibration tables of :class:`~voiceauth.store.sql.SQLStore` (mixed into it)."""

    # provided by SQLStore
    _write: Any
    _query: Any
    _exec: Any
    _append_audit: Any

    def add_trials(self, trials: Sequence[Trial]) -> None:
        """Insert trials (new ids) in one transaction; not audited one by one (they hold no customer)."""
        if not trials:
            return
        with self._write() as con:
            self._insert_trials(con, trials)

    def _insert_trials(self, con: Any, trials: Sequence[Trial]) -> None:
        for t in trials:
            self._exec(con, _INSERT_TRIAL, _row(t))

    def label_trial(self, trial_id: str, genuine: bool, source: str, *, actor: str) -> Trial:
        """Record the outcome of one trial. The same outcome again is a no-op; a different one, or a
        trial that is not a verification or call, is an OutcomeError. Audited without the trial id."""
        with self._write() as con:
            row = self._exec(con, f"SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
            if row is None:
                raise OutcomeError(f"no trial {trial_id!r} in this store; pass the trial_id of a verification or "
                                 "call result (calls record theirs when they end)")
            trial = _trial(row)
            if trial.kind not in (TrialKind.VERIFY, TrialKind.CALL):
                raise OutcomeError(f"trial {trial_id!r} is an enrolment trial, labelled when it was made")
            if trial.label is not None:
                if trial.label != bool(genuine):
                    said = "genuine" if trial.label else "an impostor"
                    raise OutcomeError(f"trial {trial_id!r} was already reported {said} (source {trial.source}); "
                                     "outcomes are not overwritten")
                return trial
            self._exec(con, "UPDATE trials SET label = ?, source = ? WHERE trial_id = ?",
                       (int(bool(genuine)), source, trial_id))
            self._append_audit(con, AuditRecord("trial_outcome", None, "genuine" if genuine else "impostor", actor,
                                                {"source": source, "kind": trial.kind, "channel": trial.channel}))
        return Trial(**{**trial.__dict__, "label": bool(genuine), "source": source})

    def trials(self, *, kinds: Sequence[str] = TrialKind.SPEAKER, model_id: str | None = None,
               channel: str | None = None, labelled: bool | None = None, since: float | None = None) -> list[Trial]:
        """Trials of these kinds (and model, channel, label state, days from ``since``), oldest day first."""
        sql = f"SELECT {TRIAL_COLUMNS} FROM trials WHERE kind IN ({', '.join('?' * len(kinds))})"
        params: list[Any] = list(kinds)
        if model_id is not None:
            sql, params = sql + " AND model_id = ?", [*params, model_id]
        if channel is not None:
            sql, params = sql + " AND channel = ?", [*params, channel]
        if labelled is not None:
            sql += " AND label IS NOT NULL" if labelled else " AND label IS NULL"
        if since is not None:
            sql, params = sql + " AND day >= ?", [*params, today(since)]
        return [_trial(r) for r in self._query(sql + " ORDER BY day, trial_id", tuple(params))]

    def trial_channels(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT DISTINCT channel FROM trials ORDER BY channel")]

    # -- calibration versions --------------------------------------------------------------------
    def save_calibration(self, model_id: str, channel: str, payload: dict[str, Any], report: dict[str, Any], *,
                         actor: str, activate: bool = True) -> int:
        """Store a new calibration version (and make it the active one for its model and channel)."""
        with self._write() as con:
            version = int(self._exec(con, "SELECT COALESCE(MAX(version), 0) + 1 FROM calibrations").fetchone()[0])
            if activate:
                self._exec(con, "UPDATE calibrations SET active = 0 WHERE model_id = ? AND channel = ?",
                           (model_id, channel))
            self._exec(con, f"INSERT INTO calibrations ({CALIBRATION_COLUMNS}) VALUES ({', '.join('?' * 8)})",
                       (version, model_id, channel, time.time(), actor, json.dumps(payload), json.dumps(report),
                        int(activate)))
            self._append_audit(con, AuditRecord(
                "calibration_fit", None, "activated" if activate else "stored", actor,
                {"version": version, "channel": channel, "model": model_id,
                 **{k: v for k, v in report.get("summary", {}).items() if isinstance(v, (int, float, str, bool))}}))
        return version

    def calibration_versions(self, model_id: str | None = None) -> list[CalibrationVersion]:
        sql = f"SELECT {CALIBRATION_COLUMNS} FROM calibrations"
        rows = self._query(sql + (" WHERE model_id = ?" if model_id else "") + " ORDER BY version",
                           (model_id,) if model_id else ())
        return [_version(r) for r in rows]

    def active_calibration(self, model_id: str, channel: str = "") -> CalibrationVersion | None:
        rows = self._query(f"SELECT {CALIBRATION_COLUMNS} FROM calibrations WHERE model_id = ? AND channel = ? "
                           "AND active = 1", (model_id, channel))
        return _version(rows[0]) if rows else None

    def activate_calibration(self, version: int, *, actor: str, reason: str = "rollback") -> CalibrationVersion:
        """Make ``version`` the active calibration of its model and channel (a rollback); audited."""
        with self._write() as con:
            row = self._exec(con, f"SELECT {CALIBRATION_COLUMNS} FROM calibrations WHERE version = ?",
                             (int(version),)).fetchone()
            if row is None:
                raise StoreError(f"no calibration version {version} in this store; `voiceauth calibrate --list` "
                                 "shows them")
            target = _version(row)
            self._exec(con, "UPDATE calibrations SET active = 0 WHERE model_id = ? AND channel = ?",
                       (target.model_id, target.channel))
            self._exec(con, "UPDATE calibrations SET active = 1 WHERE version = ?", (target.version,))
            self._append_audit(con, AuditRecord("calibration_activate", None, reason, actor,
                                                {"version": target.version, "channel": target.channel,
                                                 "model": target.model_id}))
        return CalibrationVersion(**{**target.__dict__, "active": True})

    def deactivate_calibrations(self, model_id: str, channel: str, *, actor: str) -> None:
        """Back to the shipped (or file) calibration for this model and channel; audited."""
        with self._write() as con:
            self._exec(con, "UPDATE calibrations SET active = 0 WHERE model_id = ? AND channel = ?",
                       (model_id, channel))
            self._append_audit(con, AuditRecord("calibration_activate", None, "shipped", actor,
                                                {"version": 0, "channel": channel, "model": model_id}))


def _version(r: Sequence[Any]) -> CalibrationVersion:
    return CalibrationVersion(int(r[0]), str(r[1]), str(r[2]), float(r[3]), str(r[4]), json.loads(r[5]),
                              json.loads(r[6]), bool(r[7]))


SQLITE_MIGRATION = (
    """CREATE TABLE trials (
        trial_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model_id TEXT NOT NULL, channel TEXT NOT NULL,
        normalisation TEXT NOT NULL, raw REAL NOT NULL, as_norm REAL, speech_s REAL NOT NULL, llr REAL,
        label INTEGER, source TEXT, day REAL NOT NULL, calibration INTEGER NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX trials_by_kind ON trials (kind, model_id, channel, day)",
    """CREATE TABLE calibrations (
        version INTEGER PRIMARY KEY, model_id TEXT NOT NULL, channel TEXT NOT NULL, created_at REAL NOT NULL,
        actor TEXT NOT NULL, payload TEXT NOT NULL, report TEXT NOT NULL, active INTEGER NOT NULL)""",
)
"""Schema 3 of the SQLite store."""

POSTGRES_MIGRATION = """
    CREATE TABLE trials (
        trial_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model_id TEXT NOT NULL, channel TEXT NOT NULL,
        normalisation TEXT NOT NULL, raw DOUBLE PRECISION NOT NULL, as_norm DOUBLE PRECISION,
        speech_s DOUBLE PRECISION NOT NULL, llr DOUBLE PRECISION, label INTEGER, source TEXT,
        day DOUBLE PRECISION NOT NULL, calibration INTEGER NOT NULL
    );
    CREATE INDEX trials_by_kind ON trials (kind, model_id, channel, day);
    CREATE TABLE calibrations (
        version INTEGER PRIMARY KEY, model_id TEXT NOT NULL, channel TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, payload TEXT NOT NULL, report TEXT NOT NULL,
        active INTEGER NOT NULL
    )
"""
"""Schema 3 of the PostgreSQL store."""

SQLITE_TRAJECTORY_MIGRATION = ("ALTER TABLE trials ADD COLUMN trajectory TEXT",)
POSTGRES_TRAJECTORY_MIGRATION = "ALTER TABLE trials ADD COLUMN trajectory TEXT"
"""Schema 4 of both stores: call trajectories (:attr:`Trial.trajectory`)."""
