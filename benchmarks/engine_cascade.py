"""Could a cascade give fusion's accuracy at CAM++'s speed? Read from the engine benchmark's trial scores.

    python benchmarks/engine.py --no-speed --scores-out /tmp/engine-scores.npz   # ~33 min
    python benchmarks/engine_cascade.py /tmp/engine-scores.npz    # writes results/engine_cascade.json

The cascade embeds every segment with CAM++ and runs ECAPA only when CAM++'s cosine falls in an
uncertain band ``[low, high]``; there the score is the fusion (mean of the two cosines), elsewhere
CAM++'s cosine alone. For each band, per condition: its EER next to the baseline's, CAM++'s and
fusion's, and the share of genuine and impostor trials that needed ECAPA. The speed it would
have follows from the engine benchmark's measured rates on the 2 cores (best layouts, in
``results/engine.json``): one CAM++ embedding per segment, plus ECAPA for the share ``p`` that
needed it, ``1 / (1 / campplus + p / ecapa)`` segments a second. A bank's calls are mostly genuine
callers, so the speed is given at the worst genuine share over the conditions.

The bands are a grid, and the EERs are on the same trials the bands are judged on: the best
band is an optimistic estimate, not a tuned setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from voiceauth.scoring.statistics import compute_metrics

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
BANDS = [(low, high) for low in (0.45, 0.5, 0.55) for high in (0.75, 0.8, 0.85)]
"""CAM++ cosine bands in which ECAPA is consulted (CAM++'s raw cosines: impostors mostly 0.2-0.6)."""


def conditions(scores: np.lib.npyio.NpzFile) -> list[str]:
    return [key[: -len("/truth")] for key in scores.files if key.endswith("/truth")]


def eer(values: np.ndarray, truth: np.ndarray) -> float:
    return round(100 * compute_metrics(values, truth).eer, 2)


def cascade(scores: np.lib.npyio.NpzFile, band: tuple[float, float]) -> dict[str, dict[str, float]]:
    low, high = band
    out = {}
    for cond in conditions(scores):
        truth = scores[f"{cond}/truth"].astype(bool)
        camp, ecapa = scores[f"{cond}/campplus"], scores[f"{cond}/ecapa"]
        asked = (camp > low) & (camp < high)
        fused = np.where(asked, (camp + ecapa) / 2.0, camp)
        out[cond] = {"eer": eer(fused, truth), "baseline_eer": eer(scores[f"{cond}/baseline"], truth),
                     "campplus_eer": eer(camp, truth), "fusion_eer": eer((camp + ecapa) / 2.0, truth),
                     "genuine_share_ecapa": round(float(asked[truth].mean()), 3),
                     "impostor_share_ecapa": round(float(asked[~truth].mean()), 3)}
    return out


def summary(per_condition: dict[str, dict[str, float]], rates: dict[str, float]) -> dict[str, object]:
    worse = [c for c, r in per_condition.items() if r["eer"] > r["baseline_eer"]]
    share = max(r["genuine_share_ecapa"] for r in per_condition.values())
    per_s = 1.0 / (1.0 / rates["campplus_onnx"] + share / rates["ecapa_onnx"])
    return {"worse_than_baseline": worse, "worst_genuine_share_ecapa": share,
            "segments_per_s_at_that_share": round(per_s, 1),
            "vs_speechbrain": round(per_s / rates["speechbrain"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", type=Path, help="the .npz written by engine.py --scores-out")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_cascade.json")
    args = parser.parse_args(argv)
    engine = json.loads((RESULTS / "engine.json").read_text())
    rates = {name: float(v["embeddings_per_s"]) for name, v in engine["speed_3s_segments"]["2_cores_best"].items()}
    scores = np.load(args.scores)
    result: dict[str, object] = {"rates_2_cores_best": rates, "bands": {}}
    for band in BANDS:
        per_condition = cascade(scores, band)
        result["bands"][f"{band[0]}-{band[1]}"] = {"summary": summary(per_condition, rates),  # type: ignore[index]
                                                   "conditions": per_condition}
        s = summary(per_condition, rates)
        print(f"band {band}: worse than baseline on {s['worse_than_baseline'] or 'none'}; ECAPA for up to "
              f"{100 * s['worst_genuine_share_ecapa']:.0f} % of genuine trials -> {s['vs_speechbrain']}x SpeechBrain")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
