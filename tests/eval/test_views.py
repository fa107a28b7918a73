"""What the eval loader feeds evaluate(): view layout and three-crop geometry, read back from a real decoded video."""

import pytest
import torch

from aim_video.data import sampling
from aim_video.data.loader import build_eval_loader
from aim_video.eval.multiview import apply_protocol
from tests.eval.conftest import BAND_COLOURS, tiny_config, write_split


@pytest.fixture(scope="module")
def split_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("views"))
    write_split(root, num_videos=1, num_classes=1)  # one 24-frame 32x64 video: four 16-px colour bands
    return root


def _band(crop: torch.Tensor, left: int) -> torch.Tensor:
    """Mean RGB of the 12 interior columns starting at `left`, below the grey frame-code strip: [3]."""
    return crop[:, :, 10:, left + 2 : left + 14].float().mean(dim=(0, 2, 3))


def test_three_crops_along_the_long_side_clip_major(split_root):
    cfg = tiny_config(split_root, num_classes=1)
    cfg.data.test_num_clips, cfg.data.test_num_crops = 2, 3
    protocol = apply_protocol(cfg)
    batch = next(iter(build_eval_loader(cfg, "val")))
    video = batch["video"]
    assert video.shape == (1, protocol.num_views, 4, 3, 32, 32) and video.dtype == torch.uint8
    colours = torch.tensor(BAND_COLOURS, dtype=torch.float32)
    clips = sampling.test_indices(24, "dense", 4, 2, 2)
    for v in range(6):
        clip, crop = divmod(v, 3)  # clip-major: views 0-2 are clip 0's left, centre, right crops
        view = video[0, v]  # [T, C, H, W]
        # a 32-px crop of a 64-px frame starts at 0, 16 or 32: its two halves show bands (crop, crop + 1)
        assert torch.allclose(_band(view, 0), colours[crop], atol=20), (v, _band(view, 0))
        assert torch.allclose(_band(view, 16), colours[crop + 1], atol=20), (v, _band(view, 16))
        codes = view[:, :, :6, :].float().mean(dim=(1, 2, 3))  # grey strip level 8 t per frame
        assert torch.allclose(codes, 8 * torch.tensor(clips[clip], dtype=torch.float32), atol=3), (v, codes)
    assert clips[0][0] < clips[1][0]  # two distinct clips in temporal order


def test_ssv2_protocol_gives_one_clip_three_crops(split_root):
    cfg = tiny_config(split_root, num_classes=1)
    cfg.eval.protocol = "ssv2"
    apply_protocol(cfg)
    video = next(iter(build_eval_loader(cfg, "val")))["video"]
    assert video.shape[:2] == (1, 3)
    left, right = _band(video[0, 0], 0), _band(video[0, 2], 16)
    assert torch.allclose(left, torch.tensor(BAND_COLOURS[0], dtype=torch.float32), atol=20)
    assert torch.allclose(right, torch.tensor(BAND_COLOURS[3], dtype=torch.float32), atol=20)
