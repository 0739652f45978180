"""Default-model quality on held-out synthetic data (seed differs from training and validation).

    python bench/models.py [--n 400] [--seed 31337]

Reports, per label, ROC AUC and sensitivity/specificity at the manifest threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference import default_models_dir, load_model  # noqa: E402
from inference.calibration import label_metrics  # noqa: E402
from inference.synthetic import make_anomaly_split, make_dataset  # noqa: E402


def scores(model, images: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for i in range(0, len(images), batch):
        for r in model.predict(images[i : i + batch]):
            for k, v in r.scores.items():
                out.setdefault(k, []).append(v)
    return {k: np.array(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=400, help="images per test set")
    ap.add_argument("--seed", type=int, default=31337)
    args = ap.parse_args()
    rows = []
    cls = load_model(default_models_dir() / "chest-cxr-classifier")
    data = make_dataset(args.n, args.seed, p_nodule=0.35, p_effusion=0.3)
    s = scores(cls, data.images)
    for j, lab in enumerate(cls.manifest.labels):
        rows.append((cls.name, lab.name, label_metrics(data.labels[:, j], s[lab.name], lab.threshold)))
    ae = load_model(default_models_dir() / "chest-cxr-anomaly")
    split = make_anomaly_split(args.n // 2, args.n // 2, args.seed + 1)
    s = scores(ae, split.images)
    lab = ae.manifest.labels[0]
    rows.append((ae.name, lab.name, label_metrics(split.abnormal, s[lab.name], lab.threshold)))
    print(f"held-out synthetic test sets: seed {args.seed} (classifier, {args.n} images), {args.seed + 1} (anomaly, {args.n // 2} normal + {args.n // 2} abnormal)")
    print(f"{'model':22} {'label':10} {'AUC':>6} {'sens':>6} {'spec':>6} {'threshold':>10} {'pos':>5} {'neg':>5}")
    for model, label, m in rows:
        print(f"{model:22} {label:10} {m['auc']:6.3f} {m['sensitivity']:6.3f} {m['specificity']:6.3f} {m['threshold']:10.4f} {m['n_positive']:5d} {m['n_negative']:5d}")


if __name__ == "__main__":
    main()
