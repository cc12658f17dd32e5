"""The command line, called through main(argv) as a user would."""

from __future__ import annotations

import json

import pytest

from voiceauth.cli import EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_OPTED_OUT, EXIT_REJECT, main

pytestmark = pytest.mark.integration  # real model, processes or external tools

CONSENT = ["--consent-channel", "ivr", "--consent-notice", "v3", "--consent-by", "agent-17"]


@pytest.fixture
def store(tmp_path) -> str:  # noqa: ANN001
    return str(tmp_path / "cli.db")


def run(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_lists_commands(capsys) -> None:  # noqa: ANN001
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK
    for command in ("enroll", "verify", "identify", "delete", "list", "models", "demo", "bench", "calibrate"):
        assert command in out


def test_enrol_verify_exit_codes(capsys, store, speakers) -> None:  # noqa: ANN001
    a, b = sorted(speakers)[:2]
    files = [str(p) for p in speakers[a][:3]]
    code, out, _ = run(capsys, "enroll", a, *files, "--store", store, *CONSENT, "--json")
    assert code == EXIT_OK
    assert json.loads(out)["status"] == "complete"
    code, out, _ = run(capsys, "verify", a, str(speakers[a][5]), "--store", store)
    assert code == EXIT_OK and "ACCEPT" in out
    code, out, _ = run(capsys, "verify", a, str(speakers[b][5]), "--store", store, "--json")
    assert code == EXIT_REJECT and json.loads(out)["decision"] == "reject"
    code, out, _ = run(capsys, "list", "--store", store, "--json")
    assert [row["subject_id"] for row in json.loads(out)] == [a]
    code, out, _ = run(capsys, "consent", "show", a, "--store", store, "--json")
    assert json.loads(out)["consent"]["captured_by"] == "agent-17"
    code, _, _ = run(capsys, "audit", "verify", "--store", store)
    assert code == EXIT_OK
    code, _, _ = run(capsys, "opt-out", a, "--store", store)
    assert code == EXIT_OK
    code, out, _ = run(capsys, "verify", a, str(speakers[a][5]), "--store", store)
    assert code == EXIT_OPTED_OUT


def test_inconclusive_on_too_little_speech(capsys, store, speakers, tmp_path) -> None:  # noqa: ANN001
    import soundfile as sf

    a = sorted(speakers)[0]
    run(capsys, "enroll", a, *[str(p) for p in speakers[a][:3]], "--store", store, *CONSENT)
    x, rate = sf.read(speakers[a][5], dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, x[: int(rate * 1.2)], rate)
    code, out, _ = run(capsys, "verify", a, str(short), "--store", store)
    assert code == EXIT_INCONCLUSIVE, out


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "nobody", "/no/such/file.wav"],
        ["enroll", "c1", "/no/such/file.wav", *CONSENT],
        ["enroll", "c1", "/no/such/file.wav"],  # no consent
        ["verify", "nobody", __file__],
    ],
)
def test_bad_input_gives_message_and_exit_2_without_traceback(capsys, store, argv) -> None:  # noqa: ANN001
    code, out, err = run(capsys, *argv, "--store", store)
    assert code == EXIT_ERROR
    assert "Traceback" not in out + err
    assert err.strip()


def test_store_that_is_not_a_database(capsys, tmp_path) -> None:  # noqa: ANN001
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello " * 200)
    code, _, err = run(capsys, "list", "--store", str(bogus))
    assert code == EXIT_ERROR and "notes.txt" in err and "Traceback" not in err
