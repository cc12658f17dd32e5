"""Minimal IVR integration: react to live decisions through a callback.

    python examples/callbacks.py --store voiceprints.db --customer cust-42 --file call.wav

``on_decision`` runs on a voiceauth worker thread once per status change, never on the
thread that feeds audio, so keep it short: hand the result to your IVR/agent desktop.
"""

from __future__ import annotations

import argparse
import queue
import time

from voiceauth import VoiceAuth
from voiceauth.audio.channel import telephone_channel
from voiceauth.audio.decode import load_audio
from voiceauth.audio.g711 import mulaw_encode
from voiceauth.live import CallResult, CallStatus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--customer", required=True)
    parser.add_argument("--file", required=True)
    args = parser.parse_args()

    desktop: queue.Queue[CallResult] = queue.Queue()  # stands in for the agent desktop

    codes = mulaw_encode(telephone_channel(load_audio(args.file)).samples)
    with VoiceAuth(args.store) as va:
        with va.start_call(args.customer, on_decision=desktop.put) as call:
            for i in range(0, len(codes) - 160 + 1, 160):
                if i == 8000 * 5:
                    call.pause()  # e.g. the caller keys in a card number: audio is dropped unseen
                if i == 8000 * 7:
                    call.resume()
                call.feed(codes[i : i + 160].tobytes())
                time.sleep(0.002)  # 20 ms frames at 10x real time
        call.result(wait=30)
        while not desktop.empty():
            result = desktop.get()
            if result.status is CallStatus.AUTHENTICATED:
                print(f"skip the security questions (confidence {result.confidence:.3f}, {result.speech_s} s)")
            elif result.status is CallStatus.NOT_AUTHENTICATED:
                why = ", ".join(f.value for f in result.flags) or "voice does not match"
                print(f"ask the security questions / step up ({why})")
            else:
                print(f"{result.status.value}: fall back to the security questions")


if __name__ == "__main__":
    main()
