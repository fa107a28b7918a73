"""The trainable weights alone, as safetensors: the exported inference file and the weights inside checkpoints.

A ViT-B AIM model has ~11 M trainable parameters next to an ~86 M frozen backbone, so the file a user ships is the
trainable set plus the resolved config (safetensors metadata); the frozen backbone comes from its own weight file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

# frozen tensors left out of the fingerprint: resampled from the same checkpoint for another input size, so that
# evaluating at another resolution is not taken for another backbone
RESOLUTION_DEPENDENT = ("pos_embed",)


def _signs(n: int, device: torch.device) -> torch.Tensor:
    """A fixed +-1 sequence of length n, the same on every device (bit 31 of a multiplicative hash of the index)."""
    idx = torch.arange(n, device=device, dtype=torch.int64)
    return ((idx * 2654435761) >> 31 & 1).double() * 2 - 1


def frozen_fingerprint(model: torch.nn.Module) -> dict[str, list[float]]:
    """Per frozen parameter: [numel, L2 norm, dot product with a fixed +-1 sequence] (float64, on its device).

    A trainable-weights file (and a checkpoint) holds only the trainable set: the frozen backbone it was trained on
    must be the one it is loaded into again. Norms alone do not tell two random initialisations apart (nor shuffled
    tensors); the signed sum does: it moves by about the tensor's norm for independent weights and by ~1e-3 of it
    for the rounding of another precision.
    """
    trainable = set(model.trainable_parameter_names())  # type: ignore[operator]
    out = {}
    for name, p in model.named_parameters():
        if name in trainable or name.split(".")[-1] in RESOLUTION_DEPENDENT:
            continue
        w = p.detach().reshape(-1).double()
        out[name] = [float(w.numel()), float(w.norm()), float(w @ _signs(w.numel(), w.device))]
    return out


def _legacy_fingerprint(model: torch.nn.Module) -> list[float]:
    """[count, sum, sum of |w|, sum of w^2] over the frozen parameters: what files before per-tensor ones hold."""
    trainable = set(model.trainable_parameter_names())  # type: ignore[operator]
    frozen = [p.detach().double() for name, p in model.named_parameters() if name not in trainable]
    if not frozen:
        return [0.0, 0.0, 0.0, 0.0]
    stats = torch.stack([torch.stack([p.sum(), p.abs().sum(), p.square().sum()]) for p in frozen]).sum(0)
    return [float(sum(p.numel() for p in frozen)), *(float(v) for v in stats.cpu())]


def frozen_differences(
    saved: dict[str, list[float]] | list[float], model: torch.nn.Module, rtol: float = 1e-2
) -> list[str]:
    """How `model`'s frozen weights differ from a saved fingerprint ([] when they are the same weights, allowing for
    the rounding of another precision: bf16 against fp32 moves these sums by ~1e-3 of the norm)."""
    if isinstance(saved, list):  # a file from before per-tensor fingerprints: totals only
        now = _legacy_fingerprint(model)
        same = saved[0] == now[0] and all(
            abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12) for a, b in zip(saved[2:], now[2:], strict=True)
        )
        return [] if same else [f"totals {saved} then, {now} now"]
    now_print = frozen_fingerprint(model)
    out = [f"{name}: not in this model" for name in sorted(set(saved) - set(now_print))]
    out += [f"{name}: not in the saved backbone" for name in sorted(set(now_print) - set(saved))]
    for name in sorted(set(saved) & set(now_print)):
        (n0, norm0, dot0), (n1, norm1, dot1) = saved[name], now_print[name]
        scale = max(norm0, norm1, 1e-12)
        if n0 != n1 or abs(norm0 - norm1) > rtol * scale or abs(dot0 - dot1) > rtol * scale:
            out.append(f"{name}: {int(n0)} values of norm {norm0:.4g} then, {int(n1)} of norm {norm1:.4g} now"
                       + ("" if n0 != n1 or abs(norm0 - norm1) > rtol * scale else " (other values)"))  # fmt: skip
    return out


def saved_fingerprint(meta: dict[str, str]) -> dict[str, list[float]] | list[float] | None:
    """The frozen fingerprint a trainable-weights file was written with (None for files from before it)."""
    for key in ("frozen_tensors", "frozen_fingerprint"):  # per tensor; the totals of older files
        if key in meta:
            return json.loads(meta[key])
    return None


def describe_differences(differences: list[str]) -> str:
    """The first few differing tensors, and how many differ."""
    head = "; ".join(differences[:3])
    return head + (f"; and {len(differences) - 3} more tensors" if len(differences) > 3 else "")


def save_trainable(model: torch.nn.Module, path: str, metadata: dict[str, Any] | None = None) -> str:
    """Write the model's trainable parameters (as fp32, contiguous) to `path` atomically, with the fingerprint of its
    frozen weights (`frozen_fingerprint`, metadata `frozen_tensors`); returns the path. Under bf16/fp16 training
    these are the values the model computed with, rounded from the fp32 master weights that the checkpoint's
    deepspeed/ keeps."""
    names = list(model.trainable_parameter_names())
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().float().contiguous().cpu() for name in names}
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    meta["format"] = "aim-video-trainable-v1"
    meta["frozen_tensors"] = json.dumps(frozen_fingerprint(model))
    return save_safetensors(tensors, path, meta)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> str:
    """`safetensors.torch.save_file` under a temporary name, renamed into place (never a half-written file), with
    the permissions of any file this process writes: safetensors creates it 0600 (its own temporary file, renamed),
    which other users of a shared cluster folder cannot read."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
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
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        head = b""
    safetensors = head[8:9] == b"{"  # its header's length (8 bytes), then the JSON header: a damaged copy
    pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # PROTO opcode, protocol 2-5
    if not safetensors and (head.startswith(b"PK\x03\x04") or pickle):  # torch.save's zip or pickle: a .pt/.pth
        return ValueError(
            f"{path} is a PyTorch .pt/.pth file, not aim-video's trained weights: an image backbone's weights go to "
            "model.pretrained; evaluation takes model_trainable.safetensors or a checkpoint folder that training wrote"
        )
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
    _check_backbone(model, meta, path)
    params = dict(model.named_parameters())
    wrong = [f"'{n}' has shape {tuple(t.shape)}, model expects {tuple(params[n].shape)}"
             for n, t in tensors.items() if params[n].shape != t.shape]  # fmt: skip
    if wrong:  # checked before anything is copied: a refused file leaves the model as it was
        raise ValueError(f"{path}: {'; '.join(wrong[:5])} ({len(wrong)} tensors; trained with other frames/classes?)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return meta


def _check_backbone(model: torch.nn.Module, meta: dict[str, str], path: str) -> None:
    """Trainable weights mean something only on the frozen backbone they were trained on: refuse another one."""
    saved = saved_fingerprint(meta)
    if saved is not None and (differences := frozen_differences(saved, model)):
        raise ValueError(
            f"{path} was trained on other frozen backbone weights than this model holds ({len(differences)} frozen "
            f"tensors differ: {describe_differences(differences)}): the file holds only the trainable weights, so "
            "the backbone must be the one it was trained on. Is model.pretrained the file training used (an empty "
            "one leaves the backbone random, another random one each time)?"
        )


def init_from_trainable(model: torch.nn.Module, path: str, head: str, classes: list[str] | None = None) -> str:
    """Start training from another run's trainable weights (model.init_trainable), on the same frozen backbone.

    Every trainable tensor of the file is copied, except: the head (module name `head`) when its shape differs
    (another number of classes, or other class names in `classes` than the file stores: it keeps its fresh
    initialisation, since its rows are the old run's classes), and the temporal embedding [1, T, D] when T
    differs (resampled linearly over time: 8-frame adapters start a 16-frame run). Any other difference (another
    method, adapter layout or width) is refused before anything is copied. Returns a one-line summary for the log.
    """
    tensors, meta = read_trainable(path)
    _check_backbone(model, meta, path)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"model.init_trainable={path} does not match this model's trainable set: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}); it can start a run of the same "
            "model.method and adapter settings only"
        )
    stored = json.loads(meta["classes"]) if meta.get("classes") else None
    other_classes = stored is not None and classes is not None and list(classes) != stored
    skipped, resampled, copies = [], [], {}
    for name, tensor in tensors.items():
        want = params[name].shape
        is_head = name == head or name.startswith(f"{head}.")
        if is_head and (tensor.shape != want or other_classes):
            skipped.append(name)
        elif tensor.shape == want:
            copies[name] = tensor
        elif (
            name.endswith("temporal_embed")
            and tensor.ndim == 3
            and (tensor.shape[0], tensor.shape[2]) == (want[0], want[2])
        ):
            copies[name] = F.interpolate(tensor.float().transpose(1, 2), size=want[1], mode="linear",
                                         align_corners=True).transpose(1, 2)  # fmt: skip
            resampled.append(f"{name} {tensor.shape[1]} -> {want[1]} frames")
        else:
            raise ValueError(
                f"model.init_trainable={path}: '{name}' has shape {tuple(tensor.shape)}, this model's "
                f"{tuple(want)}: only the head (another number of classes) and the temporal embedding (another "
                "number of frames) may differ"
            )
    with torch.no_grad():
        for name, tensor in copies.items():
            params[name].copy_(tensor)
    summary = f"started from {path}: {len(copies)} of {len(params)} trainable tensors"
    if skipped:
        summary += f"; the head ({', '.join(skipped)}) keeps its new initialisation: other classes"
    if resampled:
        summary += f"; resampled {', '.join(resampled)}"
    return summary
