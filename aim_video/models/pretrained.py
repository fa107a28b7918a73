"""Image-model weights from a local path into an AIM model's frozen backbone, failing loudly on any mismatch.

Layouts read: OpenAI CLIP (the TorchScript ``.pt`` archive or a plain state dict, keys under ``visual.`` or bare,
fp16, extra integer entries, text tower ignored), OpenCLIP (the same layout; QuickGELU or GELU as the
``open_clip_config.json`` beside it says), and timm (``.pth``/``.bin``, ``.safetensors``, a Hugging
Face cache or snapshot folder). timm's own ``checkpoint_filter_fn`` converts CLIP keys and resamples position
embeddings to the model's input size (a checkpoint of another patch size is refused). After conversion the model's
missing keys must be exactly the parameters AIM adds (adapters, temporal embedding, head) and nothing may be
unexpected: the authors' users trained for days on a random frozen backbone when a flag was forgotten, so any
difference here is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
import zipfile

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from timm.layers import QuickGELU
from timm.models.vision_transformer import checkpoint_filter_fn

log = logging.getLogger(__name__)

# files looked for, in order, inside a folder (timm layout first; OpenCLIP files hold the OpenAI layout)
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.pth",
    "model.pt",
)
# checkpoint entries that are not weights of the image model: the ImageNet classifier / CLIP projection
IGNORED_KEYS = ("head.weight", "head.bias")
OPENAI_CLIP_URLS = {
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
}


class PretrainedLoadError(RuntimeError):
    """A checkpoint does not fit the model: lists what is missing, unexpected or of the wrong shape."""


def resolve_weight_file(path: str) -> str:
    """A weight file from a file path, a folder holding one, or a Hugging Face cache folder (``models--org--name``)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(_not_local_message(path))
    folder = path
    snapshots = os.path.join(path, "snapshots")
    if os.path.isdir(snapshots):  # HF cache layout: refs/main names the snapshot to use
        ref = os.path.join(path, "refs", "main")
        names = sorted(os.listdir(snapshots))
        if os.path.isfile(ref):
            with open(ref) as f:
                folder = os.path.join(snapshots, f.read().strip())
        elif len(names) == 1:
            folder = os.path.join(snapshots, names[0])
        else:
            raise FileNotFoundError(f"{path}: {len(names)} snapshots and no refs/main; point model.pretrained at one")
    found = [os.path.join(folder, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    readable = [f for f in found if not _transformers_layout(f)]  # laion's repos: open_clip's file beside it
    if found:
        return (readable or found)[0]
    raise FileNotFoundError(f"no weight file in {folder}: looked for {', '.join(WEIGHT_FILES)}")


# integer entries OpenAI's CLIP checkpoints carry beside the weights (OpenCLIP's files and training runs do not)
OPENAI_INT_ENTRIES = frozenset({"input_resolution", "context_length", "vocab_size"})


def read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Floating-point tensors of a checkpoint file, unwrapped from ``state_dict``/``model`` and ``module.``, and
    whether the file is OpenAI's CLIP release or a copy of its state dict (a TorchScript archive, or its integer
    entries)."""
    openai = False
    if path.endswith(".npz"):
        raise PretrainedLoadError(
            f"{path}: .npz (JAX / big_vision, e.g. the augreg releases) is not read; use the same weights as timm "
            "ships them, a .safetensors file (`huggingface-cli download timm/<model name>`)"
        )
    if path.endswith(".safetensors"):
        _refuse_trainable_file(path)
        state = load_file(path)
    elif _is_torchscript(path):  # OpenAI's released .pt files are TorchScript archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated, yet the format OpenAI ships
            state = torch.jit.load(path, map_location="cpu").state_dict()
        openai = True
    else:
        try:  # timm's train.py stores its argparse.Namespace beside the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - report which file and why, whatever torch raised
            text = str(err)  # torch's advice (weights_only=False, allowlists) is not the user's to take: its cause
            lines = [ln.strip() for ln in text.split("WeightsUnpickler error:")[-1].splitlines() if ln.strip()]
            cause = lines[0] if "WeightsUnpickler error:" in text and lines else f"{type(err).__name__}: {text}"
            reason = f"not a torch checkpoint, or cut short ({cause})"
            if "Unsupported global" in text:
                reason = (
                    "it pickles Python objects besides tensors, which are not unpickled here (that can run code); "
                    "save the weights alone: torch.save(model.state_dict(), path)"
                )
            raise PretrainedLoadError(f"cannot read checkpoint {path}: {reason}") from err
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedLoadError(f"{path} holds a {type(state).__name__}, not a state dict")
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():  # drops input_resolution & co.
            out[key.removeprefix("module.")] = value
    return out, openai or OPENAI_INT_ENTRIES <= set(state)


def _refuse_trainable_file(path: str) -> None:
    """aim-video's own trained weights are no image backbone: say what model.pretrained is for, not which keys miss."""
    from aim_video.models.trainable_io import read_metadata

    try:
        meta = read_metadata(path)
    except ValueError as err:  # a cut copy or another kind of file
        raise PretrainedLoadError(str(err)) from None
    if meta.get("format") == "aim-video-trainable-v1":
        saved = yaml.safe_load(meta.get("config", "")) or {}
        backbone = (saved.get("model") or {}).get("pretrained", "") if isinstance(saved, dict) else ""
        raise PretrainedLoadError(
            f"{path} holds aim-video's trained weights (adapters, temporal embedding, head), not an image backbone: "
            "model.pretrained is the image model they were trained on"
            + (f" ({backbone}, as its config says)" if backbone else "")
            + "; evaluate or predict with it through tools/test.py / tools/infer.py --checkpoint, or start a "
            "training run from it with model.init_trainable"
        )


def _transformers_layout(file: str) -> bool:
    """Whether a .safetensors file holds Hugging Face transformers' CLIP (`vision_model.encoder.layers.*`)."""
    if not file.endswith(".safetensors"):
        return False
    try:
        with safe_open(file, framework="pt") as f:
            return any(key.startswith("vision_model.") for key in f.keys())
    except Exception:  # noqa: BLE001 - unreadable: reading it later says why
        return False


def to_timm_layout(state: dict[str, torch.Tensor], backbone: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """Convert any supported layout to the backbone's timm keys at its input size; returns (state, layout name)."""
    layout = "timm"
    if any(k.startswith("vision_model.embeddings.") for k in state):
        raise PretrainedLoadError(
            "these are Hugging Face transformers' CLIP weights (vision_model.encoder.layers.*), a layout aim-video "
            "does not read: use the open_clip_pytorch_model.bin of the same repository (laion's), OpenAI's .pt, or "
            "timm's copy (timm/vit_base_patch16_clip_224.openai and the like)"
        )
    if "class_embedding" in state and "conv1.weight" in state:  # bare OpenAI visual tower
        state = {f"visual.{k}": v for k, v in state.items()}
    if "visual.class_embedding" in state:
        layout = "openai-clip"
        state = {k: v for k, v in state.items() if k.startswith("visual.")}  # the text tower is not used
    elif any(k.startswith("visual.trunk.") for k in state):
        layout = "openclip-timm"
    _check_patch_size(state, backbone)
    state = checkpoint_filter_fn(state, backbone)  # also resamples position embeddings to the model's input size
    return state, layout


def _check_patch_size(state: dict[str, torch.Tensor], backbone: torch.nn.Module) -> None:
    """timm's filter would resample a patch kernel of another size to the model's (FlexiViT-style) and the load
    would go through: ViT-B/32 weights in a ViT-B/16. Those are weights of another model, so that is an error."""
    kernel = next(
        (state[k] for k in ("visual.conv1.weight", "patch_embed.proj.weight", "visual.trunk.patch_embed.proj.weight")
         if k in state), None,
    )  # fmt: skip
    proj = getattr(getattr(backbone, "patch_embed", None), "proj", None)
    if kernel is None or proj is None or kernel.ndim != 4:
        return
    theirs, ours = tuple(kernel.shape[-2:]), tuple(proj.weight.shape[-2:])
    if theirs != ours:
        raise PretrainedLoadError(
            f"the checkpoint's patches are {theirs[0]}x{theirs[1]} pixels, the model's (model.arch) "
            f"{ours[0]}x{ours[1]}: these are weights of another architecture (a ViT-x/{theirs[0]}); pick model.arch "
            f"with patch size {theirs[0]}"
        )


def openai_weights(path: str, file: str) -> bool:
    """Whether timm-layout weights are OpenAI's CLIP (trained with QuickGELU): timm names them `<arch>.openai`, in
    the Hugging Face repository (folder `models--timm--<arch>.openai`), its config.json and downloaded file names."""
    names = [os.path.basename(os.path.normpath(p)) for p in (path, file, os.path.dirname(file))]
    names += [part for part in os.path.normpath(file).split(os.sep) if part.startswith("models--")]
    if any(name.endswith(".openai") or ".openai." in name for name in names):
        return True
    return hub_pretrained_cfg(file).get("tag") == "openai"


OPEN_CLIP_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")


def openai_layout_quick_gelu(file: str, openai_release: bool) -> bool | None:
    """Whether weights in the OpenAI CLIP layout were trained with QuickGELU. OpenAI's own are (the TorchScript
    release and copies of its state dict, `openai_release`); OpenCLIP writes the same layout for its models, most of
    which (LAION, DataComp) use GELU, and says which in the `open_clip_config.json` beside the file
    (`model_cfg.quick_gelu`, false when absent). None: nothing says (an OpenCLIP-named file without that config, an
    OpenCLIP training checkpoint, a state dict saved without OpenAI's integer entries), which could be either."""
    config = os.path.join(os.path.dirname(file), "open_clip_config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                model_cfg = json.load(f).get("model_cfg", {})
            return bool(model_cfg.get("quick_gelu", False))
        except (OSError, ValueError, AttributeError) as err:
            raise PretrainedLoadError(f"cannot read {config}: {err}") from err
    if os.path.basename(file) in OPEN_CLIP_FILES:
        return None
    return True if openai_release else None


def hub_pretrained_cfg(file: str) -> dict:
    """`pretrained_cfg` of the timm / Hugging Face config.json beside a weight file ({} when there is none)."""
    config = os.path.join(os.path.dirname(file), "config.json")
    if not os.path.isfile(config):
        return {}
    try:
        with open(config, encoding="utf-8") as f:
            cfg = json.load(f).get("pretrained_cfg")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return {}
    return cfg if isinstance(cfg, dict) else {}


def load_pretrained(model: torch.nn.Module, path: str) -> dict[str, list[str]]:
    """Load image-model weights from ``path`` into ``model.backbone`` (fp32); strict apart from AIM's new keys.

    Returns ``{"layout": [...], "ignored": [...]}``. Raises :class:`PretrainedLoadError` listing missing,
    unexpected and wrong-shape keys, and ``FileNotFoundError`` for anything that is not a local file or folder.
    """
    file = resolve_weight_file(path)
    backbone = model.backbone
    raw, openai_release = read_state_dict(file)
    try:
        state, layout = to_timm_layout(raw, backbone)
    except PretrainedLoadError as err:
        raise PretrainedLoadError(f"{file}: {err}") from None
    act = type(backbone.blocks[0].mlp.act).__name__
    quick = isinstance(backbone.blocks[0].mlp.act, QuickGELU)
    if layout == "openai-clip":
        trained_quick = openai_layout_quick_gelu(file, openai_release)
        if trained_quick is None:
            log.warning(
                "%s: CLIP weights in the OpenAI layout with nothing saying whether they were trained with QuickGELU "
                "(OpenAI's release: a TorchScript .pt with input_resolution, context_length and vocab_size) or GELU "
                "(most OpenCLIP models: the open_clip_config.json beside them says): using model.arch's %s unchecked",
                file,
                act,
            )
        elif trained_quick != quick:
            config = os.path.join(os.path.dirname(file), "open_clip_config.json")
            source = (
                f"{config} says quick_gelu={trained_quick}"
                if os.path.isfile(config)
                else "OpenAI's CLIP weights were trained with QuickGELU"
            )
            want = (
                "a *_clip_quickgelu_* architecture (e.g. vit_base_patch16_clip_quickgelu_224)"
                if trained_quick
                else "the GELU CLIP architecture (e.g. vit_base_patch16_clip_224)"
            )
            raise PretrainedLoadError(
                f"{file}: {source}, but model.arch builds a ViT with {act}: pick {want}; its outputs would differ"
            )
    elif (  # the GELU CLIP architecture: renamed OpenAI (QuickGELU) weights would go in unnoticed
        layout == "timm"
        and not quick
        and "clip" in str(getattr(backbone, "pretrained_cfg", {}).get("architecture", ""))
        and (not openai_weights(path, file) and not hub_pretrained_cfg(file))
    ):
        log.warning(
            "%s: CLIP weights in timm's layout with nothing saying whose they are (a *.openai* name, or timm's "
            "config.json beside them): OpenAI's need QuickGELU, most OpenCLIP ones GELU; using model.arch's %s "
            "unchecked",
            file,
            act,
        )
    if layout != "openai-clip" and openai_weights(path, file) and not quick:
        raise PretrainedLoadError(
            f"{file} holds OpenAI's CLIP weights (tagged 'openai'), which need QuickGELU: pick the *_clip_quickgelu_* "
            f"architecture (e.g. vit_base_patch16_clip_quickgelu_224) rather than the {type(backbone).__name__} with "
            f"{type(backbone.blocks[0].mlp.act).__name__} that model.arch builds; its outputs would differ"
        )
    ignored = sorted(k for k in state if k in IGNORED_KEYS)
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}

    own = backbone.state_dict()
    new = {name.removeprefix("backbone.") for name in model.new_parameter_names() if name.startswith("backbone.")}
    missing = sorted(set(own) - set(state) - new)
    unexpected = sorted(set(state) - set(own))
    already_adapted = sorted(set(state) & new)
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    if not set(state) & set(own):  # a ResNet, a training checkpoint, an optimizer state: not this backbone at all
        raise PretrainedLoadError(
            f"{file} ({layout} layout) holds none of the {type(backbone).__name__}'s weights ({len(state)} tensors"
            + (f", e.g. {_few(sorted(state), 4)}" if state else "")
            + "): model.pretrained is the image backbone's weights file (OpenAI CLIP .pt, timm .pth/.safetensors), "
            "not another model's, a training checkpoint or aim-video's trained weights (model.init_trainable)"
        )
    if missing or unexpected or already_adapted or wrong_shape:
        theirs, ours = _width_depth(state), _width_depth(own)
        raise PretrainedLoadError(
            f"{file} ({layout} layout) does not fit {type(backbone).__name__} "
            f"(model.arch / model.vit_kwargs)"
            + (f": the checkpoint's ViT is {theirs}, the model's {ours}" if theirs and theirs != ours else "")
            + ":\n"
            f"  missing backbone keys ({len(missing)}): {_few(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_few(unexpected)}\n"
            f"  wrong shapes ({len(wrong_shape)}): {_few(wrong_shape)}\n"
            f"  AIM keys already present ({len(already_adapted)}): {_few(already_adapted)}\n"
            "Pick the architecture these weights were trained with (model.pretrained is an image backbone)."
        )
    dtype = next(iter(own.values())).dtype
    state = {k: v.to(dtype) for k, v in state.items()}
    result = backbone.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == sorted(new) and not result.unexpected_keys, result
    log.info("loaded %s weights from %s (%d tensors; ignored %s)", layout, file, len(state), ignored)
    return {"layout": [layout], "ignored": ignored}


def _width_depth(state: dict[str, torch.Tensor]) -> str:
    """"width W, depth D" of a timm-layout ViT state dict ("" when it does not say)."""
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    width = state["cls_token"].shape[-1] if "cls_token" in state else None
    return f"width {width}, depth {depth}" if width and depth else ""


def _few(keys: list[str], limit: int = 12) -> str:
    """The first keys of a long list, and how many more (a ViT-L checkpoint misses ~300)."""
    return str(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def weights_normalization(path: str, arch: str) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """(mean, std, where that is known from) of the images the weights at `path` were trained on, when known: a
    timm/Hugging Face config.json beside them, else CLIP's for a CLIP architecture (OpenAI and OpenCLIP weights
    both use CLIP's); None for other files (an ImageNet ViT's own statistics depend on its weights: 0.5 for
    augreg, ImageNet's for DeiT)."""
    from aim_video.config import CLIP_MEAN, CLIP_STD

    if not path:
        return None
    try:
        file = resolve_weight_file(path)
    except FileNotFoundError:
        return None
    cfg = hub_pretrained_cfg(file)
    if cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"]), os.path.join(os.path.dirname(file), "config.json")
    if "_clip_" in arch:
        return CLIP_MEAN, CLIP_STD, f"CLIP weights ({arch})"
    return None


def _is_torchscript(path: str) -> bool:
    """TorchScript archives carry compiled code (``*/code/``) next to the tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def _not_local_message(path: str) -> str:
    """What to download and where to put it, for a name that would need the internet."""
    hint = ""
    name = path.removeprefix("hf-hub:").removeprefix("hf_hub:")
    if path in OPENAI_CLIP_URLS:
        hint = f" Download {OPENAI_CLIP_URLS[path]} and set model.pretrained to the downloaded .pt file."
    elif path.startswith(("ViT-", "RN")):  # another of OpenAI's model names (ViT-L/14@336px, ViT-B/32, RN50)
        hint = (
            f" For OpenAI's {path}, download its .pt (the URLs are in openai/CLIP's clip/clip.py, _MODELS) and set "
            "model.pretrained to the downloaded file."
        )
    elif _looks_like_hub_name(name):
        hub_id = name if "/" in name else _timm_hub_id(name)
        if hub_id:
            folder = f"weights/{hub_id.split('/')[-1]}"
            hint = (
                f" If it names the Hugging Face repo {hub_id}: on a machine with internet run "
                f"`huggingface-cli download {hub_id} --local-dir {folder}` and set model.pretrained={folder}."
            )
    return (
        f"model.pretrained={path!r} is not a local file or folder; aim-video never downloads weights.{hint} "
        "OpenAI CLIP .pt files, timm .pth/.safetensors files and Hugging Face cache folders work."
    )


def _looks_like_hub_name(name: str) -> bool:
    """``org/repo`` or ``arch.tag``: no file extension, no leading ``./`` or ``/``, at most one slash."""
    is_file_like = name.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz")) or name.startswith((".", "/", "~"))
    return not is_file_like and (name.count("/") == 1 or ("." in name and "/" not in name))


def _timm_hub_id(name: str) -> str | None:
    """timm's Hugging Face repository for a tagged model name such as ``vit_base_patch16_clip_224.openai``."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # an architecture without that tag
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None
