"""Honest evaluation of the spoof check: v2 head vs AASIST alone -> benchmarks/results/spoof.json.

Usage (after ``benchmarks/train_spoof_head.py synth`` and ``features``, see there)::

    .venv/bin/python benchmarks/spoof.py            # evaluation + replay simulation
    .venv/bin/python benchmarks/spoof.py --no-replay

Every number comes from a head that never saw what it is tested on:

* **leave one generator out**: for each attack generator, heads are trained without it and
  tested on all of its attempts (every channel);
* **bona fide held out by group**: :data:`FOLDS` folds over LibriSpeech speakers and meetings
  (each meeting is its own group), so a genuine attempt is scored by a head trained without its
  speaker (LibriSpeech) or its whole meeting;
* the same four channels for every class (``train_spoof_head.CHANNELS``).

The shipped threshold (:data:`voiceauth.fraud.spoof.DEFAULT_THRESHOLD`) is the highest at which
no corpus x channel cell of these held-out bona fide scores is flagged more than
:data:`TARGET_CELL_FA` (half the issue's 2 % bound, a margin for new channels); it is chosen on
these scores and so the false-alarm column is in-sample for the threshold (not for the head).
Each attempt is about one window of speech (~4 s); a longer recording is scored on every
window and the lowest decides, so its false-alarm rate is higher (see ``make demo``).

Replay simulation (``--replay``): bona fide and neural-TTS attempts played through a loudspeaker
(band-pass 120-7500 Hz, soft clipping), a room (synthetic exponentially decaying impulse
response, RT60 0.2-0.7 s, direct-to-reverberant 0-10 dB) and a microphone (high-pass, noise at
25-40 dB SNR), then the G.711 channel. A replayed genuine recording is an attack the head was not
trained for: the rate at which it is flagged is reported, not claimed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import train_spoof_head as recipe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "spoof.json"
FOLDS = 5
TARGET_CELL_FA = 0.01
AASIST_THRESHOLD = -10.0
REPLAY = recipe.CACHE / "replay.json"


def item_table(data: dict[str, np.ndarray], scores: np.ndarray) -> dict[str, np.ndarray]:
    """One row per (item, channel): its lowest window score and its labels."""
    keys = np.char.add(np.char.add(data["item"], "|"), data["channel"])
    order = np.argsort(keys, kind="stable")
    keys_sorted = keys[order]
    starts = np.r_[0, np.flatnonzero(keys_sorted[1:] != keys_sorted[:-1]) + 1]
    lowest = np.minimum.reduceat(scores[order], starts)
    first = order[starts]
    return {"score": lowest, "label": data["label"][first], "corpus": data["corpus"][first],
            "group": data["group"][first], "channel": data["channel"][first], "item": data["item"][first]}


def folds_of(groups: np.ndarray, k: int = FOLDS) -> dict[str, int]:
    """Groups -> fold, seeded: meetings spread over folds, LibriSpeech speakers shuffled into them."""
    rng = np.random.default_rng(recipe.SEED)
    out: dict[str, int] = {}
    for prefix in ("mt-", "ls-"):
        names = sorted({g for g in groups if g.startswith(prefix)})
        rng.shuffle(names)
        for i, name in enumerate(names):
            out[name] = i % k
    return out


def held_out_scores(data: dict[str, np.ndarray], features: np.ndarray, *, hold_generator: str | None,
                    fold: int | None, fold_of: dict[str, int], head_options: dict) -> tuple[np.ndarray, np.ndarray]:
    """Fit without ``hold_generator``'s attacks and without bona fide ``fold``; (test mask, window scores)."""
    from voiceauth.fraud.head import fit_head

    bona = data["label"] == "bona_fide"
    bona_fold = np.array([fold_of.get(g, -1) for g in data["group"]])
    train = np.ones(len(bona), dtype=bool)
    test = np.zeros(len(bona), dtype=bool)
    if hold_generator is not None:
        train &= data["corpus"] != hold_generator
        test |= data["corpus"] == hold_generator
    if fold is not None:
        train &= ~(bona & (bona_fold == fold))
        test |= bona & (bona_fold == fold)
    weights = recipe.class_weights({k: v[train] for k, v in data.items()})
    head = fit_head(features[train], bona[train], sample_weight=weights, seed=recipe.SEED, **head_options)
    return test, head.logodds(features)


def cell_rates(table: dict[str, np.ndarray], threshold: float) -> dict:
    from voiceauth.scoring.statistics import clopper_pearson

    out: dict = {}
    for corpus in sorted(set(table["corpus"])):
        for channel in recipe.CHANNELS:
            cell = (table["corpus"] == corpus) & (table["channel"] == channel)
            if not cell.any():
                continue
            flagged = int((table["score"][cell] < threshold).sum())
            ci = clopper_pearson(flagged, int(cell.sum()))
            out.setdefault(corpus, {})[channel] = {"attempts": int(cell.sum()), "flagged": flagged,
                                                   "rate": round(flagged / cell.sum(), 4),
                                                   "ci95": [round(ci.low, 4), round(ci.high, 4)]}
    return out


def eer(bona: np.ndarray, spoof: np.ndarray) -> float:
    thresholds = np.unique(np.concatenate([bona, spoof]))
    frr = np.array([np.mean(bona < t) for t in thresholds])
    far = np.array([np.mean(spoof >= t) for t in thresholds])
    i = int(np.argmin(np.abs(frr - far)))
    return round(float((frr[i] + far[i]) / 2), 4)


def pick_threshold(table: dict[str, np.ndarray], target: float = TARGET_CELL_FA) -> float:
    """The highest threshold at which no bona fide corpus x channel cell is flagged more than ``target``."""
    bona = table["label"] == "bona_fide"
    limits = []
    for corpus in set(table["corpus"][bona]):
        for channel in recipe.CHANNELS:
            cell = np.sort(table["score"][bona & (table["corpus"] == corpus) & (table["channel"] == channel)])
            if len(cell):
                allowed = int(np.floor(target * len(cell)))  # this many may fall below
                limits.append(cell[allowed])
    return float(np.floor(min(limits) * 100) / 100)


def evaluate(head_options: dict) -> dict:
    from voiceauth.fraud.head import head_input

    data = recipe.load_features()
    features = head_input(data["embedding"], data["aasist"], data["spectral"])
    fold_of = folds_of(data["group"])
    generators = [g for g in recipe.GENERATORS if (data["corpus"] == g).any()]
    started = time.time()

    # bona fide: grouped cross-validation, all attacks in training (the shipped recipe)
    bona_scores = np.full(len(features), np.nan)
    for fold in range(FOLDS):
        test, scores = held_out_scores(data, features, hold_generator=None, fold=fold, fold_of=fold_of,
                                       head_options=head_options)
        bona_scores[test] = scores[test]
    # attacks: leave one generator out (bona fide all in training)
    attack_scores = np.full(len(features), np.nan)
    for gen in generators:
        test, scores = held_out_scores(data, features, hold_generator=gen, fold=None, fold_of=fold_of,
                                       head_options=head_options)
        attack_scores[test] = scores[test]
    # seen generators, unseen attempts: attacks and bona fide both in folds (the shipped head's situation)
    seen_scores = np.full(len(features), np.nan)
    bona = data["label"] == "bona_fide"
    rng = np.random.default_rng(recipe.SEED + 7)
    items = np.unique(data["item"][~bona])
    item_fold = dict(zip(items, rng.integers(0, FOLDS, len(items)), strict=True))
    fold = np.where(bona, [fold_of.get(g, -1) for g in data["group"]],
                    [item_fold.get(i, -1) for i in data["item"]])
    for f in range(FOLDS):
        from voiceauth.fraud.head import fit_head

        train, test = fold != f, fold == f
        head = fit_head(features[train], bona[train], sample_weight=recipe.class_weights(
            {k: v[train] for k, v in data.items()}), seed=recipe.SEED, **head_options)
        seen_scores[test] = head.logodds(features[test])
    window_scores = np.where(bona, bona_scores, attack_scores)
    v2 = item_table(data, window_scores)
    threshold = pick_threshold(v2)
    baseline = item_table(data, data["aasist"])

    report: dict = {"threshold": threshold, "folds": FOLDS, "target_cell_false_alarm": TARGET_CELL_FA,
                    "head": head_options, "fit_seconds": round(time.time() - started, 1)}
    for name, table, thr in (("v2", v2, threshold), ("aasist", baseline, AASIST_THRESHOLD)):
        b = table["label"] == "bona_fide"
        entry: dict = {"threshold": thr, "bona_fide_false_alarms": cell_rates({k: v[b] for k, v in table.items()},
                                                                             thr)}
        attacks = cell_rates({k: v[~b] for k, v in table.items()}, thr)
        entry["attacks_flagged"] = attacks
        entry["eer"] = {}
        for gen in generators:
            entry["eer"][gen] = {}
            for channel in recipe.CHANNELS:
                bs = table["score"][b & (table["channel"] == channel)]
                ss = table["score"][(table["corpus"] == gen) & (table["channel"] == channel)]
                if len(bs) and len(ss):
                    entry["eer"][gen][channel] = eer(bs, ss)
        entry["flagged_overall"] = {gen: round(float(np.mean(table["score"][table["corpus"] == gen] < thr)), 4)
                                    for gen in generators}
        entry["bona_fide_false_alarm_overall"] = round(float(np.mean(table["score"][b] < thr)), 4)
        report[name] = entry
    seen = item_table(data, seen_scores)
    report["v2_seen_generators"] = {
        "note": "attacks held out by attempt, not by generator (the shipped head has seen all four generators)",
        "threshold": threshold,
        "attacks_flagged": cell_rates({k: v[seen["label"] == "spoof"] for k, v in seen.items()}, threshold),
        "bona_fide_false_alarms": cell_rates({k: v[seen["label"] == "bona_fide"] for k, v in seen.items()},
                                             threshold),
        "flagged_overall": {gen: round(float(np.mean(seen["score"][seen["corpus"] == gen] < threshold)), 4)
                            for gen in generators},
    }
    # a calibrated channel (voiceauth.fraud.reference): its own threshold at 2 % of its bona fide scores
    # (each set of heads against the bona fide scores of its own cross-validation)
    from voiceauth.fraud.spoof import threshold_for_false_alarms

    per_channel: dict = {}
    for channel in recipe.CHANNELS:
        entry = per_channel[channel] = {}
        for name, table in (("held_out_generator", v2), ("seen_generators", seen)):
            cell = (table["label"] == "bona_fide") & (table["channel"] == channel)
            limit = float(threshold_for_false_alarms(table["score"][cell], 0.02))
            entry[name] = {"threshold": round(limit, 3),
                           "bona_fide_flagged": round(float(np.mean(table["score"][cell] < limit)), 4),
                           "flagged": {g: round(float(np.mean(table["score"][(table["corpus"] == g) & (
                               table["channel"] == channel)] < limit)), 4) for g in generators}}
    report["v2_channel_reference_2pct"] = per_channel
    report["counts"] = {c: int(((v2["corpus"] == c)).sum() // len(recipe.CHANNELS)) for c in sorted(set(v2["corpus"]))}
    report["v2_scores"] = {"bona_fide_p1": round(float(np.quantile(v2["score"][v2["label"] == "bona_fide"], 0.01)), 3),
                           "bona_fide_median": round(float(np.median(v2["score"][v2["label"] == "bona_fide"])), 3)}
    return report


# -- replay simulation ------------------------------------------------------------------------------------


def replay(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Loudspeaker -> room -> microphone, at 16 kHz."""
    from scipy.signal import butter, fftconvolve, sosfilt

    from voiceauth.audio.decode import resample

    x = resample(np.asarray(wave, dtype=np.float32), rate, 16000).astype(np.float64)
    x = x / max(1e-6, float(np.abs(x).max())) * 0.8
    speaker = butter(2, (float(rng.uniform(100, 200)), float(rng.uniform(6000, 7500))), btype="bandpass", fs=16000,
                     output="sos")
    x = np.tanh(1.5 * sosfilt(speaker, x)) / np.tanh(1.5)  # a small loudspeaker's soft clipping
    rt60 = float(rng.uniform(0.2, 0.7))
    length = int(rt60 * 16000)
    tail = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / length)
    direct_db = float(rng.uniform(0, 10))
    rir = np.concatenate([[1.0], np.zeros(int(rng.integers(16, 80)))])
    rir = np.concatenate([rir, tail / np.sqrt(np.sum(tail**2)) * 10 ** (-direct_db / 20)])
    x = fftconvolve(x, rir)[: len(x)]
    x = sosfilt(butter(2, 80, btype="highpass", fs=16000, output="sos"), x)
    power = float(np.mean(x**2))
    x = x + rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (float(rng.uniform(25, 40)) / 10))
    return (x / max(1e-6, float(np.abs(x).max())) * 0.7).astype(np.float32)


def replay_scores(per_class: int = 40) -> dict:
    """Window features of replayed bona fide and neural-TTS attempts (cached in :data:`REPLAY`)."""
    from voiceauth.audio.decode import Audio
    from voiceauth.errors import NoSpeechError
    from voiceauth.fraud.head import spectral_features
    from voiceauth.fraud.spoof import SpoofDetector, speech_windows
    from voiceauth.speech.activity import analyse

    cached = json.loads(REPLAY.read_text()) if REPLAY.exists() else {}
    rng = np.random.default_rng(recipe.SEED + 9)
    bona = [it for it in recipe.bona_fide_items()]
    attacks = [it for it in recipe.attack_items() if it["corpus"] in recipe.NEURAL]
    picks = [bona[i] for i in rng.choice(len(bona), min(per_class, len(bona)), replace=False)]
    picks += [attacks[i] for i in rng.choice(len(attacks), min(per_class, len(attacks)), replace=False)]
    detector = SpoofDetector(scorer="aasist")
    for item in picks:
        key = f"{item['path']}|{item['start_s']:.3f}"
        if key in cached:
            continue
        wave, rate = recipe._load(item)
        item_rng = np.random.default_rng(recipe.item_seed(item, "replay"))
        played = replay(wave, rate, item_rng)
        phoned = recipe.apply_channel(played, 16000, "g711", item_rng)
        try:
            speech = analyse(Audio(phoned, 16000)).speech
            windows = speech_windows(speech.samples, speech.sample_rate)
            readout, logodds = detector.window_features(windows)
        except NoSpeechError:
            continue
        cached[key] = {"label": item["label"], "corpus": item["corpus"], "embedding": readout.tolist(),
                       "aasist": logodds.tolist(), "spectral": spectral_features(windows).tolist()}
        REPLAY.write_text(json.dumps(cached))
    return cached


def evaluate_replay(threshold: float) -> dict:
    from voiceauth.fraud.head import head_input, load_head

    head = load_head()
    out: dict = {}
    for entry in replay_scores().values():
        rows = head_input(np.asarray(entry["embedding"]), np.asarray(entry["aasist"]), np.asarray(entry["spectral"]))
        v2 = float(np.min(head.logodds(rows)))
        kind = "replayed_bona_fide" if entry["label"] == "bona_fide" else "replayed_neural_tts"
        row = out.setdefault(kind, {"attempts": 0, "v2_flagged": 0, "aasist_flagged": 0})
        row["attempts"] += 1
        row["v2_flagged"] += int(v2 < threshold)
        row["aasist_flagged"] += int(min(entry["aasist"]) < AASIST_THRESHOLD)
    for row in out.values():
        row["v2_rate"] = round(row["v2_flagged"] / row["attempts"], 4)
        row["aasist_rate"] = round(row["aasist_flagged"] / row["attempts"], 4)
    out["note"] = ("shipped head (trained on all attacks, none replayed); a replayed genuine recording is a "
                   "physical-access attack it was not trained for")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-replay", action="store_true")
    parser.add_argument("--hidden", type=int, default=recipe.HEAD_OPTIONS["hidden"])
    parser.add_argument("--weight-decay", type=float, default=recipe.HEAD_OPTIONS["weight_decay"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = evaluate(dict(recipe.HEAD_OPTIONS, hidden=args.hidden, weight_decay=args.weight_decay))
    if not args.no_replay:
        from voiceauth.fraud.spoof import DEFAULT_THRESHOLD

        report["replay"] = evaluate_replay(DEFAULT_THRESHOLD)
        report["replay"]["threshold"] = DEFAULT_THRESHOLD
    from voiceauth.fraud.head import HEAD_SHA256

    report["shipped_head_sha256"] = HEAD_SHA256
    report["recipe"] = {"channels": list(recipe.CHANNELS), "generators": list(recipe.GENERATORS),
                        "attempt_s": recipe.ATTEMPT_S, "seed": recipe.SEED}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    summary = {k: report[k] for k in ("threshold", "counts")}
    summary["v2_seen_generators"] = report["v2_seen_generators"]["flagged_overall"]
    for name in ("v2", "aasist"):
        summary[name] = {"flagged": report[name]["flagged_overall"],
                         "bona_fide_fa_worst_cell": max(c["rate"] for cells in report[name]["bona_fide_false_alarms"]
                                                        .values() for c in cells.values())}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
