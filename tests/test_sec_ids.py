"""Issue 12 (4, 5 and low items): canonical customer ids, truthful opt-out / delete, management
commands that never create a store, opt-out kept by a failed re-enrolment, and CLI hygiene."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pg_server import pg_url  # noqa: F401 - the session fixture store_factory's postgres backend needs
from test_session import STAND_IN_CALIBRATION
from test_store_contract import Backend, store_factory  # noqa: F401 - both backends, as in the contract tests

from voiceauth.cli import EXIT_ERROR, EXIT_OK, EXIT_OPTED_OUT, main
from voiceauth.errors import OptedOutError, StoreError, VoiceAuthError
from voiceauth.store import AuditRecord, Consent, Namespace, Voiceprint, open_store

CONSENT = ["--consent-channel", "ivr", "--consent-notice", "v3", "--consent-by", "agent-17"]
NFC_ID = unicodedata.normalize("NFC", "cust-é42")
NFD_ID = unicodedata.normalize("NFD", "cust-é42")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def seed(path: Path, *ids: str) -> None:
    """A store holding a complete voiceprint, with consent, for each id (no model needed)."""
    store = open_store(path)
    try:
        for n, subject in enumerate(ids):
            vec = np.random.default_rng(n).standard_normal(192).astype(np.float32)
            now = time.time()
            vp = Voiceprint(subject, Namespace.CUSTOMER, "ecapa-test", vec / np.linalg.norm(vec), 12.0, 2, True,
                            now, now)
            store.upsert(Namespace.CUSTOMER, subject, lambda _cur, vp=vp: vp,
                         event=AuditRecord("enroll", subject, "new", "tests"),
                         consent=Consent.now(channel="ivr", notice_version="v3", captured_by="agent-17"))
    finally:
        store.close()


def listed(capsys: pytest.CaptureFixture[str], store: Path) -> list[str]:
    code, out, err = run(capsys, "list", "--store", str(store), "--json")
    assert code == EXIT_OK, err
    return [row["subject_id"] for row in json.loads(out)]


def events(store: Path) -> list[tuple[str, str | None, str, str]]:
    s = open_store(store)
    try:
        return [(e.action, e.subject_id, e.outcome, e.actor) for e in s.audit_events()]
    finally:
        s.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ids.db"


# -- canonical ids ------------------------------------------------------------------------------------


def test_canonical_id_normalises_and_refuses() -> None:
    from voiceauth.ids import canonical_id

    assert canonical_id("  cust-42\t") == "cust-42"
    assert canonical_id(NFD_ID) == NFC_ID
    assert canonical_id("CUST-42") == "CUST-42", "case is kept: ids are the bank's opaque identifiers"
    for bad in ("", "   ", "cust\u200b-42", "cust-42\x00", "\ufeffcust-42", "cust\n42", "cust\u00a042", "x" * 300):
        with pytest.raises(VoiceAuthError):
            canonical_id(bad)


@pytest.mark.parametrize("variant", ["cust-42 ", " cust-42", "cust-42\n", "CUST-42", "Cust-42", NFD_ID,
                                     "cust\u200b-42"])
@pytest.mark.parametrize("command", ["opt-out", "delete"])
def test_erasure_by_variant_id_never_claims_success_while_listed(capsys, db, variant, command) -> None:  # noqa: ANN001
    seed(db, "cust-42", NFC_ID)
    target = NFC_ID if unicodedata.normalize("NFC", variant) == NFC_ID else "cust-42"
    code, out, err = run(capsys, command, variant, "--store", str(db))
    assert "Traceback" not in out + err
    still = target in listed(capsys, db)
    assert not (code == EXIT_OK and still), f"{command} {variant!r} exited 0 ({out!r}) but {target} is still listed"
    if variant.strip() == "cust-42" or variant == NFD_ID:
        assert code == EXIT_OK and not still, "whitespace / Unicode-form variants reach the canonical record"
    else:
        assert code == EXIT_ERROR and still and err.strip()


def test_opt_out_of_case_variant_names_the_enrolled_id(capsys, db) -> None:  # noqa: ANN001
    seed(db, "cust-42")
    code, out, err = run(capsys, "opt-out", "CUST-42", "--store", str(db))
    assert code == EXIT_ERROR
    assert "no voiceprint was found" in out + err and "cust-42" in err


def test_opt_out_reports_what_it_erased(capsys, db) -> None:  # noqa: ANN001
    seed(db, "cust-42")
    code, out, _ = run(capsys, "opt-out", "cust-42", "--store", str(db), "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    assert report["voiceprint_deleted"] is True and report["consent_withdrawn"] is True
    assert report["opt_out_recorded"] is True
    # a second opt-out: nothing left to erase, and it says so
    code, out, _ = run(capsys, "opt-out", "cust-42", "--store", str(db))
    assert code == EXIT_OK and "no voiceprint was found" in out
    store = open_store(db)
    try:
        opt_outs = [e for e in store.audit_events() if e.action == "opt_out"]
    finally:
        store.close()
    assert [e.details["voiceprint_deleted"] for e in opt_outs] == [True, False]


def test_opt_out_of_unknown_id_is_recorded_and_says_no_voiceprint(capsys, db) -> None:  # noqa: ANN001
    seed(db, "cust-42")
    code, out, _ = run(capsys, "opt-out", "cust-7", "--store", str(db))
    assert code == EXIT_OK and "no voiceprint was found" in out
    code, out, _ = run(capsys, "consent", "show", "cust-7", "--store", str(db), "--json")
    assert json.loads(out)["opted_out"] is True


@pytest.mark.parametrize("argv", [["opt-out", "cust-42"], ["delete", "cust-42"], ["list"], ["consent", "show", "c"],
                                  ["purge", "--unused-days", "1"], ["keys", "rotate"], ["audit", "verify"],
                                  ["audit", "show"], ["watchlist", "list"], ["watchlist", "remove", "x"],
                                  ["verify", "cust-42", "nothing.wav"]])
def test_management_commands_never_create_a_store_or_key(capsys, tmp_path, isolated_keys, argv) -> None:  # noqa: ANN001
    typo = tmp_path / "voiceprnts.db"
    code, out, err = run(capsys, *argv, "--store", str(typo))
    assert code == EXIT_ERROR, out + err
    assert "no store at" in err and str(typo) in err and "--store" in err
    assert "Traceback" not in out + err
    assert not typo.exists() and list(tmp_path.iterdir()) == []
    assert not (isolated_keys / "voiceauth" / "keyring.json").exists(), "a key file was created"


# -- opt-out survives a failed re-enrolment ---------------------------------------------------------------


def _silence(path: Path) -> str:
    sf.write(path, np.zeros(16000 * 4, dtype=np.float32), 16000)
    return str(path)


def test_failed_reenrolment_keeps_the_opt_out(capsys, db, tmp_path) -> None:  # noqa: ANN001
    seed(db, "cust-42")
    assert run(capsys, "opt-out", "cust-42", "--store", str(db))[0] == EXIT_OK
    silent = _silence(tmp_path / "silent.wav")
    code, _, err = run(capsys, "enroll", "cust-42", silent, "--store", str(db), *CONSENT)
    assert code == EXIT_ERROR and "speech" in err
    store = open_store(db)
    try:
        assert store.is_opted_out("cust-42")
        consent = store.consent("cust-42")
        assert consent is not None and consent.withdrawn_at is not None
    finally:
        store.close()
    assert not [e for e in events(db) if e[0] == "opt_in"]
    code, _, _ = run(capsys, "enroll", "cust-42", silent, "--store", str(db), "--legacy-migration")
    assert code == EXIT_OPTED_OUT, "consent-free migration stays blocked"


class StandIn:
    """A deterministic embedder, so enrolment runs without the model."""

    model_id = "stand-in"
    dim = 192

    def embed(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(signals), self.dim), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def test_reenrolment_lifts_the_opt_out_with_the_new_consent(tmp_path, speakers) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth

    spk = sorted(speakers)[0]
    fresh = Consent.now(channel="agent", notice_version="v4", captured_by="agent-9")
    with VoiceAuth(tmp_path / "re.db", embedder=StandIn(), spoof=False, calibration=STAND_IN_CALIBRATION,
                   actor="agent-9") as va:
        va.enroll(" cust-42", speakers[spk][:1], consent=fresh)
        result = va.opt_out("cust-42 ")
        assert result.voiceprint_deleted and result.consent_withdrawn and va.list() == []
        with pytest.raises(OptedOutError):
            va.enroll("cust-42", speakers[spk][:1], consent=None, legacy_migration=True)
        va.enroll("cust-42", speakers[spk][:1], consent=fresh)
        assert not va.is_opted_out("cust-42")
        consent = va.consent("cust-42")
        assert consent is not None and consent.withdrawn_at is None
        tail = [(e.action, e.outcome) for e in va.store.audit_events()][-3:]
        assert tail == [("opt_in", "fresh_consent"), ("consent", "recorded"), ("enroll", "new")]


def _vp(subject: str) -> Voiceprint:
    vec = np.ones(192, dtype=np.float32) / np.sqrt(192)
    return Voiceprint(subject, Namespace.CUSTOMER, "m", vec, 12.0, 1, True, 1.0, 1.0)


def _fresh() -> Consent:
    return Consent.now(channel="ivr", notice_version="v3", captured_by="x")


def test_store_opt_out_reports_and_opt_in_is_atomic(store_factory: Backend) -> None:  # noqa: F811
    """Both backends: opt_out says what it erased; an opt-out is lifted only with the voiceprint it lets in."""
    store = store_factory.store()
    store.upsert(Namespace.CUSTOMER, "c", lambda _c: _vp("c"), event=AuditRecord("enroll", "c", "new"),
                 consent=_fresh())
    first = store.opt_out("c", event=AuditRecord("opt_out", "c", "opted_out", "tests"))
    assert (first.voiceprint_deleted, first.consent_withdrawn, first.already_opted_out) == (True, True, False)
    again = store.opt_out("c", event=AuditRecord("opt_out", "c", "opted_out", "tests"))
    assert (again.voiceprint_deleted, again.consent_withdrawn, again.already_opted_out) == (False, False, True)
    details = [e.details for e in store.audit_events() if e.action == "opt_out"]
    assert [d["voiceprint_deleted"] for d in details] == [True, False]
    # a concurrent opt-out between the facade's check and the write wins
    with pytest.raises(OptedOutError):
        store.upsert(Namespace.CUSTOMER, "c", lambda _c: _vp("c"), event=AuditRecord("enroll", "c", "new"),
                     consent=_fresh())

    def broken(_cur: Voiceprint | None) -> Voiceprint:
        raise VoiceAuthError("builder failed")

    with pytest.raises(VoiceAuthError, match="builder failed"):
        store.upsert(Namespace.CUSTOMER, "c", broken, event=AuditRecord("enroll", "c", "new"), consent=_fresh(),
                     opt_in=AuditRecord("opt_in", "c", "fresh_consent"))
    assert store.is_opted_out("c") and store.get(Namespace.CUSTOMER, "c") is None
    assert "opt_in" not in [e.action for e in store.audit_events()]
    store.upsert(Namespace.CUSTOMER, "c", lambda _c: _vp("c"), event=AuditRecord("enroll", "c", "new"),
                 consent=_fresh(), opt_in=AuditRecord("opt_in", "c", "fresh_consent"))
    assert not store.is_opted_out("c") and store.get(Namespace.CUSTOMER, "c") is not None
    assert [e.action for e in store.audit_events()][-3:] == ["opt_in", "consent", "enroll"]
    assert store.verify_audit().ok


def test_open_store_without_create_creates_nothing(store_factory: Backend, tmp_path: Path,  # noqa: F811
                                                   isolated_keys: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        store_factory.open(create=False)
    if store_factory.name == "sqlite":
        assert not (tmp_path / "voiceprints.db").exists()
    else:
        assert store_factory.fetch("SELECT to_regclass('voiceauth_schema')", ()) == [(None,)]
    assert not (isolated_keys / "voiceauth" / "keyring.json").exists()


# -- facade entry points ------------------------------------------------------------------------------------


def test_facade_entry_points_use_canonical_ids(tmp_path) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth
    from voiceauth.results import Probe

    seed(tmp_path / "f.db", "cust-42")
    with VoiceAuth(tmp_path / "f.db", embedder=StandIn(), spoof=False, calibration=STAND_IN_CALIBRATION) as va:
        assert va.consent(" cust-42 ") is not None
        probe = Probe(np.eye(192, dtype=np.float32)[0], "stand-in", 5.0)
        for bad in ("", "cust\u200b-42"):
            for call in (lambda b: va.enroll(b, [], consent=None, legacy_migration=True), va.delete, va.opt_out,
                         va.consent, va.start_call, lambda b: va.verify(b, probe),
                         lambda b: va.watchlist.add(b, [], reason="case 1"), va.watchlist.remove):
                with pytest.raises(VoiceAuthError):
                    call(bad)
        assert va.similar_ids("CUST-42") == ["cust-42"]
        assert va.delete("cust-42 ") is True and va.list() == []
        assert va.similar_ids("CUST-42") == []


# -- CLI hygiene -------------------------------------------------------------------------------------------------


def test_unexpected_error_exits_with_internal_code_without_traceback(capsys, db, monkeypatch) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth

    seed(db, "cust-42")

    def boom(self: object) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(VoiceAuth, "list", boom)
    code, out, err = run(capsys, "list", "--store", str(db))
    assert code not in (0, 1, EXIT_ERROR) and code == 6
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1 and "internal error" in err and "RuntimeError" in err


def test_actor_is_recorded(capsys, db, monkeypatch) -> None:  # noqa: ANN001
    seed(db, "a", "b", "c")
    assert run(capsys, "delete", "a", "--store", str(db), "--actor", "agent-7")[0] == EXIT_OK
    monkeypatch.setenv("VOICEAUTH_ACTOR", "dpo-office")
    assert run(capsys, "opt-out", "b", "--store", str(db))[0] == EXIT_OK
    monkeypatch.delenv("VOICEAUTH_ACTOR")
    assert run(capsys, "delete", "c", "--store", str(db))[0] == EXIT_OK
    actors = {e[1]: e[3] for e in events(db) if e[0] in ("delete", "opt_out")}
    assert actors["a"] == "agent-7" and actors["b"] == "dpo-office"
    assert actors["c"].startswith("cli:") and len(actors["c"]) > 4
    code, _, err = run(capsys, "delete", "c", "--store", str(db), "--actor", "bad\x00actor")
    assert code == EXIT_ERROR and err.strip()


@pytest.mark.parametrize("top_k", ["-1", "0", "100000"])
def test_identify_top_k_is_validated(capsys, db, tmp_path, top_k) -> None:  # noqa: ANN001
    seed(db, "cust-42")
    code, out, err = run(capsys, "identify", _silence(tmp_path / "s.wav"), "--top-k", top_k, "--store", str(db))
    assert code == EXIT_ERROR and "top-k" in err.lower() and "Traceback" not in out + err


def test_facade_identify_top_k_is_validated(tmp_path) -> None:  # noqa: ANN001
    from voiceauth.client import VoiceAuth
    from voiceauth.results import Probe

    seed(tmp_path / "f.db", "cust-42")
    with VoiceAuth(tmp_path / "f.db", embedder=StandIn(), spoof=False, calibration=STAND_IN_CALIBRATION) as va:
        probe = Probe(np.eye(192, dtype=np.float32)[0], "ecapa-test", 5.0)
        for bad in (-1, 0, 10_000):
            with pytest.raises(VoiceAuthError, match="top_k"):
                va.identify(probe, top_k=bad)
        assert [c.customer_id for c in va.identify(probe, top_k=1)] == ["cust-42"]
