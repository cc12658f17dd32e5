"""Issue acceptance on real speech: default settings on the shared LibriSpeech samples.

Each test-other speaker is enrolled on 3 files and verified on the other 7; every
train-clean file is an impostor attempt against every enrolled speaker.
Required: >= 97 % of genuine attempts accepted, <= 1 % of impostor attempts accepted.
Genuine attempts run with the spoof check on (its false alarms count against acceptance);
impostor probes are made without it, since it can only hold an attempt back, never accept one.
"""

from __future__ import annotations

from voiceauth import Decision, NoSpeechError


def test_default_settings_on_librispeech(make_client, speakers, librispeech, consent, capsys) -> None:  # noqa: ANN001
    va = make_client()
    for spk, files in speakers.items():
        assert va.enroll(spk, files[:3], consent=consent).complete
    genuine = [va.verify(spk, f).decision for spk, files in speakers.items() for f in files[3:]]
    impostor: list[Decision] = []
    no_spoof_check = make_client(spoof=False)
    for path in sorted((librispeech / "train-clean").glob("*.flac")):
        try:
            probe = no_spoof_check.probe(path)
        except NoSpeechError:
            continue
        impostor += [va.verify(spk, probe).decision for spk in speakers]
    accepted = sum(d is Decision.ACCEPT for d in genuine) / len(genuine)
    false_accepts = sum(d is Decision.ACCEPT for d in impostor) / len(impostor)
    with capsys.disabled():
        print(f"\nLibriSpeech acceptance: genuine accepted {accepted:.2%} of {len(genuine)}; "
              f"impostors accepted {false_accepts:.3%} of {len(impostor)}")
    assert len(genuine) == 70 and len(impostor) >= 2400
    assert accepted >= 0.97
    assert false_accepts <= 0.01
