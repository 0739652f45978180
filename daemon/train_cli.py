"""``pacsai train``: train models on site DICOM data (anomaly autoencoder, classifier).

Glue only: DICOM folders -> arrays through :mod:`dicom_io.pixels`, training and packaging
through :mod:`inference.training`. Output folders are site drop-in model folders
(model.onnx + weights.pt + manifest.json + metrics.json + roc.png).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

app = typer.Typer(help="Train models on site DICOM data (reproducible: seeded).", no_args_is_help=True)
console = Console(stderr=True)
log = logging.getLogger(__name__)


def _dicom_files(folders: list[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise typer.BadParameter(f"{folder} is not a folder")
        files += sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files


def _load_images(files: list[Path], size: int, preprocessing: dict, what: str) -> tuple[np.ndarray, list[int], set[str]]:
    """Model-input frames of all readable images; (arrays [N,1,S,S], file index per frame, modalities)."""
    import pydicom
    from tqdm.auto import tqdm

    from dicom_io import pixels

    arrays, owners, modalities = [], [], set()
    for i, f in enumerate(tqdm(files, desc=f"reading {what}", unit="file")):
        try:
            ds = pydicom.dcmread(f)
            batch = pixels.load_model_input(ds, (size, size), 1, preprocessing)
        except Exception as e:  # noqa: BLE001 - skip non-image files, report them
            log.warning("skipping %s: %s", f, e)
            console.print(f"[yellow]skipping[/] {f}: {e}")
            continue
        if ds.get("Modality"):
            modalities.add(str(ds.Modality))
        arrays.append(batch)
        owners += [i] * len(batch)
    if not arrays:
        raise typer.BadParameter(f"no readable DICOM images for {what}")
    return np.concatenate(arrays).astype(np.float32), owners, modalities


@app.command()
def anomaly(
    normal: Annotated[list[Path], typer.Option("--normal", help="folder of normal DICOM images (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="output model folder")],
    validation_normal: Annotated[Path | None, typer.Option(help="normal validation folder")] = None,
    validation_abnormal: Annotated[Path | None, typer.Option(help="abnormal validation folder (ROC, threshold)")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    seed: int = 0,
    sensitivity: Annotated[float, typer.Option(min=0.01, max=1.0, help="target sensitivity for the threshold")] = 0.9,
    name: str = "site-anomaly",
    version: str = "1",
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    size: Annotated[int, typer.Option(help="input size (multiple of 64)")] = 256,
) -> None:
    """Train the anomaly autoencoder on normal images; calibrate the threshold on validation data."""
    from inference.manifest import Preprocessing
    from inference.training import ABNORMAL_CODE, calibrate_anomaly, train_autoencoder, write_model_folder

    if size % 64:
        raise typer.BadParameter("--size must be a multiple of 64")
    prep = Preprocessing().model_dump()
    x_norm, _, mods = _load_images(_dicom_files(list(normal)), size, prep, "normal")
    rng = np.random.default_rng(seed)
    if validation_normal is not None:
        v_norm, _, _ = _load_images(_dicom_files([validation_normal]), size, prep, "validation normal")
        x_train = x_norm
    else:  # hold out 20% of the normals for calibration
        order = rng.permutation(len(x_norm))
        k = max(1, len(x_norm) // 5) if len(x_norm) > 1 else 0
        v_norm, x_train = x_norm[order[:k]], x_norm[order[k:]]
    v_abn = None
    if validation_abnormal is not None:
        v_abn, _, _ = _load_images(_dicom_files([validation_abnormal]), size, prep, "validation abnormal")
    console.print(f"training autoencoder on {len(x_train)} normal images, {epochs} epochs, seed {seed}")
    net = train_autoencoder(x_train, epochs=epochs, seed=seed, batch_size=batch_size)
    thr, scale, metrics, curve = calibrate_anomaly(net, v_norm, v_abn, sensitivity, "site validation")
    manifest = write_model_folder(
        out, net, task="anomaly", name=name, version=version,
        labels=[{"name": "abnormal", "display": "Abnormal (anomaly detection)", "code": ABNORMAL_CODE, "threshold": thr}],
        training={"data": f"site normal images from {', '.join(map(str, normal))}", "n_train": len(x_train),
                  "n_validation": len(v_norm) + (0 if v_abn is None else len(v_abn)), "seed": seed, "epochs": epochs,
                  "image_size": size},
        metrics={"abnormal": metrics}, roc_curves={"abnormal": curve} if curve else {},
        modalities=sorted(mods) or ["CR", "DX"], preprocessing=prep, heatmap_scale=scale,
        intended_use="site-trained anomaly model; validate locally before any clinical use",
        description="Convolutional autoencoder trained on site normal images.",
    )
    _report(manifest, out)


def _parse_code(spec: str) -> tuple[str, dict]:
    try:
        label, rest = spec.split("=", 1)
        scheme, value, meaning = rest.split(":", 2)
    except ValueError:
        raise typer.BadParameter(f"--code {spec!r}: expected LABEL=SCHEME:VALUE:MEANING") from None
    return label.strip(), {"value": value.strip(), "scheme": scheme.strip(), "meaning": meaning.strip()}


def _read_labels(csv_path: Path) -> tuple[list[Path], list[str], np.ndarray]:
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise typer.BadParameter(f"{csv_path}: needs a header with a 'path' column and one 0/1 column per label")
        names = [c for c in reader.fieldnames if c != "path"]
        if not names:
            raise typer.BadParameter(f"{csv_path}: no label columns")
        paths, rows = [], []
        for n, row in enumerate(reader, start=2):
            p = Path(row["path"])
            paths.append(p if p.is_absolute() else csv_path.parent / p)
            try:
                rows.append([int(row[c]) for c in names])
            except (TypeError, ValueError):
                raise typer.BadParameter(f"{csv_path} line {n}: label values must be 0 or 1") from None
    return paths, names, np.array(rows, dtype=np.uint8)


@app.command()
def classifier(
    labels: Annotated[Path, typer.Option("--labels", exists=True, dir_okay=False, help="CSV: path,<label>,... (0/1)")],
    out: Annotated[Path, typer.Option("--out", help="output model folder")],
    base_model: Annotated[Path | None, typer.Option(help="model folder to fine-tune (default: shipped classifier)")] = None,
    code: Annotated[list[str] | None, typer.Option("--code", help="LABEL=SCHEME:VALUE:MEANING for labels the base lacks")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    seed: int = 0,
    sensitivity: Annotated[float, typer.Option(min=0.01, max=1.0)] = 0.9,
    validation_fraction: Annotated[float, typer.Option(min=0.05, max=0.9)] = 0.2,
    lr: float = 1e-3,
    from_scratch: bool = False,
    name: str = "site-classifier",
    version: str = "1",
) -> None:
    """Fine-tune the classifier (transfer learning from the shipped weights) on labelled DICOM files."""
    import torch

    from inference.cache import default_models_dir
    from inference.manifest import load_manifest
    from inference.models import CamClassifier, build_module
    from inference.training import calibrate_classifier, train_classifier, write_model_folder

    base_dir = base_model or default_models_dir() / "chest-cxr-classifier"
    base = load_manifest(base_dir)
    if base.task != "classification" or not (base.files.weights and base.files.architecture):
        raise typer.BadParameter(f"{base_dir}: base model must be a classification model with weights + architecture")
    paths, names, y_file = _read_labels(labels)
    codes = {lab.name: {"display": lab.display, "code": lab.code.model_dump()} for lab in base.labels}
    for spec in code or []:
        label, c = _parse_code(spec)
        codes[label] = {"display": label, "code": c}
    missing = [n for n in names if n not in codes]
    if missing:
        raise typer.BadParameter(f"no code for labels {missing}: pass --code LABEL=SCHEME:VALUE:MEANING (e.g. SCT or RADLEX)")
    size = base.input.height
    prep = base.preprocessing.model_dump()
    x, owners, mods = _load_images(paths, size, prep, "labelled images")
    y = y_file[owners]
    net = build_module(base.files.architecture.family, base.files.architecture.params)
    if not from_scratch:
        net.load_state_dict(torch.load(base_dir / base.files.weights, map_location="cpu", weights_only=True))
    assert isinstance(net, CamClassifier)
    if names != base.label_names:  # new label set: keep the backbone, new head (copy rows we know)
        head = torch.nn.Linear(net.head.in_features, len(names))
        with torch.no_grad():
            for j, n in enumerate(names):
                if n in base.label_names and not from_scratch:
                    k = base.label_names.index(n)
                    head.weight[j] = net.head.weight[k]
                    head.bias[j] = net.head.bias[k]
        net.head, net.num_classes = head, len(names)
    # split by file, seeded, so frames of one file stay on one side
    rng = np.random.default_rng(seed)
    file_ids = np.array(owners)
    uniq = rng.permutation(np.unique(file_ids))
    n_val = max(1, int(round(len(uniq) * validation_fraction)))
    val_files = set(uniq[:n_val].tolist())
    val = np.array([o in val_files for o in file_ids])
    console.print(f"fine-tuning on {int((~val).sum())} images, validating on {int(val.sum())}, labels {names}")
    net = train_classifier(x[~val], y[~val], epochs=epochs, seed=seed, lr=lr, net=net)
    thr, metrics, curves = calibrate_classifier(net, x[val], y[val], names, sensitivity, "site validation split")
    manifest = write_model_folder(
        out, net, task="classification", name=name, version=version,
        labels=[{"name": n, **codes[n], "threshold": thr[n]} for n in names],
        training={"data": f"site labelled images from {labels}; transfer learning from {base.name} {base.version}"
                  if not from_scratch else f"site labelled images from {labels}",
                  "n_train": int((~val).sum()), "n_validation": int(val.sum()), "seed": seed, "epochs": epochs,
                  "image_size": size},
        metrics=metrics, roc_curves=curves, modalities=sorted(mods) or list(base.modalities), preprocessing=prep,
        intended_use="site-trained classifier; validate locally before any clinical use",
        description=f"Fine-tuned from {base.name} {base.version}.",
    )
    _report(manifest, out)


def _report(manifest, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{manifest.name} {manifest.version} -> {out}")
    for col in ("label", "threshold", "AUC", "sensitivity", "specificity"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for lab in manifest.labels:
        m = manifest.metrics.get(lab.name)
        table.add_row(lab.name, fmt(lab.threshold), fmt(m and m.auc), fmt(m and m.sensitivity), fmt(m and m.specificity))
    Console().print(table)
