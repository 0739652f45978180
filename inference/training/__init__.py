"""Training loops on numpy arrays, threshold calibration and model-folder packaging."""

from inference.training.loops import (
    anomaly_outputs,
    classifier_outputs,
    seed_everything,
    train_autoencoder,
    train_classifier,
)
from inference.training.package import (
    ABNORMAL_CODE,
    DEMO_INTENDED_USE,
    SYNTHETIC_LABEL_CODES,
    calibrate_anomaly,
    calibrate_classifier,
    write_model_folder,
)

__all__ = [
    "ABNORMAL_CODE",
    "DEMO_INTENDED_USE",
    "SYNTHETIC_LABEL_CODES",
    "anomaly_outputs",
    "calibrate_anomaly",
    "calibrate_classifier",
    "classifier_outputs",
    "seed_everything",
    "train_autoencoder",
    "train_classifier",
    "write_model_folder",
]
