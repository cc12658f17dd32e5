"""`voiceauth demo`: real meeting speech, enrolled in one meeting and verified in the others."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voiceauth.decision import Decision
from voiceauth.errors import NoSpeechError
from voiceauth.results import Flag
from voiceauth.scoring.policy import Policy
from voiceauth.scoring.statistics import eer
from voiceauth.store.base import Consent
from voiceauth.tools.samples import enrolment_meeting, meeting_speech, meetings

DEMO_TARGET_FAR = 0.001
"""The demo's false-accept target. It tries each of its ~50 test recordings as each of the 8 other
speakers (~400 impostor attempts); to show no impostor accepted it must run at a rate whose expected
count of false accepts there is well under one: 0.1 % (0.4 expected). At the library's default of
1 % (``Policy()``) about 4 are expected (``voiceauth demo --target-far 0.01``)."""


@dataclass
class Tally:
    accepted: int = 0
    rejected: int = 0
    inconclusive: int = 0

    def add(self, decision: Decision) -> None:
        if decision is Decision.ACCEPT:
            self.accepted += 1
        elif decision is Decision.REJECT:
            self.rejected += 1
        else:
            self.inconclusive += 1

    @property
    def total(self) -> int:
        return self.accepted + self.rejected + self.inconclusive


@dataclass
class DemoReport:
    enrolment_meeting: str
    speakers: list[str]
    target_far: float = DEMO_TARGET_FAR
    genuine: Tally = field(default_factory=Tally)
    impostor: Tally = field(default_factory=Tally)
    skipped: int = 0
    spoof_held: int = 0
    """Genuine attempts made INCONCLUSIVE by the spoof check (false alarms: the speech is real)."""
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    per_speaker: dict[str, Tally] = field(default_factory=dict)

    @property
    def eer(self) -> float:
        return eer(np.array(self.scores), np.array(self.labels))[0]

    def to_dict(self) -> dict[str, object]:
        def tally(t: Tally) -> dict[str, int]:
            return {"accepted": t.accepted, "rejected": t.rejected, "inconclusive": t.inconclusive, "total": t.total}

        return {
            "enrolment_meeting": self.enrolment_meeting,
            "speakers": self.speakers,
            "target_far": self.target_far,
            "expected_false_accepts": round(self.target_far * self.impostor.total, 2),
            "genuine": tally(self.genuine),
            "impostor": tally(self.impostor),
            "skipped_no_speech": self.skipped,
            "genuine_held_by_spoof_check": self.spoof_held,
            "eer": round(self.eer, 4),
            "per_speaker": {k: tally(v) for k, v in self.per_speaker.items()},
        }

    def table(self) -> str:
        lines = [
            f"Enrolled {len(self.speakers)} speakers from meeting {self.enrolment_meeting}; "
            "verified their speech in the other meetings.",
            "",
            f"{'speaker':<12}{'genuine accepted':>18}",
        ]
        for name, t in sorted(self.per_speaker.items()):
            lines.append(f"{name:<12}{f'{t.accepted} / {t.total}':>18}")
        lines += [
            "",
            f"{'':<28}{'accepted':>10}{'rejected':>10}{'inconclusive':>14}{'total':>8}",
            f"{'genuine attempts':<28}{self.genuine.accepted:>10}{self.genuine.rejected:>10}"
            f"{self.genuine.inconclusive:>14}{self.genuine.total:>8}",
            f"{'impostor attempts':<28}{self.impostor.accepted:>10}{self.impostor.rejected:>10}"
            f"{self.impostor.inconclusive:>14}{self.impostor.total:>8}",
            "",
            f"Policy: target false-accept rate {self.target_far:.2%}, so about "
            f"{self.target_far * self.impostor.total:.1f} of {self.impostor.total} impostor attempts are expected "
            "to be accepted (--target-far changes it)",
            f"EER over all trials (calibrated scores): {self.eer:.2%}",
        ]
        if self.spoof_held:
            lines.append(f"{self.spoof_held} genuine attempts were held back (INCONCLUSIVE) by the spoof check: "
                         "AASIST false alarms on this broadcast-processed audio (see README, Fraud)")
        if self.skipped:
            lines.append(f"({self.skipped} recordings without enough speech were skipped)")
        return "\n".join(lines)


def run_demo(model_dir: str | None = None, progress: bool = True, target_far: float = DEMO_TARGET_FAR) -> DemoReport:
    """Run the demo in a temporary encrypted store, deciding at ``target_far``; nothing is kept afterwards."""
    import click

    from voiceauth.client import VoiceAuth
    from voiceauth.store.crypto import KeyRing
    from voiceauth.store.sqlite import SQLiteStore

    policy = Policy(target_far=target_far)  # a bad target fails here, before any download or model work
    by_meeting = meetings(meeting_speech())
    enrol_in = enrolment_meeting(by_meeting)
    speakers = sorted(by_meeting[enrol_in])
    consent = Consent.now(channel="demo", notice_version="demo", captured_by="voiceauth-demo")
    tests = [(spk, wav) for m, spk_files in sorted(by_meeting.items()) if m != enrol_in
             for spk, files in sorted(spk_files.items()) if spk in speakers for wav in files]
    report = DemoReport(enrol_in, speakers, target_far, per_speaker={s: Tally() for s in speakers})
    with tempfile.TemporaryDirectory(prefix="voiceauth-demo-") as tmp:
        store = SQLiteStore(Path(tmp) / "demo.db", keyring=KeyRing.ephemeral())
        with VoiceAuth(store, model_dir=model_dir, actor="demo", policy=policy) as va:
            steps = len(speakers) + len(tests)
            with click.progressbar(length=steps, label="enrolling and verifying", hidden=not progress) as bar:
                for speaker in speakers:
                    va.enroll(speaker, by_meeting[enrol_in][speaker], consent=consent)
                    bar.update(1)
                for speaker, wav in tests:
                    bar.update(1)
                    try:
                        probe = va.probe(wav)
                    except NoSpeechError:
                        report.skipped += 1
                        continue
                    for claimed in speakers:
                        result = va.verify(claimed, probe)
                        genuine = claimed == speaker
                        (report.genuine if genuine else report.impostor).add(result.decision)
                        if genuine:
                            report.per_speaker[speaker].add(result.decision)
                            report.spoof_held += Flag.SPOOF_SUSPECTED in result.flags
                        report.scores.append(result.llr)
                        report.labels.append(genuine)
    return report
