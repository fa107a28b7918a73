"""Pretrain the demo's tiny image ViT on rendered shapes, so the demo adapts a backbone that already sees.

No pretrained ViT can be downloaded on the demo's machines, and a randomly initialised frozen backbone learns motion
classes slowly. This script trains the demo config's timm architecture on images of shapes (tasks: shape, size,
brightness, position; see aim_video.data.demo_data.render_image) and writes the backbone without its image head,
in timm's key layout, to the config's `model.pretrained` path. It takes about two minutes on two CPU cores.

    python tools/pretrain_backbone.py --config configs/demo.yaml [--steps 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from aim_video.config import config_cli_main  # noqa: E402
from aim_video.data.demo_data import IMAGE_TASKS, render_image  # noqa: E402
from aim_video.models.trainable_io import save_safetensors  # noqa: E402


def make_batch(rng: np.random.Generator, n: int, input_size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(render_image(rng) for _ in range(n)), strict=True)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0  # [n, 3, 64, 64]
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.tensor([[lab[task] for task in IMAGE_TASKS] for lab in labels])  # [n, tasks]
    return x, y


def multitask_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    loss, accs, start = 0.0, [], 0
    for k, width in enumerate(IMAGE_TASKS.values()):
        part = logits[:, start : start + width]
        loss = loss + F.cross_entropy(part, y[:, k])
        accs.append((part.argmax(1) == y[:, k]).float().mean().item())
        start += width
    return loss, accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="", help="output file (default: the config's model.pretrained)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args()
    cfg = config_cli_main(args.config, args.overrides)
    out = args.out or cfg.model.pretrained
    if not out:
        raise SystemExit("error: give --out or set model.pretrained in the config")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = timm.create_model(
        cfg.model.arch, pretrained=False, num_classes=sum(IMAGE_TASKS.values()), **cfg.model.vit_kwargs
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    x_val, y_val = make_batch(np.random.default_rng(12345), 512, cfg.data.input_size, cfg.data.mean, cfg.data.std)
    start = time.time()
    for step in range(1, args.steps + 1):
        x, y = make_batch(rng, args.batch_size, cfg.data.input_size, cfg.data.mean, cfg.data.std)
        loss, _ = multitask_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                _, accs = multitask_loss(model(x_val), y_val)
            model.train()
            summary = " ".join(f"{task}={acc:.2f}" for task, acc in zip(IMAGE_TASKS, accs, strict=True))
            print(f"step {step} loss {loss.item():.3f} held-out accuracy: {summary} ({time.time() - start:.0f} s)")
    model.reset_classifier(0)  # the image head is not part of the backbone AIM adapts
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, out, {"arch": cfg.model.arch, "task": "demo shapes", "steps": str(args.steps)})
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, {sum(v.numel() for v in state.values())} parameters)")


if __name__ == "__main__":
    main()
