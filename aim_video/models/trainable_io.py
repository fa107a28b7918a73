"""The trainable weights alone, as safetensors: the exported inference file and the weights inside checkpoints.

A ViT-B AIM model has ~11 M trainable parameters next to an ~86 M frozen backbone, so the file a user ships is the
trainable set plus the resolved config (safetensors metadata); the frozen backbone comes from its own weight file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_trainable(model: torch.nn.Module, path: str, metadata: dict[str, Any] | None = None) -> str:
    """Write the model's trainable parameters (fp32, contiguous) to `path` atomically; returns the path."""
    names = list(model.trainable_parameter_names())
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().float().contiguous().cpu() for name in names}
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    meta["format"] = "aim-video-trainable-v1"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def read_trainable(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file written by :func:`save_trainable`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trainable-weights file not found: {path}")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "aim-video-trainable-v1":
            raise ValueError(f"{path} is not an aim-video trainable-weights file (no 'format' metadata)")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return tensors, meta


def load_trainable(model: torch.nn.Module, path: str) -> dict[str, str]:
    """Load a trainable-weights file into `model`; its keys must be exactly the model's trainable set."""
    tensors, meta = read_trainable(path)
    expected = set(model.trainable_parameter_names())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match this model's trainable set: missing {missing[:10]} ({len(missing)}), "
            f"unexpected {unexpected[:10]} ({len(unexpected)}). Was it trained with another model config?"
        )
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if params[name].shape != tensor.shape:
            expected_shape = tuple(params[name].shape)
            raise ValueError(f"{path}: '{name}' has shape {tuple(tensor.shape)}, model expects {expected_shape}")
        with torch.no_grad():
            params[name].copy_(tensor)
    return meta
