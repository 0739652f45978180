"""Reproducibly train the shipped demo models from the synthetic generator.

    python -m inference.training.make_default_models [--out models] [--quick]

Writes ``models/chest-cxr-classifier`` and ``models/chest-cxr-anomaly``. Seeds are fixed;
validation data (threshold calibration) uses different seeds from training, and
``bench/models.py`` evaluates on yet another seed.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from inference import calibration
from inference.models import CamClassifier
from inference.synthetic import LESIONS, make_anomaly_split, make_dataset
from inference.training.loops import classifier_outputs, seed_everything, train_autoencoder, train_classifier
from inference.training.package import (
    ABNORMAL_CODE,
    SYNTHETIC_LABEL_CODES,
    calibrate_anomaly,
    calibrate_classifier,
    write_model_folder,
)

log = logging.getLogger(__name__)

# pool "avg": global average pooling, the specified architecture ("lse" is an option, not shipped)
CLASSIFIER = {"name": "chest-cxr-classifier", "version": "0.2.0", "n_train": 2000, "n_val": 240, "epochs": 12, "lr": 1e-3, "pool": "avg", "lse_r": 10.0, "seed": 1001, "val_seed": 2001, "p_nodule": 0.35, "p_effusion": 0.3, "sensitivity": 0.9}
ANOMALY = {"name": "chest-cxr-anomaly", "version": "0.1.0", "n_train": 480, "n_val_normal": 120, "n_val_abnormal": 120, "epochs": 8, "seed": 1002, "val_seed": 2002, "sensitivity": 0.9}
SYNTH = "synthetic chest-radiograph-like phantoms (inference.synthetic, 256x256, seed {seed}); no patient data"


def make_classifier(out: Path, cfg: dict = CLASSIFIER, progress: bool = True) -> None:
    train = make_dataset(cfg["n_train"], cfg["seed"], p_nodule=cfg["p_nodule"], p_effusion=cfg["p_effusion"])
    val = make_dataset(cfg["n_val"], cfg["val_seed"], p_nodule=cfg["p_nodule"], p_effusion=cfg["p_effusion"])

    def monitor(net, epoch: int) -> None:  # logging only: no early stopping or model selection
        probs, _ = classifier_outputs(net, val.images)
        aucs = {n: calibration.auc(val.labels[:, j], probs[:, j]) for j, n in enumerate(LESIONS)}
        log.info("classifier epoch %d validation AUC %s", epoch, ", ".join(f"{n} {a if a is None else round(a, 3)}" for n, a in aucs.items()))

    t0 = time.time()
    seed_everything(cfg["seed"])  # the initial weights are part of the seeded recipe
    net = CamClassifier(num_classes=len(LESIONS), pool=cfg["pool"], lse_r=cfg["lse_r"])
    net = train_classifier(train.images, train.labels, epochs=cfg["epochs"], seed=cfg["seed"], lr=cfg["lr"], net=net, progress=progress, on_epoch=monitor)
    seconds = time.time() - t0
    thr, metrics, curves = calibrate_classifier(net, val.images, val.labels, LESIONS, cfg["sensitivity"], f"synthetic validation seed {cfg['val_seed']}")
    labels = [{"name": n, **SYNTHETIC_LABEL_CODES[n], "threshold": thr[n]} for n in LESIONS]
    write_model_folder(
        out / cfg["name"], net, task="classification", name=cfg["name"], version=cfg["version"], labels=labels,
        training={"data": SYNTH.format(seed=cfg["seed"]) + f"; prevalence nodule {cfg['p_nodule']}, effusion {cfg['p_effusion']}",
                  "n_train": cfg["n_train"], "n_validation": cfg["n_val"], "seed": cfg["seed"], "epochs": cfg["epochs"]},
        metrics=metrics, roc_curves=curves,
        description="Demo multi-label chest radiograph classifier (small ResNet, GAP + linear head, sigmoid) "
        "with class activation maps computed in the graph. Thresholds at validation sensitivity "
        f"{cfg['sensitivity']}.",
        extra_metrics={"train_seconds": round(seconds, 1), "operating_point": f"sensitivity >= {cfg['sensitivity']} on validation"},
    )
    log.info("classifier written to %s (%.0f s)", out / cfg["name"], seconds)


def make_anomaly(out: Path, cfg: dict = ANOMALY, progress: bool = True, weights: Path | None = None) -> None:
    val = make_anomaly_split(cfg["n_val_normal"], cfg["n_val_abnormal"], cfg["val_seed"])
    t0 = time.time()
    if weights is not None:  # recalibrate/repackage weights trained earlier with this config
        import torch

        from inference.models import ConvAutoencoder

        net = ConvAutoencoder()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.eval()
    else:
        train = make_dataset(cfg["n_train"], cfg["seed"])
        net = train_autoencoder(train.images, epochs=cfg["epochs"], seed=cfg["seed"], progress=progress)
    seconds = time.time() - t0
    ab = val.abnormal.astype(bool)
    thr, scale, metrics, curve = calibrate_anomaly(net, val.images[~ab], val.images[ab], cfg["sensitivity"], f"synthetic validation seed {cfg['val_seed']}")
    write_model_folder(
        out / cfg["name"], net, task="anomaly", name=cfg["name"], version=cfg["version"],
        labels=[{"name": "abnormal", "display": "Abnormal (anomaly detection)", "code": ABNORMAL_CODE, "threshold": thr}],
        training={"data": SYNTH.format(seed=cfg["seed"]) + "; normal images only", "n_train": cfg["n_train"],
                  "n_validation": cfg["n_val_normal"] + cfg["n_val_abnormal"], "seed": cfg["seed"], "epochs": cfg["epochs"]},
        metrics={"abnormal": metrics}, roc_curves={"abnormal": curve} if curve else {},
        description="Demo convolutional autoencoder (16-32-64-128-256, 4x4x256 code) trained on normal "
        "synthetic phantoms; anomaly map = |G * (x - x_hat)| (Gaussian, sigma 4 px), score = its max-norm, threshold on "
        f"the validation ROC at sensitivity {cfg['sensitivity']}.",
        heatmap_scale=scale,
        extra_metrics={"train_seconds": None if weights else round(seconds, 1), "operating_point": f"sensitivity >= {cfg['sensitivity']} on validation"},
    )
    log.info("anomaly model written to %s (%.0f s)", out / cfg["name"], seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    ap.add_argument("--only", choices=["classifier", "anomaly"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, not the shipped models)")
    ap.add_argument("--anomaly-weights", type=Path, help="skip autoencoder training: recalibrate these weights")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cls_cfg, ae_cfg = dict(CLASSIFIER), dict(ANOMALY)
    if args.quick:
        cls_cfg.update(n_train=64, n_val=48, epochs=1)
        ae_cfg.update(n_train=32, n_val_normal=16, n_val_abnormal=16, epochs=1)
    np.seterr(all="ignore")
    if args.only in (None, "classifier"):
        make_classifier(args.out, cls_cfg)
    if args.only in (None, "anomaly"):
        make_anomaly(args.out, ae_cfg, weights=args.anomaly_weights)


if __name__ == "__main__":
    main()
