import pytest
import torch

from aim_video.config import CLIP_MEAN, CLIP_STD
from aim_video.data.transforms import build_eval_transform, build_train_transform, normalize, three_crop


def constant_clip(t: int = 8, h: int = 60, w: int = 80) -> torch.Tensor:
    """uint8 [T, H, W, C], every frame the same random image."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=g).repeat(t, 1, 1, 1)


@pytest.mark.parametrize("n,erase", [(0, 0.0), (4, 1.0)])
def test_train_transform_identical_across_frames(n, erase):
    tf = build_train_transform(32, rand_augment_n=n, rand_augment_m=9, random_erasing=erase, color_jitter=0.4)
    for seed in range(5):
        torch.manual_seed(seed)
        out = tf(constant_clip())
        assert out.dtype == torch.uint8 and out.shape == (8, 3, 32, 32)
        assert type(out) is torch.Tensor
        assert torch.equal(out, out[:1].expand_as(out))


def test_train_transform_draws_differ_and_follow_the_seed():
    tf = build_train_transform(32)
    clip = constant_clip()
    torch.manual_seed(1)
    a = [tf(clip) for _ in range(4)]
    torch.manual_seed(1)
    b = [tf(clip) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])


def test_flip_only_is_a_mirror():
    tf = build_train_transform(60, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    clip = constant_clip(2, 60, 60)
    ref = clip.permute(0, 3, 1, 2)
    outs = [tf(clip) for _ in range(20)]
    assert any(torch.equal(o, ref) for o in outs) and any(torch.equal(o, ref.flip(-1)) for o in outs)


def test_random_erasing_fills_with_the_mean():
    tf = build_train_transform(32, scale=(1, 1), flip=False, random_erasing=1.0, mean=CLIP_MEAN)
    clip = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    out = tf(clip)
    erased = out[0, :, out[0].sum(0) > 0]
    assert erased.numel() > 0
    assert erased[:, 0].tolist() == [round(255 * m) for m in CLIP_MEAN]
    assert normalize(out, CLIP_MEAN, CLIP_STD)[0, :, out[0].sum(0) > 0].abs().max() < 0.01


def test_eval_transform_centre_and_three_crops():
    clip = torch.arange(100, dtype=torch.uint8).reshape(1, 1, 100, 1).expand(4, 50, 100, 3).contiguous()
    one = build_eval_transform(short_side=50, crop_size=50, num_crops=1)(clip)
    assert one.shape == (1, 4, 3, 50, 50)
    assert one[0, 0, 0, 0, 0] == 25  # centre crop of the 100-wide ramp starts at column 25
    three = build_eval_transform(short_side=50, crop_size=50, num_crops=3)(clip)
    assert three.shape == (3, 4, 3, 50, 50)
    assert [int(three[k, 0, 0, 0, 0]) for k in range(3)] == [0, 25, 50]
    tall = torch.zeros(2, 3, 90, 30)
    assert [c.shape[-2:] for c in three_crop(tall, 30)] == [(30, 30)] * 3
    with pytest.raises(ValueError, match="1 or 3"):
        build_eval_transform(num_crops=2)


def coord_clip(h: int, w: int) -> torch.Tensor:
    """uint8 [2, H, W, 3] whose channel 0 is the row and channel 1 the column of each pixel (H, W <= 256)."""
    rows = torch.arange(h, dtype=torch.uint8)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.uint8)[None, :].expand(h, w)
    return torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.uint8)], -1).expand(2, h, w, 3).contiguous()


@pytest.mark.parametrize("h,w", [(100, 50), (50, 100)])
def test_three_crops_run_along_the_longer_side_and_centre_the_shorter(h, w):
    """A portrait clip's three crops are its top, middle and bottom: three crops all at the top row passed, as
    only the landscape columns and the portrait shapes were checked."""
    three = build_eval_transform(short_side=50, crop_size=40, num_crops=3)(coord_clip(h, w))
    assert three.shape == (3, 2, 3, 40, 40)
    long_starts = [0, (max(h, w) - 40) // 2, max(h, w) - 40]  # 0, 30, 60
    tops = [int(three[k, 0, 0, 0, 0]) for k in range(3)]
    lefts = [int(three[k, 0, 1, 0, 0]) for k in range(3)]
    assert (tops, lefts) == ((long_starts, [5] * 3) if h > w else ([5] * 3, long_starts))
    for k in range(3):  # each crop is the 40 x 40 window at that corner, not only its first pixel
        assert three[k, 1, 0, :, 0].tolist() == list(range(tops[k], tops[k] + 40))
        assert three[k, 1, 1, 0, :].tolist() == list(range(lefts[k], lefts[k] + 40))


def test_eval_resizes_short_side_keeping_aspect():
    clip = torch.zeros(2, 120, 200, 3, dtype=torch.uint8)
    out = build_eval_transform(short_side=60, crop_size=60, num_crops=3)(clip)
    assert out.shape == (3, 2, 3, 60, 60)


def test_normalize_matches_reference_and_device():
    x = torch.randint(0, 256, (2, 4, 3, 8, 8), dtype=torch.uint8)
    ref = (x.float() / 255 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    out = normalize(x, CLIP_MEAN, CLIP_STD)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    assert normalize(x, CLIP_MEAN, CLIP_STD, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="uint8"):
        normalize(x.float(), CLIP_MEAN, CLIP_STD)


def test_train_clips_are_contiguous():
    """The decode's [T, H, W, C] permuted to [T, C, H, W] kept channels-last strides through crop and resize."""
    clip = torch.randint(0, 255, (4, 60, 80, 3), dtype=torch.uint8)
    assert build_train_transform(48)(clip).is_contiguous()
    assert build_eval_transform(48, 48, num_crops=3)(clip).is_contiguous()


def test_the_centre_crop_is_the_middle_of_the_three_crops_on_an_odd_margin():
    """torchvision's center_crop rounds the offset (38 of a 75-pixel margin), three_crop and mmaction floor (37)."""
    ramp = torch.arange(299, dtype=torch.int64).clamp(max=255).to(torch.uint8)
    clip = ramp.reshape(1, 1, 299, 1).expand(2, 224, 299, 3).contiguous()
    one = build_eval_transform(short_side=224, crop_size=224, num_crops=1)(clip)
    three = build_eval_transform(short_side=224, crop_size=224, num_crops=3)(clip)
    assert int(one[0, 0, 0, 0, 0]) == int(three[1, 0, 0, 0, 0]) == 37
