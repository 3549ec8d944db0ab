"""Classifier heads on top of a feature vector."""

from __future__ import annotations

import torch
from torch import nn


class GatedHead(nn.Module):
    """IGMU's detector head: a sigmoid gate (d -> d/2 -> d) multiplied into
    the features, LayerNorm, then a d -> 256 -> 128 -> out MLP with dropout 0.3."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(in_features, in_features // 2), nn.ReLU(), nn.Linear(in_features // 2, in_features), nn.Sigmoid())
        self.norm = nn.LayerNorm(in_features)
        self.mlp = nn.Sequential(
            nn.Linear(in_features, 256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, out_features),
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(features * self.gate(features)))


def build_head(kind: str, in_features: int, out_features: int) -> nn.Module:
    if kind == "gated":
        return GatedHead(in_features, out_features)
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    raise ValueError(f"unknown head '{kind}' (expected linear or gated)")
