"""VisualPrompts: shallow inserts once after the prefix tokens, deep replaces them before every later block."""

from __future__ import annotations

import torch

from aim_video.models.vpt import VisualPrompts


def test_shallow_and_deep_insertion_and_removal() -> None:
    x = torch.randn(6, 5, 4)  # [frames, 1 CLS + 4 patches, D]
    shallow = VisualPrompts(dim=4, num_tokens=2, depth=1, patch_area=64)
    y = shallow(x, 0)
    assert y.shape == (6, 7, 4)
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(y[:, 3:], x[:, 1:])
    assert torch.equal(y[:, 1:3], shallow.tokens[0].expand(6, 2, 4))  # the same prompts on every frame
    assert shallow(y, 1) is y  # shallow: later blocks leave the tokens alone
    assert torch.equal(shallow.remove(y), x)

    deep = VisualPrompts(dim=4, num_tokens=2, depth=3, patch_area=64)
    y = deep(deep(x, 0) + 1.0, 1)  # block 0 changed everything; block 1's prompts replace block 0's outputs
    assert y.shape == (6, 7, 4)
    assert torch.equal(y[:, 1:3], deep.tokens[1].expand(6, 2, 4))
    assert torch.equal(y[:, 3:], x[:, 1:] + 1.0)
    bound = (6.0 / (3 * 64 + 4)) ** 0.5
    assert deep.tokens.abs().max() <= bound
