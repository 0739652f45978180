"""Seeded training loops (CPU-friendly) for the classifier and the autoencoder."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from inference.models import AnomalyExport, CamClassifier, ClassifierExport, ConvAutoencoder

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _batches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 8) -> torch.Tensor:
    """Random shift, horizontal flip, gain/gamma jitter and noise (radiograph-plausible)."""
    b = x.shape[0]
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    gain = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    gamma = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    x = (x.clamp_min(0) * gain).clamp(0, 1) ** gamma
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def _run_epochs(name: str, metric: str, batch_loss: Callable[[torch.Tensor], torch.Tensor],
                opt: torch.optim.Optimizer, sched: Any, epochs: int, n: int, batch_size: int,
                gen: torch.Generator, progress: bool,
                on_epoch: Callable[[int], None] | None = None) -> None:
    """The shared optimisation loop: seeded batches, one step each, a progress bar, a log line.

    ``on_epoch(epoch)`` (1-based), if given, runs after each epoch (monitoring only: it must not
    change the network's training state or draw from the training generator)."""
    bar = tqdm(total=epochs * ((n + batch_size - 1) // batch_size), desc=name,
               disable=not progress, unit="batch")
    for epoch in range(epochs):
        total = 0.0
        for idx in _batches(n, batch_size, gen):
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, **{metric: f"{float(loss.detach()):.5f}"})
        log.info("%s epoch %d/%d %s %.6f", name, epoch + 1, epochs, metric, total / n)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    bar.close()


def train_autoencoder(
    images: np.ndarray,
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    net: ConvAutoencoder | None = None,
    progress: bool = True,
) -> ConvAutoencoder:
    """Train the autoencoder on normal images ``[N,1,H,W]`` in [0,1] (MSE reconstruction)."""
    gen = seed_everything(seed)
    net = net or ConvAutoencoder(in_channels=images.shape[1])
    net.train()
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(x_all) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x = x_all[idx]
        return F.mse_loss(net(x), x)

    _run_epochs("autoencoder", "mse", batch_loss, opt, sched, epochs, len(x_all), batch_size, gen,
                progress)
    return net.eval()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 6,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 3e-3,
    net: CamClassifier | None = None,
    augmentation: bool = True,
    progress: bool = True,
    on_epoch: Callable[[CamClassifier, int], None] | None = None,
) -> CamClassifier:
    """Train (or fine-tune ``net``) on ``images [N,C,H,W]`` and multi-hot ``labels [N,L]``.

    Class imbalance: BCE with ``pos_weight = n_negative / n_positive`` per label.
    ``on_epoch(net, epoch)`` runs after each epoch with the network in eval mode (monitoring,
    e.g. validation AUC; it does not select or stop anything), then training resumes.
    """
    gen = seed_everything(seed)
    n_labels = labels.shape[1]
    net = net or CamClassifier(num_classes=n_labels, in_channels=images.shape[1])
    if net.num_classes != n_labels:
        raise ValueError(f"network has {net.num_classes} outputs, labels have {n_labels} columns")
    net.train()
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y_all = torch.from_numpy(labels.astype(np.float32))
    pos = y_all.sum(0)
    pos_weight = ((len(y_all) - pos) / pos.clamp_min(1)).clamp(0.2, 50)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x_all) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.2)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x, y = x_all[idx], y_all[idx]
        if augmentation:
            x = augment(x, gen)
        return loss_fn(net(x), y)

    def monitor(epoch: int) -> None:
        if on_epoch is not None:
            net.eval()
            on_epoch(net, epoch)
            net.train()

    _run_epochs("classifier", "loss", batch_loss, opt, sched, epochs, len(x_all), batch_size, gen,
                progress, monitor if on_epoch is not None else None)
    return net.eval()


@torch.inference_mode()
def classifier_outputs(net: CamClassifier, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N,L], cams [N,L,H,W]) through the export wrapper."""
    wrapper = ClassifierExport(net).eval()
    probs, cams = [], []
    for i in range(0, len(images), batch_size):
        p, c = wrapper(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        probs.append(p.numpy())
        cams.append(c.numpy())
    return np.concatenate(probs), np.concatenate(cams)


@torch.inference_mode()
def anomaly_outputs(net: ConvAutoencoder, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N], anomaly maps [N,H,W]) through the export wrapper."""
    wrapper = AnomalyExport(net).eval()
    scores, maps = [], []
    for i in range(0, len(images), batch_size):
        _, m, s = wrapper(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        scores.append(s.numpy())
        maps.append(m[:, 0].numpy())
    return np.concatenate(scores), np.concatenate(maps)
