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


def frozen_fingerprint(model: torch.nn.Module) -> list[float]:
    """[count, sum, sum of |w|, sum of w^2] over the frozen parameters (float64, on their device).

    A trainable-weights file (and a checkpoint) holds only the trainable set: the frozen backbone it was trained on
    must be the one it is loaded into again. Cheap reductions, stored with the file and compared on loading.
    """
    trainable = set(model.trainable_parameter_names())  # type: ignore[operator]
    frozen = [p.detach().double() for name, p in model.named_parameters() if name not in trainable]
    if not frozen:
        return [0.0, 0.0, 0.0, 0.0]
    stats = torch.stack([torch.stack([p.sum(), p.abs().sum(), p.square().sum()]) for p in frozen]).sum(0)
    return [float(sum(p.numel() for p in frozen)), *(float(v) for v in stats.cpu())]


def same_frozen_weights(saved: list[float], now: list[float], rtol: float = 1e-2) -> bool:
    """The same backbone, allowing for the rounding of another precision (bf16 against fp32 weights: ~1e-3)."""
    return saved[0] == now[0] and all(
        abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12) for a, b in zip(saved[2:], now[2:], strict=True)
    )


def saved_fingerprint(meta: dict[str, str]) -> list[float] | None:
    """The frozen fingerprint a trainable-weights file was written with (None for files from before it)."""
    return json.loads(meta["frozen_fingerprint"]) if "frozen_fingerprint" in meta else None


def save_trainable(model: torch.nn.Module, path: str, metadata: dict[str, Any] | None = None) -> str:
    """Write the model's trainable parameters (as fp32, contiguous) to `path` atomically, with the fingerprint of its
    frozen weights (`frozen_fingerprint`) in the metadata; returns the path. Under bf16/fp16 training these are the
    values the model computed with, rounded from the fp32 master weights that the checkpoint's deepspeed/ keeps."""
    names = list(model.trainable_parameter_names())
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().float().contiguous().cpu() for name in names}
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    meta["format"] = "aim-video-trainable-v1"
    meta["frozen_fingerprint"] = json.dumps(frozen_fingerprint(model))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates the file 0600 (its own temp file, renamed); others: 0644
    os.replace(tmp, path)
    return path


def _umask() -> int:
    """This process's umask (reading it means setting it: put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_metadata(path: str) -> dict[str, str]:
    """The metadata of a trainable-weights file, without reading its tensors."""
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - safetensors' own error types: a cut or foreign file
        raise _unreadable(path, err) from None


def _unreadable(path: str, err: BaseException) -> ValueError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return ValueError(
        f"{path} cannot be read as safetensors ({type(err).__name__}: {first}): a copy cut short or another kind "
        "of file; export it again or point at another checkpoint"
    )


def read_trainable(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a file written by :func:`save_trainable`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trainable-weights file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "aim-video-trainable-v1":
                raise ValueError(f"{path} is not an aim-video trainable-weights file (no 'format' metadata)")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' own error types: a cut or foreign file
        raise _unreadable(path, err) from None
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
    saved = saved_fingerprint(meta)
    if saved is not None and not same_frozen_weights(saved, now := frozen_fingerprint(model)):
        raise ValueError(
            f"{path} was trained on other frozen backbone weights than this model holds (fingerprints {saved} then, "
            f"{now} now): the file holds only the trainable weights, so the backbone must be the one it was trained "
            "on. Is model.pretrained the file training used (an empty one leaves the backbone random)?"
        )
    params = dict(model.named_parameters())
    wrong = [f"'{n}' has shape {tuple(t.shape)}, model expects {tuple(params[n].shape)}"
             for n, t in tensors.items() if params[n].shape != t.shape]  # fmt: skip
    if wrong:  # checked before anything is copied: a refused file leaves the model as it was
        raise ValueError(f"{path}: {'; '.join(wrong[:5])} ({len(wrong)} tensors; trained with other frames/classes?)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return meta
