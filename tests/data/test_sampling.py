import numpy as np
import pytest

from aim_video.data import sampling


def test_dense_train_span_and_random_start():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = sampling.dense_train(300, 8, 16, rng)
        assert np.diff(idx).tolist() == [16] * 7
        assert 0 <= idx[0] <= 300 - 128 and idx[-1] < 300
        starts.add(idx[0])
    assert min(starts) < 20 and max(starts) > 150  # the start covers the whole valid range


def test_dense_train_exact_fit_and_short_video():
    rng = np.random.default_rng(0)
    assert sampling.dense_train(128, 8, 16, rng) == list(range(0, 128, 16))
    assert sampling.dense_train(50, 8, 16, rng, "loop") == [0, 16, 32, 48, 14, 30, 46, 12]
    assert sampling.dense_train(50, 8, 16, rng, "clamp") == [0, 16, 32, 48, 49, 49, 49, 49]


def test_dense_test_clips_centred_in_their_share():
    # 300 frames, span 128: 173 valid starts in 3 shares of 57.67 -> starts 28, 86, 144 (mmaction SampleFrames)
    clips = sampling.dense_test(300, 8, 16, 3)
    assert [c[0] for c in clips] == [28, 86, 144]
    assert all(np.diff(c).tolist() == [16] * 7 for c in clips)
    assert sampling.dense_test(300, 8, 16, 1)[0][0] == 86  # one clip: the middle
    assert sampling.dense_test(40, 8, 16, 2, "clamp") == [[0, 16, 32, 39, 39, 39, 39, 39]] * 2


def test_uniform_train_one_frame_per_segment():
    rng = np.random.default_rng(1)
    seen = [set() for _ in range(8)]
    for _ in range(300):
        idx = sampling.uniform_train(80, 8, rng)
        for k, i in enumerate(idx):
            assert 10 * k <= i < 10 * (k + 1)
            seen[k].add(i)
    assert all(s == set(range(10 * k, 10 * k + 10)) for k, s in enumerate(seen))


def test_uniform_train_uneven_segments_stay_inside():
    rng = np.random.default_rng(2)
    for n in (9, 17, 31, 101):
        for _ in range(100):
            idx = sampling.uniform_train(n, 8, rng)
            bounds = np.arange(9) * n / 8
            assert all(bounds[k] <= i < bounds[k + 1] for k, i in enumerate(idx)), (n, idx)


def test_uniform_test_middle_and_multi_clip():
    assert sampling.uniform_test(80, 8) == [[5, 15, 25, 35, 45, 55, 65, 75]]
    two = sampling.uniform_test(80, 8, num_clips=2)
    assert two == [[2, 12, 22, 32, 42, 52, 62, 72], [7, 17, 27, 37, 47, 57, 67, 77]]


def test_uniform_short_video_loop_and_clamp():
    rng = np.random.default_rng(0)
    assert sampling.uniform_train(3, 8, rng, "loop") == [0, 1, 2, 0, 1, 2, 0, 1]
    assert sampling.uniform_train(3, 8, rng, "clamp") == [0, 0, 0, 1, 1, 1, 2, 2]
    assert sampling.uniform_test(1, 4, 1, "clamp") == [[0, 0, 0, 0]]


def test_every_index_in_range_for_any_length():
    rng = np.random.default_rng(3)
    for n in range(1, 200, 7):
        for mode in ("dense", "uniform"):
            for short in ("loop", "clamp"):
                idx = sampling.train_indices(n, mode, 8, 4, rng, short)
                assert len(idx) == 8 and all(0 <= i < n for i in idx)
                clips = sampling.test_indices(n, mode, 8, 4, 3, short)
                assert len(clips) == 3 and all(0 <= i < n for c in clips for i in c)


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="0 frames"):
        sampling.dense_train(0, 8, 16, rng)
    with pytest.raises(ValueError, match="short_video"):
        sampling.dense_train(10, 8, 16, rng, "wrap")
    with pytest.raises(ValueError, match="data.sampling"):
        sampling.train_indices(10, "tsn", 8, 16, rng)


def test_by_default_a_short_video_keeps_its_order_in_uniform_clips_and_loops_in_dense_ones():
    """A TSN clip of a 20-frame video looped back to frame 0 half-way (0..19, 0..11): on SSv2, whose classes are
    temporal directions, the clip said the opposite of the video. The authors' SampleFrames keeps the order."""
    rng = np.random.default_rng(0)
    (test,) = sampling.test_indices(20, "uniform", 32, 4, 1)
    assert test == sorted(test) and test[0] == 0 and test[-1] == 19
    train = sampling.train_indices(20, "uniform", 32, 4, rng)
    assert train == sorted(train) and set(train) == set(range(20))
    assert sampling.train_indices(20, "uniform", 32, 4, rng, "loop")[19:21] == [19, 0]  # loop when asked for
    (dense,) = sampling.test_indices(40, "dense", 8, 16, 1)
    assert any(b < a for a, b in zip(dense, dense[1:], strict=False))  # dense still loops by default


def test_uniform_train_draws_every_frame_of_an_uneven_segment():
    """17 frames in 8 segments: the first is [0, 2.125), frames 0, 1 and 2 (flooring its end never drew frame 2)."""
    rng = np.random.default_rng(0)
    assert {sampling.uniform_train(17, 8, rng)[0] for _ in range(300)} == {0, 1, 2}


def test_uniform_test_loops_only_a_short_video_and_shifts_each_clip():
    """short_video=loop: a long video still takes its segments' middles, and a short one's clips differ."""
    assert sampling.uniform_test(80, 8, 1, "loop") == [[5, 15, 25, 35, 45, 55, 65, 75]]
    assert sampling.uniform_test(3, 8, 2, "loop") == [[0, 1, 2, 0, 1, 2, 0, 1], [1, 2, 0, 1, 2, 0, 1, 2]]
