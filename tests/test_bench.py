"""`voiceauth bench` and `voiceauth calibrate` on a small real corpus, and their bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voiceauth.cli import EXIT_ERROR, EXIT_OK, main
from voiceauth.errors import CorpusError
from voiceauth.tools.bench import split_corpus

pytestmark = pytest.mark.integration  # real model, processes or external tools


@pytest.fixture
def corpus(tmp_path, speakers) -> Path:  # noqa: ANN001
    """3 speakers x 5 files, plus one unreadable file."""
    root = tmp_path / "corpus"
    for spk in sorted(speakers)[:3]:
        (root / spk).mkdir(parents=True)
        for f in speakers[spk][:5]:
            shutil.copy(f, root / spk / f.name)
    (root / sorted(speakers)[0] / "zz-broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    return root


def test_bench_json_has_both_systems_and_counts_skipped_files(capsys, corpus, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    code = main(["bench", str(corpus), "--baseline", "--channel", "phone", "--max-seconds", "3",
                 "--json", "--out", str(out)])
    assert code == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["skipped_files"] == 1
    for system in ("voiceauth", "baseline"):
        r = result[system]
        assert r["n_genuine"] == 3 * 2 and r["n_impostor"] == 3 * 2 * 2
        assert 0.0 <= r["eer"] <= 0.5 and set(r["min_dcf"]) == {"0.01", "0.001"}
        assert {"far", "frr", "far_interval", "frr_interval"} <= set(r)
    assert result["settings"]["channel"] == "phone" and result["settings"]["max_seconds"] == 3.0
    for name in ("bench.json", "bench-trials.csv", "bench-det.png", "bench-scores.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "bench-det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the trials feed straight into `voiceauth calibrate`
    code = main(["calibrate", str(out / "bench-trials.csv"), "-o", str(tmp_path / "cal.json"), "--json"])
    assert code == EXIT_ERROR  # 6 genuine trials are too few to fit, and the error says so
    assert "at least 100 genuine" in capsys.readouterr().err


def test_corpus_with_one_speaker(tmp_path, speakers) -> None:  # noqa: ANN001
    spk = sorted(speakers)[0]
    (tmp_path / spk).mkdir()
    shutil.copy(speakers[spk][0], tmp_path / spk)
    with pytest.raises(CorpusError, match="at least 2"):
        split_corpus(tmp_path)


def test_speaker_with_too_few_files(capsys, corpus) -> None:  # noqa: ANN001
    code = main(["bench", str(corpus), "--enroll-files", "5"])
    assert code == EXIT_ERROR
    err = capsys.readouterr().err
    assert "too few files" in err and "--enroll-files" in err


def test_missing_corpus(capsys, tmp_path) -> None:  # noqa: ANN001
    assert main(["bench", str(tmp_path / "nope")]) == EXIT_ERROR


def test_calibrate_refits_on_enough_trials(capsys, tmp_path) -> None:  # noqa: ANN001
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["score,label,speech_s"]
    for _ in range(600):
        genuine = rng.random() < 0.3
        rows.append(f"{rng.normal(0.6 if genuine else 0.1, 0.1):.4f},{'genuine' if genuine else 'impostor'},"
                    f"{rng.uniform(1, 20):.1f}")
    trials = tmp_path / "t.csv"
    trials.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(trials), "-o", str(out)]) == EXIT_OK
    assert "expected false accepts" in capsys.readouterr().out
    assert main(["policy", "--calibration", str(out), "--target-far", "0.05", "--json"]) == EXIT_OK
    assert "raw" in json.loads(capsys.readouterr().out)
