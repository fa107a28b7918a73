"""LoRALinear: zero update at init, alpha / rank scaling, the frozen layer's own parameters, exact merge."""

from __future__ import annotations

import torch
from torch import nn

from aim_video.models.lora import LoRALinear


def test_zero_update_at_init_scaling_and_merge() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 12)
    lora = LoRALinear(base, rank=2, alpha=6.0)
    assert lora.weight is base.weight and lora.bias is base.bias and lora.scale == 3.0
    x = torch.randn(5, 8)
    torch.testing.assert_close(lora(x), base(x), atol=0, rtol=0)
    with torch.no_grad():
        lora.lora_up.weight.normal_()
    delta = 3.0 * x @ lora.lora_down.weight.T @ lora.lora_up.weight.T
    torch.testing.assert_close(lora(x), base(x) + delta)
    merged = lora.merged()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), lora(x), atol=1e-5, rtol=1e-5)
    assert lora.adapter_params() == ["lora_down.weight", "lora_up.weight"]
