import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aim_video.config import Config
from aim_video.eval.metrics import compute_metrics
from aim_video.eval.multiview import (
    PROTOCOLS,
    MissingVideosError,
    apply_protocol,
    average_views,
    evaluate,
    forward_views,
    merge_rank_outputs,
    resolve_protocol,
)
from tests.eval.conftest import SyntheticViews, TinyClassifier, synthetic_loader

NUM_CLASSES = 5


def _cfg(average: str = "prob", clips: int = 2, crops: int = 3, view_chunk: int = 4) -> Config:
    cfg = Config()
    cfg.model.num_classes = cfg.data.num_classes = NUM_CLASSES
    cfg.data.test_num_clips, cfg.data.test_num_crops = clips, crops
    cfg.eval.average, cfg.eval.view_chunk = average, view_chunk
    return cfg


def test_average_views_hand_computed_both_modes():
    ln2, ln3 = math.log(2), math.log(3)
    # one video, two views: softmax([0, ln2, 0]) = [1/4, 1/2, 1/4]; softmax([ln3, 0, 0]) = [3/5, 1/5, 1/5]
    logits = torch.tensor([[[0.0, ln2, 0.0], [ln3, 0.0, 0.0]]])
    prob = average_views(logits, "prob")
    assert torch.allclose(prob, torch.tensor([[0.425, 0.35, 0.225]]), atol=1e-6)
    score = average_views(logits, "score")
    assert torch.allclose(score, torch.tensor([[ln3 / 2, ln2 / 2, 0.0]]), atol=1e-6)
    # the two modes can disagree: a confident view dominates the logit mean, not the probability mean
    logits = torch.tensor([[[0.0, 10.0, 0.0], [3.0, 0.0, 2.9]]])
    assert int(average_views(logits, "score").argmax()) == 1
    probs = [torch.tensor([0.0, 10.0, 0.0]).softmax(0), torch.tensor([3.0, 0.0, 2.9]).softmax(0)]
    assert torch.allclose(average_views(logits, "prob")[0], (probs[0] + probs[1]) / 2)
    with pytest.raises(ValueError, match="eval.average"):
        average_views(logits, "max")


def test_forward_views_chunks_bound_the_pass_and_keep_view_order():
    model = TinyClassifier(NUM_CLASSES)
    video = torch.randint(0, 256, (3, 6, 2, 3, 8, 8), dtype=torch.uint8)  # [B, V, T, C, H, W]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = forward_views(model, video, mean, std, view_chunk=4, device=torch.device("cpu"))
    assert out.shape == (3, 6, NUM_CLASSES)
    assert model.calls == [4, 4, 4, 4, 2]  # 18 views in passes of at most 4
    for b in range(3):
        for v in range(6):
            x = (video[b, v].float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
            assert torch.allclose(out[b, v], model(x[None])[0], atol=1e-5)


def test_protocol_presets_and_custom():
    assert (PROTOCOLS["k400"].num_clips, PROTOCOLS["k400"].num_crops) == (3, 1)
    assert (PROTOCOLS["ssv2"].num_clips, PROTOCOLS["ssv2"].num_crops) == (1, 3)
    assert (PROTOCOLS["diving48"].num_clips, PROTOCOLS["diving48"].num_crops) == (1, 1)
    cfg = _cfg(clips=4, crops=1)
    assert resolve_protocol(cfg).name == "custom" and resolve_protocol(cfg).num_views == 4
    cfg.eval.protocol = "ssv2"
    protocol = apply_protocol(cfg)
    assert (cfg.data.test_num_clips, cfg.data.test_num_crops, protocol.num_views) == (1, 3, 3)
    cfg.eval.protocol = "k700x"
    with pytest.raises(ValueError, match="k400, ssv2, diving48"):
        resolve_protocol(cfg)


def test_a_preset_that_overrides_views_set_on_purpose_says_so(caplog):
    """eval.protocol=k400 data.test_num_clips=5 ran 3 clips without a word."""
    cfg = _cfg(clips=5, crops=3)
    cfg.eval.protocol = "k400"
    with caplog.at_level("WARNING"):
        apply_protocol(cfg)
    assert (cfg.data.test_num_clips, cfg.data.test_num_crops) == (3, 1)
    assert "data.test_num_clips=5, data.test_num_crops=3 ignored" in caplog.text
    caplog.clear()
    cfg = _cfg(clips=3, crops=1)  # the schema's defaults, asked for on purpose all the same: ssv2 had said nothing
    cfg.eval.protocol = "ssv2"
    with caplog.at_level("WARNING"):
        apply_protocol(cfg)
    assert "data.test_num_clips=3, data.test_num_crops=1 ignored" in caplog.text
    caplog.clear()
    cfg = _cfg(clips=1, crops=3)  # what the preset sets anyway: nothing to say
    cfg.eval.protocol = "ssv2"
    with caplog.at_level("WARNING"):
        apply_protocol(cfg)
    assert caplog.text == ""


def _part(indices, labels, errors=()):
    idx = torch.tensor(indices, dtype=torch.long)
    return {"index": idx, "label": torch.tensor(labels), "scores": idx.float()[:, None].repeat(1, 2), "errors": errors}


def test_merge_drops_sampler_padding_and_checks_exactly_once():
    # 5 videos on 2 ranks: DistributedSampler gives rank0 [0, 2, 4], rank1 [1, 3, 0] (0 repeated as padding)
    parts = [_part([0, 2, 4], [0, 0, 0]), _part([1, 3, 0], [1, 1, 0])]
    merged = merge_rank_outputs(parts, dataset_size=5, world_size=2)
    assert merged["index"].tolist() == [0, 1, 2, 3, 4] and merged["num_repeats_dropped"] == 1
    assert merged["scores"][:, 0].tolist() == [0, 1, 2, 3, 4] and merged["missing"] == []
    # an unreadable video, also hit again as padding, is listed once
    parts = [_part([2, 4], [0, 0], [(0, "a.mp4", "bad")]), _part([1, 3], [1, 1], [(0, "a.mp4", "bad")])]
    merged = merge_rank_outputs(parts, dataset_size=5, world_size=2)
    assert merged["missing"] == [{"index": 0, "path": "a.mp4", "reason": "bad"}] and merged["num_repeats_dropped"] == 1
    with pytest.raises(RuntimeError, match=r"never seen \[4\]"):
        merge_rank_outputs([_part([0, 2], [0, 0]), _part([1, 3], [1, 1])], dataset_size=5, world_size=2)
    with pytest.raises(RuntimeError, match="own shard"):  # both ranks ran the whole split
        merge_rank_outputs([_part([0, 1, 2], [0, 0, 0]), _part([0, 1, 2], [0, 0, 0])], dataset_size=3, world_size=2)
    with pytest.raises(RuntimeError, match="different labels"):
        merge_rank_outputs([_part([0, 1], [0, 1]), _part([1], [2])], dataset_size=2, world_size=2)


@pytest.mark.parametrize("average", ["prob", "score"])
def test_evaluate_matches_per_video_hand_computation_and_lists_missing(average):
    cfg = _cfg(average)
    dataset = SyntheticViews(size=9, num_views=6, num_classes=NUM_CLASSES, broken=(4,), fell_back=(7, 2))
    model = TinyClassifier(NUM_CLASSES)
    result = evaluate(model, synthetic_loader(dataset, batch_size=2), cfg, "cpu", progress=False, return_scores=True)

    assert result["missing"] == [{"index": 4, "path": "videos/004.mp4", "reason": "cannot decode: moov atom not found"}]
    why = "read with pyav: decord cannot decode its av1 video"
    assert result["num_fallback_reads"] == 2 and result["fallback_reads"] == [
        {"index": 2, "path": "videos/002.mp4", "reason": why}, {"index": 7, "path": "videos/007.mp4", "reason": why}
    ]  # fmt: skip
    assert result["num_evaluated"] == 8 and result["num_missing"] == 1 and result["dataset_size"] == 9
    preds = result["scores"]
    assert preds["index"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]  # the broken video is not substituted
    expected = []
    for i in preds["index"].tolist():
        item = dataset[i]
        x = (item["video"].float() / 255 - torch.tensor(cfg.data.mean).view(3, 1, 1)) / torch.tensor(cfg.data.std).view(
            3, 1, 1
        )
        logits = model(x)  # [V, K]: each view on its own
        expected.append(logits.softmax(-1).mean(0) if average == "prob" else logits.mean(0))
    assert torch.allclose(preds["scores"], torch.stack(expected), atol=1e-5)
    reference = compute_metrics(torch.stack(expected), preds["label"], NUM_CLASSES)
    assert result["top1"] == pytest.approx(100 * reference["top1"])
    assert result["mean_class_acc"] == pytest.approx(100 * reference["mean_class_accuracy"])
    assert torch.equal(result["confusion_matrix"], reference["confusion_matrix"])
    argmax = torch.stack(expected).argmax(1).tolist()
    assert result["per_video"] == [
        {"index": i, "label": y, "pred": p}
        for i, y, p in zip(preds["index"].tolist(), preds["label"].tolist(), argmax, strict=True)
    ]
    json.dumps({k: v for k, v in result.items() if k not in ("scores", "confusion_matrix")})  # a log can store it
    assert result["protocol"]["label"] == "8x2x3" and result["protocol"]["average"] == average


def test_strict_makes_missing_videos_fatal():
    cfg = _cfg()
    cfg.eval.strict = True
    dataset = SyntheticViews(size=3, num_views=6, num_classes=NUM_CLASSES, broken=(1,))
    with pytest.raises(MissingVideosError, match="videos/001.mp4: cannot decode"):
        evaluate(
            TinyClassifier(NUM_CLASSES), synthetic_loader(dataset, 2), cfg, "cpu", progress=False, return_scores=True
        )


def test_wrong_view_count_is_named():
    cfg = _cfg(clips=3, crops=1)
    dataset = SyntheticViews(size=2, num_views=6, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"expected \[B, 3, T, C, H, W\]"):
        evaluate(
            TinyClassifier(NUM_CLASSES), synthetic_loader(dataset, 2), cfg, "cpu", progress=False, return_scores=True
        )


SIZE, BROKEN = 11, (3, 10)  # odd size: the sampler pads rank 1 with video 0


def _two_rank_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = SyntheticViews(size=SIZE, num_views=6, num_classes=NUM_CLASSES, broken=BROKEN)
        loader = synthetic_loader(dataset, batch_size=1, rank=rank, world_size=world_size)
        result = evaluate(TinyClassifier(NUM_CLASSES), loader, _cfg(), "cpu", progress=False, return_scores=True)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~30 s on the shared 2-core machine: two spawned processes import torch
def test_two_ranks_count_each_video_once_and_equal_one_rank(tmp_path):
    dataset = SyntheticViews(size=SIZE, num_views=6, num_classes=NUM_CLASSES, broken=BROKEN)
    single = evaluate(
        TinyClassifier(NUM_CLASSES), synthetic_loader(dataset, 1), _cfg(), "cpu", progress=False, return_scores=True
    )
    mp.spawn(_two_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        multi = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert multi["world_size"] == 2 and multi["num_repeats_dropped"] == 1
        assert multi["scores"]["index"].tolist() == [i for i in range(SIZE) if i not in BROKEN]
        assert [m["index"] for m in multi["missing"]] == list(BROKEN)
        assert torch.equal(multi["scores"]["scores"], single["scores"]["scores"])
        for key in ("top1", "top5", "mean_class_acc", "per_video", "num_evaluated"):
            assert multi[key] == single[key], key
        assert torch.equal(multi["confusion_matrix"], single["confusion_matrix"])


def test_bf16_model_gets_bf16_inputs_on_its_own_device():
    # DeepSpeed's engine.module holds bf16 weights: evaluate must feed it bf16 and find its device by itself
    cfg = _cfg()
    dataset = SyntheticViews(size=3, num_views=6, num_classes=NUM_CLASSES)
    model = TinyClassifier(NUM_CLASSES).to(torch.bfloat16)
    result = evaluate(model, synthetic_loader(dataset, 2), cfg, progress=False, return_scores=True)
    assert result["scores"]["scores"].dtype == torch.float32 and result["num_evaluated"] == 3
    reference = evaluate(
        TinyClassifier(NUM_CLASSES), synthetic_loader(dataset, 2), cfg, progress=False, return_scores=True
    )
    assert torch.allclose(result["scores"]["scores"], reference["scores"]["scores"], atol=0.05)


def _rank_output(indices: list[int]) -> dict:
    n = len(indices)
    return {"index": torch.tensor(indices), "label": torch.zeros(n, dtype=torch.long), "scores": torch.zeros(n, 2),
            "errors": []}  # fmt: skip


def test_merge_refuses_an_index_past_the_split_and_more_repeats_than_ranks_pad():
    """A sampler pads at most world_size - 1 repeated videos and gives indices below the split's size: the edges
    of both checks moved by one passed the tests."""
    with pytest.raises(RuntimeError, match=r"outside the split \[2\]"):
        merge_rank_outputs([_rank_output([0, 1, 2])], 2, 1)
    with pytest.raises(RuntimeError, match="2 repeated videos"):
        merge_rank_outputs([_rank_output([0, 1, 2]), _rank_output([0, 1])], 3, 2)


def test_inference_precision_follows_the_training_precision_on_cuda():
    """bf16 and fp16 swapped passed the tests (the mapping runs on CUDA only, but needs no GPU to check)."""
    from aim_video.config import load_config
    from aim_video.eval.multiview import inference_precision

    for precision, autocast in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)):
        cfg = load_config(None, [f"train.precision={precision}"])
        assert inference_precision(torch.nn.Linear(2, 2), cfg, torch.device("cuda")) == (autocast, torch.float32)
