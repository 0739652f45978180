"""Small ResNet-class multi-label classifier with class activation maps (CAM).

Backbone: 3x3 stem (stride 2), four residual stages (stride 2 each after the first),
a linear head and spatial pooling: ``pool="avg"`` is global average pooling then the head;
``pool="lse"`` applies the head at every location (the raw class activation map) and pools
each class map with a normalised log-sum-exp, ``(logsumexp(r * cam) - log(h * w)) / r + bias``,
between the mean (r -> 0) and the max (r -> inf): a small lesion is not diluted over the whole
map. The export wrapper computes, inside the graph, sigmoid probabilities and CAMs (head
weights x last feature maps, ReLU, bilinear upsampling to the input size, per-map min-max
normalisation to [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers with an identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CamClassifier(nn.Module):
    """Multi-label CNN: backbone -> GAP -> linear head (logits)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        pool: str = "avg",
        lse_r: float = 10.0,
    ) -> None:
        super().__init__()
        if pool not in ("avg", "lse"):
            raise ValueError(f"pool must be 'avg' or 'lse', not {pool!r}")
        self.num_classes = num_classes
        self.pool = pool
        self.lse_r = float(lse_r)
        self.in_channels = in_channels
        self.widths = tuple(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature maps [B, K, h, w]."""
        return self.stages(self.stem(x))

    def class_maps(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps [B, L, h, w]: head weights x feature maps (no bias)."""
        return torch.einsum("ck,bkhw->bchw", self.head.weight, feats)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled logits [B, L] from the last feature maps."""
        if self.pool == "avg":
            return self.head(feats.mean(dim=(2, 3)))
        cam = self.class_maps(feats).flatten(2)
        r = self.lse_r
        return (torch.logsumexp(r * cam, dim=2) - math.log(cam.shape[2])) / r + self.head.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


class ClassifierExport(nn.Module):
    """Export wrapper: ``x[B,C,H,W] -> (probabilities[B,L], cam[B,L,H,W])``."""

    def __init__(self, net: CamClassifier) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.features(x)
        probs = torch.sigmoid(self.net.logits(feats))
        # CAM_c = sum_k w_ck * f_k  (bias is constant over space, omitted)
        cam = self.net.class_maps(feats)
        cam = F.relu(cam)
        cam = F.interpolate(cam, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        flat = cam.flatten(2)
        lo = flat.amin(dim=2, keepdim=True).unsqueeze(-1)
        hi = flat.amax(dim=2, keepdim=True).unsqueeze(-1)
        cam = (cam - lo) / (hi - lo + 1e-6)
        return probs, cam
