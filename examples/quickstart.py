"""Enrol a LibriSpeech speaker and verify them and an impostor.

    python examples/quickstart.py [--store quickstart.db]

Uses the shared LibriSpeech samples beside the checkout (../shared/corpora/librispeech-samples).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from voiceauth import Consent, Policy, VoiceAuth

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "librispeech-samples" / "test-other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=str(Path(tempfile.mkdtemp()) / "quickstart.db"))
    args = parser.parse_args()
    alice, bob = (sorted((CORPUS / s).glob("*.flac")) for s in ("1688", "2609"))

    with VoiceAuth(args.store, policy=Policy(target_far=0.01)) as va:
        consent = Consent.now(channel="ivr", notice_version="v3", captured_by="quickstart")
        progress = va.enroll("alice", alice[:3], consent=consent)
        print(f"enrolment: {progress.status.value}, {progress.percent:.0f}% of {progress.required_s:.0f} s of speech")
        for who, recording in (("alice", alice[5]), ("bob (impostor)", bob[5])):
            r = va.verify("alice", recording)
            print(f"{who:>15}: {r.decision.value:<12} confidence {r.confidence:.3f}  "
                  f"score {r.score:.3f}  speech {r.speech_s:.1f} s")
        print("policy:", va.thresholds().describe())


if __name__ == "__main__":
    main()
