"""Stream a recording into a live call as 20 ms G.711 frames and print the state over time.

    python examples/ivr_simulation.py --store voiceprints.db --customer cust-42 --file call.wav
    python examples/ivr_simulation.py ... --speed 4 --encoding alaw   # 4x faster than real time

The file is put through a phone channel (8 kHz, G.711), cut into 20 ms frames and fed at
``--speed`` times real time, as an IVR would. Every status change is printed with the
call time and the net speech heard so far.
"""

from __future__ import annotations

import argparse
import time

from voiceauth import VoiceAuth
from voiceauth.audio.channel import telephone_channel
from voiceauth.audio.decode import load_audio
from voiceauth.audio.g711 import alaw_encode, mulaw_encode
from voiceauth.live import CallResult

FRAME_S = 0.02
RATE = 8000


def g711_frames(path: str, encoding: str) -> list[bytes]:
    """The file as 20 ms frames of G.711 bytes, through a simulated phone line."""
    samples = telephone_channel(load_audio(path)).samples
    codes = mulaw_encode(samples) if encoding == "mulaw" else alaw_encode(samples)
    size = int(FRAME_S * RATE)
    return [codes[i : i + size].tobytes() for i in range(0, len(codes) - size + 1, size)]


def describe(result: CallResult) -> str:
    flags = ",".join(f.value for f in result.flags) or "-"
    spoof = "pending" if result.spoof_score is None else f"{result.spoof_score:+.1f}"
    return (f"{result.status.value:<18} confidence {result.confidence:.3f}  speech {result.speech_s:4.1f} s "
            f"({result.progress:3.0f}%)  spoof check {spoof}  flags {flags}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="voiceprint store (SQLite path or postgresql:// URL)")
    parser.add_argument("--customer", required=True, help="the customer the caller claims to be")
    parser.add_argument("--file", required=True, help="recording of the caller (WAV/FLAC/OGG)")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (default 1)")
    parser.add_argument("--encoding", choices=("mulaw", "alaw"), default="mulaw")
    args = parser.parse_args()

    frames = g711_frames(args.file, args.encoding)
    started = time.monotonic()

    def on_decision(result: CallResult) -> None:  # runs on a worker thread
        print(f"[{time.monotonic() - started:6.2f} s] -> {describe(result)}", flush=True)

    with VoiceAuth(args.store) as va, va.start_call(
        args.customer, sample_rate=RATE, encoding=args.encoding, on_decision=on_decision
    ) as call:
        print(f"[  0.00 s] call {call.call_id}: {describe(call.result())}")
        for index, frame in enumerate(frames):
            call.feed(frame)  # returns at once
            if index % 50 == 49:  # a once-a-second progress line from the IVR side
                print(f"[{time.monotonic() - started:6.2f} s]    {describe(call.result())}", flush=True)
            delay = started + (index + 1) * FRAME_S / args.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        call.close()
        final = call.result(wait=30)
    print(f"[{time.monotonic() - started:6.2f} s] final: {describe(final)}")
    for revision in final.revisions:
        print(f"    at {revision.at_s:6.2f} s, {revision.speech_s:4.1f} s speech: {revision.status.value} "
              f"({revision.reason})")


if __name__ == "__main__":
    main()
