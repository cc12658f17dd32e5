"""Known-fraudster watchlist: screening in verification, separate namespace, CLI, audit."""

from __future__ import annotations

import json

from voiceauth import Decision, Flag
from voiceauth.cli import EXIT_OK, main
from voiceauth.store.base import Namespace


def test_fraudster_is_flagged_and_never_accepted(make_client, speakers, consent) -> None:  # noqa: ANN001
    va = make_client(spoof=False)
    customer, fraudster, other = sorted(speakers)[:3]
    va.enroll(customer, speakers[customer][:3], consent=consent)
    entry = va.watchlist.add("case-981", speakers[fraudster][:2], reason="account takeover 2026-10")
    assert entry.namespace is Namespace.WATCHLIST and entry.meta["reason"].startswith("account takeover")
    # separate namespaces: the fraudster is not a customer, and not in the cohort or identify
    assert [i.subject_id for i in va.list()] == [customer]
    assert all(c.customer_id != "case-981" for c in va.identify(speakers[fraudster][6]))

    caught = va.verify(customer, speakers[fraudster][6])
    assert Flag.FRAUDSTER_MATCH in caught.flags
    assert caught.watchlist_hit is not None and caught.watchlist_hit.label == "case-981"
    assert caught.decision is not Decision.ACCEPT

    genuine = va.verify(customer, speakers[customer][5])
    assert genuine.decision is Decision.ACCEPT and genuine.watchlist_hit is None
    stranger = va.verify(customer, speakers[other][5])
    assert stranger.watchlist_hit is None

    hits = [e for e in va.store.audit_events() if e.action == "watchlist_hit"]
    assert len(hits) == 1 and hits[0].outcome == "case-981"
    assert va.watchlist.remove("case-981") and va.watchlist.list() == []
    assert va.verify(customer, speakers[fraudster][6]).watchlist_hit is None


def test_watchlist_cli(capsys, tmp_path, speakers) -> None:  # noqa: ANN001
    store = str(tmp_path / "w.db")
    spk = sorted(speakers)[4]
    files = [str(p) for p in speakers[spk][:2]]
    assert main(["watchlist", "add", "case-7", *files, "--reason", "mule", "--store", store]) == EXIT_OK
    capsys.readouterr()
    assert main(["watchlist", "list", "--store", store, "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [e["subject_id"] for e in listed] == ["case-7"] and listed[0]["meta"]["reason"] == "mule"
    assert main(["watchlist", "remove", "case-7", "--store", store]) == EXIT_OK


def test_synthetic_voice_is_never_accepted(make_client, tmp_path, consent) -> None:  # noqa: ANN001
    """A 'customer' enrolled from TTS, then a TTS caller: the voices match, the spoof check refuses."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not on PATH (apt-get install espeak-ng)")
    lines = ["My account number is on the card I received last month and I would like to check it.",
             "I am calling about a payment that I do not recognise on my statement from yesterday.",
             "Please could you tell me the balance of my savings account and the last transfer.",
             "I want to change the address on my account because I moved house in the summer."]
    wavs = []
    for i, text in enumerate(lines):
        wav = tmp_path / f"tts{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-gb", "-w", str(wav), text], check=True)
        wavs.append(wav)
    va = make_client()
    va.enroll("synthetic", wavs[:3], consent=consent)
    result = va.verify("synthetic", wavs[3])
    assert result.score > 0.5  # the speaker model alone would accept the cloned voice
    assert Flag.SPOOF_SUSPECTED in result.flags
    assert result.decision is not Decision.ACCEPT
    assert result.spoof_probability is not None and result.spoof_probability > 0.5
