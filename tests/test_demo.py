"""`voiceauth demo`: the policy it decides with (the run itself is `make demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import voiceauth.client
import voiceauth.tools.demo as demo
from voiceauth.cli import EXIT_ERROR, main
from voiceauth.tools.demo import DEMO_TARGET_FAR, DemoReport, Tally, run_demo


class _Stop(Exception):
    pass


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """run_demo on two fake meetings, stopped where it opens the client (no model, no download)."""
    seen: dict[str, Any] = {}
    meeting = {"m1": {"a": [tmp_path / "a1.wav"], "b": [tmp_path / "b1.wav"]},
               "m2": {"a": [tmp_path / "a2.wav"], "b": [tmp_path / "b2.wav"]}}
    monkeypatch.setattr(demo, "meeting_speech", lambda: [])
    monkeypatch.setattr(demo, "meetings", lambda _files: meeting)
    monkeypatch.setattr(demo, "enrolment_meeting", lambda _by: "m1")

    def client(*_args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(voiceauth.client, "VoiceAuth", client)
    return seen


def test_demo_decides_at_a_rate_that_expects_under_one_false_accept(captured: dict[str, Any]) -> None:
    with pytest.raises(_Stop):
        run_demo(progress=False)
    assert captured["policy"].target_far == DEMO_TARGET_FAR
    # ~50 recordings x 8 other speakers: fewer than one false accept expected among them
    assert DEMO_TARGET_FAR * 51 * 8 < 0.5


def test_demo_target_can_be_chosen(captured: dict[str, Any]) -> None:
    with pytest.raises(_Stop):
        run_demo(progress=False, target_far=0.01)
    assert captured["policy"].target_far == 0.01


def test_demo_rejects_an_impossible_target_before_any_work(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fetched: list[bool] = []
    monkeypatch.setattr(demo, "meeting_speech", lambda: fetched.append(True) or [])
    assert main(["demo", "--target-far", "2"]) == EXIT_ERROR
    assert "target_far" in capsys.readouterr().err
    assert captured == {} and fetched == []  # nothing downloaded, no client opened, no model loaded


def test_demo_report_states_the_false_accepts_it_expects() -> None:
    report = DemoReport("m1", ["a", "b"], 0.001, impostor=Tally(rejected=400, inconclusive=8),
                        scores=[5.0, -3.0], labels=[True, False])
    assert report.to_dict()["expected_false_accepts"] == 0.41
    assert "target false-accept rate 0.10%, so about 0.4 of 408 impostor attempts" in report.table()
