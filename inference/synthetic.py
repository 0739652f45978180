"""Synthetic chest-radiograph-like phantoms with optional planted lesions.

Display convention (as after VOI LUT and MONOCHROME1 inversion): air dark, bone bright.
Each phantom has a body outline, two lungs with a domed diaphragm, mediastinum, heart,
spine, clavicles and ribs, smooth intensity inhomogeneity, contrast/gamma variation and noise.
Lesions: ``nodule`` (a bright, slightly irregular blob inside a lung) and ``effusion``
(a bright fluid level with a meniscus at a lung base). Used to train and benchmark the demo
models: not clinical data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LESIONS = ("nodule", "effusion")


@dataclass
class SyntheticSet:
    """``images`` [N,1,H,W] float32 in [0,1]; ``labels`` [N,L] uint8; ``masks`` [N,L,H,W] bool."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    label_names: tuple[str, ...] = LESIONS

    @property
    def abnormal(self) -> np.ndarray:
        """1 where any lesion is present."""
        return self.labels.max(axis=1)

    def __len__(self) -> int:
        return len(self.images)


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance-like field (inside where d < 0)."""
    return 1.0 / (1.0 + np.exp(np.clip(d / edge, -40, 40)))


def _smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Low-frequency random field in about [-scale, scale] (sum of a few cosines)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    field = np.zeros((size, size))
    for _ in range(3):
        fx, fy = rng.uniform(0.3, 1.5, 2)
        px, py = rng.uniform(0, 2 * np.pi, 2)
        field += np.cos(2 * np.pi * fx * xx + px) * np.cos(2 * np.pi * fy * yy + py)
    return scale * field / 3


def chest_phantom(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One normal phantom ``[H,W]`` in [0,1] (before final contrast/noise) and its lung mask."""
    s = size
    v, u = (np.mgrid[0:s, 0:s] + 0.5) / s * 2 - 1  # v: rows (down), u: columns, in [-1,1]
    shift_u, shift_v = rng.normal(0, 0.03, 2)
    scale = rng.uniform(0.92, 1.05)
    u = (u - shift_u) / scale
    v = (v - shift_v) / scale
    edge = 2.0 / s
    img = np.full((s, s), 0.04)
    body = _soft(((u / rng.uniform(0.82, 0.9)) ** 2 + ((v - 0.05) / 0.98) ** 2) - 1, 0.04)
    img += 0.5 * body
    lungs = np.zeros((s, s))
    for side in (-1, 1):
        cu = side * rng.uniform(0.34, 0.40)
        cv = rng.uniform(-0.12, -0.04)
        ru, rv = rng.uniform(0.24, 0.3), rng.uniform(0.56, 0.64)
        ell = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 - 1
        lungs = np.maximum(lungs, _soft(ell, 0.06))
    dome = 0.5 + 0.12 * np.cos(np.clip(np.abs(u) - 0.38, -1, 1) * 3.0)  # diaphragm domes
    lungs *= _soft(v - dome, edge * 3)
    img -= 0.33 * lungs
    # mediastinum / spine / heart
    img += 0.16 * _soft(np.abs(u) - 0.09, 0.02) * body
    heart = _soft(((u - 0.12) / 0.26) ** 2 + ((v - 0.28) / 0.22) ** 2 - 1, 0.05)
    img += 0.22 * heart * lungs
    # ribs: bright curved bands on both sides
    ribs = np.zeros((s, s))
    for k in range(9):
        v0 = -0.62 + 0.14 * k + rng.normal(0, 0.01)
        curve = v0 + 0.35 * (np.abs(u) - 0.05) ** 2 - 0.1 * np.abs(u)
        ribs += np.exp(-((v - curve) ** 2) / (2 * 0.018**2)) * (np.abs(u) > 0.08) * (np.abs(u) < 0.75)
    img += rng.uniform(0.07, 0.11) * np.clip(ribs, 0, 1) * body
    for side in (-1, 1):  # clavicles
        clav = v - (-0.72 + 0.25 * side * u)
        img += 0.1 * np.exp(-(clav**2) / (2 * 0.02**2)) * (side * u > 0.05) * (side * u < 0.6)
    return img, lungs > 0.5


def plant_nodule(rng: np.random.Generator, img: np.ndarray, lungs: np.ndarray, size: int) -> np.ndarray:
    """Add a nodule inside the lungs; return its mask."""
    ys, xs = np.nonzero(lungs)
    i = rng.integers(len(ys))
    cy, cx = ys[i], xs[i]
    r = rng.uniform(0.03, 0.055) * size
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.zeros_like(img)
    for _ in range(2):  # slightly irregular: two overlapping Gaussians
        oy, ox = rng.normal(0, r * 0.25, 2)
        blob += np.exp(-(((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * (r * rng.uniform(0.6, 0.9)) ** 2)))
    blob /= blob.max()
    img += rng.uniform(0.22, 0.32) * blob
    return blob > 0.35


def plant_effusion(rng: np.random.Generator, img: np.ndarray, lungs: np.ndarray, size: int) -> np.ndarray:
    """Fill a lung base with fluid (meniscus rising laterally); return its mask."""
    side = rng.choice([-1, 1])
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    half = (side * u) > 0.05
    rows = np.nonzero(lungs.any(axis=1))[0]
    bottom = rows.max() / size * 2 - 1
    level = bottom - rng.uniform(0.15, 0.3)
    meniscus = level - 0.25 * np.clip(side * u - 0.2, 0, None)
    fluid = _soft(meniscus - v, 0.015) * lungs * half
    img += rng.uniform(0.22, 0.3) * fluid
    return fluid > 0.5


def finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Inhomogeneity, contrast/gamma variation, noise; clip to [0,1]."""
    size = img.shape[0]
    img = img * (1 + _smooth_field(rng, size, 0.06))
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04)
    img = np.clip(img, 0, None) ** rng.uniform(0.85, 1.15)
    img = img + rng.normal(0, rng.uniform(0.008, 0.02), img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def make_dataset(
    n: int,
    seed: int,
    size: int = 256,
    p_nodule: float = 0.0,
    p_effusion: float = 0.0,
) -> SyntheticSet:
    """``n`` phantoms; each lesion is planted independently with its probability."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 1, size, size), np.float32)
    labels = np.zeros((n, len(LESIONS)), np.uint8)
    masks = np.zeros((n, len(LESIONS), size, size), bool)
    for i in range(n):
        img, lungs = chest_phantom(rng, size)
        if rng.random() < p_nodule:
            masks[i, 0] = plant_nodule(rng, img, lungs, size)
            labels[i, 0] = 1
        if rng.random() < p_effusion:
            masks[i, 1] = plant_effusion(rng, img, lungs, size)
            labels[i, 1] = 1
        images[i, 0] = finish(rng, img)
    return SyntheticSet(images, labels, masks)


def make_anomaly_split(n_normal: int, n_abnormal: int, seed: int, size: int = 256) -> SyntheticSet:
    """Normals plus abnormals (nodule and/or effusion), shuffled deterministically."""
    normal = make_dataset(n_normal, seed, size)
    abn = make_dataset(n_abnormal, seed + 7919, size, p_nodule=0.7, p_effusion=0.5)
    for i in np.nonzero(abn.labels.max(axis=1) == 0)[0]:  # force at least one lesion
        rng = np.random.default_rng((seed, int(i)))
        img, lungs = chest_phantom(rng, size)
        abn.masks[i, 0] = plant_nodule(rng, img, lungs, size)
        abn.labels[i, 0] = 1
        abn.images[i, 0] = finish(rng, img)
    order = np.random.default_rng(seed + 1).permutation(n_normal + n_abnormal)
    cat = lambda a, b: np.concatenate([a, b])[order]  # noqa: E731
    return SyntheticSet(cat(normal.images, abn.images), cat(normal.labels, abn.labels), cat(normal.masks, abn.masks))
