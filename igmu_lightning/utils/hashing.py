"""Content hashes of model weights, so a run records exactly which model it used."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and raw bytes: the same weights give the same hash
    on any device, and a renamed, reshaped or re-typed tensor changes it."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def module_hash(module: nn.Module) -> str:
    return tensors_hash(module.state_dict())
