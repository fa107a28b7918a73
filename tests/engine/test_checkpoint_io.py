"""Checkpoint round trips through a real DeepSpeed engine in this process (a world of one, gloo)."""

import errno
import json
import os
import shutil

import pytest
import torch

from aim_video.config import ConfigError, load_config
from aim_video.engine.checkpoint_io import CheckpointError, CheckpointManager, read_meta
from aim_video.engine.deepspeed_setup import build_engine, derive_ds_config
from aim_video.engine.distributed import init_distributed, rng_state, set_rng_state
from aim_video.models.trainable_io import read_trainable
from tests.engine.conftest import TinyAdapted

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _engine(cfg, seed):
    """Trainable weights drawn from `seed`; the frozen backbone is always the same (as if loaded from a file)."""
    torch.manual_seed(0)
    backbone = TinyAdapted().backbone.state_dict()
    torch.manual_seed(seed)
    model = TinyAdapted()
    model.backbone.load_state_dict(backbone)
    engine, _ = build_engine(cfg, model, steps_per_epoch=10, world_size=1, ds_config=derive_ds_config(cfg, 1))
    return engine


def _step(engine, gen):
    x = torch.randn(2, 4, 8, generator=gen)
    y = torch.randint(0, 3, (2,), generator=gen)
    loss = torch.nn.functional.cross_entropy(engine(x.to(engine.device)), y.to(engine.device))
    engine.backward(loss)
    engine.step()
    return loss.item()


@pytest.mark.parametrize("zero_stage,regroup", [(0, False), (1, False), (1, True), (2, True)])
def test_resume_reproduces_the_next_steps_exactly(world, tmp_path, zero_stage, regroup):
    """regroup: the checkpoint's meta says 2 ranks saved it, so the load deals optimizer.safetensors out to this
    world's partition instead of loading DeepSpeed's shards (the path of a resume under another number of ranks)."""
    cfg = load_config(
        None,
        [
            "train.precision=fp32",
            f"train.zero_stage={zero_stage}",
            "data.batch_size=2",
            "train.warmup_epochs=0.2",
            "train.epochs=1",
            "train.lr=0.05",
        ],
    )
    engine = _engine(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        _step(engine, gen)
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    gen_state = gen.get_state()
    saved_rng = rng_state()
    path = manager.save(engine, cfg, step=2, epoch=0, batches_done=2)
    if regroup:
        meta_path = os.path.join(path, "meta.json")
        saved = json.load(open(meta_path))
        json.dump({**saved, "world_size": 2}, open(meta_path, "w"))
    after = [_step(engine, gen) for _ in range(3)]
    lr_after = engine.lr_scheduler.get_last_lr()
    head_after = engine.module.head.weight.detach().clone()

    fresh = _engine(cfg, seed=123)  # other initial weights: everything must come from the checkpoint
    assert not torch.equal(fresh.module.head.weight, engine.module.head.weight)
    meta = manager.load(fresh, manager.resolve_resume("auto"), cfg)
    set_rng_state(meta["rng"])
    assert (meta["step"], meta["epoch"], meta["batches_done"]) == (2, 0, 2)
    assert torch.equal(meta["rng"]["torch"], saved_rng["torch"])
    assert fresh.global_steps == 2
    gen.set_state(gen_state)
    again = [_step(fresh, gen) for _ in range(3)]
    assert again == after
    assert fresh.lr_scheduler.get_last_lr() == lr_after
    assert torch.equal(fresh.module.head.weight, head_after)
    assert os.path.basename(path) == "step_00000002"


def _bf16_step(engine, gen):
    x = torch.randn(2, 4, 8, generator=gen).to(engine.device, torch.bfloat16)
    y = torch.randint(0, 3, (2,), generator=gen).to(engine.device)
    loss = torch.nn.functional.cross_entropy(engine(x).float(), y)
    engine.backward(loss)
    engine.step()
    return loss.item()


@pytest.mark.parametrize(
    "zero_stage,regroup,saved_with,resumed_with",
    [(1, False, "fp32", "fp32"), (1, True, "fp32", "fp32"), (2, True, "fp32", "fp32"), (1, False, "model", "fp32"),
     (1, False, "fp32", "model")],
)  # fmt: skip
def test_bf16_with_fp32_gradient_sums_resumes_exactly_and_either_way(
    world, tmp_path, zero_stage, regroup, saved_with, resumed_with
):
    """train.grad_accum_dtype=fp32: DeepSpeed's BF16_Optimizer at ZeRO 1, fp32 gradient partitions at ZeRO 2. The
    next steps after a resume are the uninterrupted run's, under another number of ranks too, and a run may switch
    between bf16 and fp32 sums at a resume (DeepSpeed loads either optimizer's checkpoint into the other): the same
    weights and first loss, then steps that differ by the sums' rounding only."""
    def config(accumulation):
        return load_config(None, [
            "train.precision=bf16", f"train.zero_stage={zero_stage}", f"train.grad_accum_dtype={accumulation}",
            "data.batch_size=2", "train.grad_accum_steps=2", "train.warmup_epochs=0.2", "train.epochs=1",
            "train.lr=0.05",
        ])  # fmt: skip

    saved_cfg, resumed_cfg = config(saved_with), config(resumed_with)
    engine = _engine(saved_cfg, seed=0)
    expected = "BF16_Optimizer" if saved_with == "fp32" and zero_stage == 1 else "DeepSpeedZeroOptimizer"
    assert type(engine.optimizer).__name__ == expected
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):  # 2 optimizer steps of 2 micro-batches
        _bf16_step(engine, gen)
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    gen_state = gen.get_state()
    path = manager.save(engine, saved_cfg, step=2, epoch=0, batches_done=4)
    saved_head = engine.module.head.weight.detach().clone()
    if regroup:
        meta_path = os.path.join(path, "meta.json")
        json.dump({**json.load(open(meta_path)), "world_size": 2}, open(meta_path, "w"))
    after = [_bf16_step(engine, gen) for _ in range(4)]
    fresh = _engine(resumed_cfg, seed=123)
    manager.load(fresh, manager.resolve_resume("auto"), resumed_cfg)
    assert torch.equal(fresh.module.head.weight, saved_head)
    gen.set_state(gen_state)
    again = [_bf16_step(fresh, gen) for _ in range(4)]
    if saved_with == resumed_with:
        assert again == after and torch.equal(fresh.module.head.weight, engine.module.head.weight)
    else:  # the first loss comes before any step; fp32 communication keeps digits the bf16 one rounds away
        assert again[0] == after[0] and again == pytest.approx(after, rel=1e-2)


def test_layout_pointer_pruning_and_best(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    gen = torch.Generator().manual_seed(1)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=2, rank=0, world_size=1)
    for step, metric in zip(range(1, 6), [0.1, 0.9, 0.3, 0.4, 0.2], strict=True):
        _step(engine, gen)
        manager.save(engine, cfg, step=step, epoch=step - 1, batches_done=1, metric=metric)
    names = sorted(os.listdir(root))
    assert names == ["best.json", "latest", "step_00000002", "step_00000004", "step_00000005"]
    assert open(os.path.join(root, "latest")).read() == "step_00000005"
    assert json.load(open(os.path.join(root, "best.json"))) == {"name": "step_00000002", "metric": 0.9}
    tensors, meta = read_trainable(os.path.join(root, "step_00000005", "trainable.safetensors"))
    assert sorted(tensors) == sorted(engine.module.trainable_parameter_names())
    assert meta["step"] == "5"
    ds_files = os.listdir(os.path.join(root, "step_00000005", "deepspeed"))
    states = torch.load(
        os.path.join(root, "step_00000005", "deepspeed", "mp_rank_00_model_states.pt"), weights_only=False
    )
    assert "backbone.weight" not in states["module"], ds_files  # the frozen backbone is not saved
    assert "head.weight" in states["module"]
    # a new run started without --resume in this folder: best.json and pruning mixed the earlier run's saves with its
    # own (its best was the earlier run's step 2), and --resume auto after a stop went on with the earlier run
    with pytest.raises(ConfigError, match=r"holds the checkpoints of an earlier run \(the latest: step_00000005\)"):
        CheckpointManager(root, keep_last=2, rank=0, world_size=1).resolve_resume("")
    assert CheckpointManager(str(tmp_path / "new"), keep_last=2, rank=0, world_size=1).resolve_resume("") is None
    # resumed from another run's checkpoint into this folder: the same mix (and the same command run again after a
    # stop started over from the other run's checkpoint, losing what was trained here); this folder's own resume
    other = CheckpointManager(str(tmp_path / "other"), keep_last=2, rank=0, world_size=1)
    elsewhere = other.save(engine, cfg, step=1, epoch=0, batches_done=1)
    here = CheckpointManager(root, keep_last=2, rank=0, world_size=1)
    with pytest.raises(ConfigError, match=r"--resume .*other.*step_00000001: .* holds checkpoints of its own \(the "
                       r"latest: step_00000005\).* --resume auto"):  # fmt: skip
        here.resolve_resume(elsewhere)
    assert here.resolve_resume(os.path.join(root, "step_00000005")) == os.path.join(root, "step_00000005")
    assert other.resolve_resume(elsewhere) == elsewhere
    assert CheckpointManager(str(tmp_path / "new"), 2, 0, 1).resolve_resume(elsewhere) == elsewhere


def test_a_metric_recorded_after_a_pending_save_updates_best_and_prunes(world, tmp_path):
    """The epoch's save before its evaluation pruned while best.json still named the earlier best, which it kept; the
    metric written after made the new one best and nothing pruned the old one again (for good after the last epoch)."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=1, rank=0, world_size=1)
    manager.save(engine, cfg, step=1, epoch=0, batches_done=1, metric=50.0)
    manager.save(engine, cfg, step=2, epoch=1, batches_done=1, extra={"epoch_end_pending": True})
    assert sorted(os.listdir(root)) == ["best.json", "latest", "step_00000001", "step_00000002"]  # 1 is best yet
    manager.record_metric(os.path.join(root, "step_00000002"), 60.0)
    assert sorted(os.listdir(root)) == ["best.json", "latest", "step_00000002"]
    assert json.load(open(os.path.join(root, "best.json"))) == {"name": "step_00000002", "metric": 60.0}
    meta = read_meta(os.path.join(root, "step_00000002"))
    assert (meta["metric"], meta["epoch_end_pending"]) == (60.0, False)


def test_a_metric_recorded_into_a_resumed_older_checkpoint_makes_it_the_latest(world, tmp_path):
    """Resumed explicitly from an older pending checkpoint, its evaluation was written but `latest` kept naming the
    abandoned newer save: a kill before the next save made --resume auto go on with the abandoned run. A folder of
    the output folder that is not one of its checkpoints (a copy named by hand) is not one to write into: the run
    saves its own (record_metric wrote into `step_{step}`, which need not exist)."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=2, rank=0, world_size=1)
    older = manager.save(engine, cfg, step=2, epoch=0, batches_done=2, extra={"epoch_end_pending": True})
    manager.save(engine, cfg, step=4, epoch=1, batches_done=2, metric=30.0)  # the run that is abandoned
    assert manager.holds(older) and manager.holds(older + "/") and not manager.holds(str(tmp_path / "step_00000002"))
    manager.record_metric(older, 20.0)
    assert open(os.path.join(root, "latest")).read().strip() == "step_00000002" and manager.latest() == older
    assert (read_meta(older)["metric"], read_meta(older)["epoch_end_pending"]) == (20.0, False)
    manager.save(engine, cfg, step=3, epoch=1, batches_done=1)  # the resumed run goes on: keep_last keeps its saves
    assert sorted(n for n in os.listdir(root) if n.startswith("step_")) == ["step_00000002", "step_00000003",
                                                                             "step_00000004"]  # 4: still the best
    shutil.copytree(older, os.path.join(root, "chosen"))
    assert not manager.holds(os.path.join(root, "chosen"))


def test_after_a_resume_from_an_earlier_checkpoint_keep_last_keeps_the_new_saves(world, tmp_path):
    """keep_last counts saves, not steps: resumed from step 2 with steps 4 and 5 on disk, the save at step 3 is the
    newest and stays (ranked by step it was deleted right after `latest` was pointed at it)."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=2, rank=0, world_size=1)
    for step in (2, 4, 5):
        manager.save(engine, cfg, step=step, epoch=0, batches_done=step)
    assert sorted(n for n in os.listdir(root) if n.startswith("step_")) == ["step_00000004", "step_00000005"]
    manager.save(engine, cfg, step=3, epoch=0, batches_done=3)  # the resumed run's first save
    assert sorted(n for n in os.listdir(root) if n.startswith("step_")) == ["step_00000003", "step_00000005"]
    assert manager.latest().endswith("step_00000003") and manager.resolve_resume("auto").endswith("step_00000003")
    os.remove(os.path.join(root, "latest"))  # without the pointer: the last save, not the highest step
    assert manager.latest().endswith("step_00000003")


def test_interrupted_save_is_ignored_and_cleaned(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=3, rank=0, world_size=1)
    manager.save(engine, cfg, step=1, epoch=0, batches_done=1)
    os.makedirs(os.path.join(root, ".tmp-step_00000002", "deepspeed"))  # what a kill during a save leaves
    os.makedirs(os.path.join(root, "step_00000003"))  # a folder without meta.json is never taken
    assert manager.resolve_resume("auto").endswith("step_00000001")
    CheckpointManager(root, keep_last=3, rank=0, world_size=1)
    assert not os.path.exists(os.path.join(root, ".tmp-step_00000002"))
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        manager.resolve_resume(os.path.join(root, "step_00000003"))
    with pytest.raises(ConfigError, match="no such checkpoint"):  # bad input: exit status 2
        manager.resolve_resume(os.path.join(root, "step_00000009"))
    assert CheckpointManager(str(tmp_path / "empty"), 2, 0, 1).resolve_resume("auto") is None


def test_mismatched_checkpoint_is_refused(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(engine, cfg, step=1, epoch=0, batches_done=1)
    other = load_config(None, ["train.precision=fp32", "data.batch_size=2", "model.adapter_ratio=0.5"])
    with pytest.raises(CheckpointError, match="model.adapter_ratio=0.25"):
        manager.load(_engine(other, seed=0), path, other)
    fewer = _engine(cfg, seed=0)
    fewer.module.norm.requires_grad_(False)
    fewer.module.trainable_parameter_names = lambda: ["head.weight", "head.bias"]
    with pytest.raises(CheckpointError, match="trainable set differs"):
        manager.load(fewer, path, cfg)
    # another frame count: DeepSpeed's load failed on the temporal embedding's shape, reported as a damaged checkpoint
    more_frames = load_config(None, ["train.precision=fp32", "data.batch_size=2", "data.num_frames=16"])
    longer = TinyAdapted()
    longer.temporal_embedding = torch.nn.Parameter(torch.zeros(1, 8, 8))
    engine, _ = build_engine(more_frames, longer, 10, 1, derive_ds_config(more_frames, 1))
    with pytest.raises(CheckpointError) as err:
        manager.load(engine, path, more_frames)
    assert "temporal_embedding [1, 4, 8] (this model: [1, 8, 8]) since data.num_frames=8 (now 16)" in str(err.value)
    assert "damaged" not in str(err.value) and "model.init_trainable" in str(err.value)


def test_a_checkpoint_refuses_another_frozen_backbone(world, tmp_path):
    """A checkpoint holds the trainable weights only: resuming on other backbone weights (model.pretrained changed
    or forgotten, so the backbone stays random) would go on training silently on the wrong features."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2", "model.pretrained=/weights/clip.pt"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(_engine(cfg, seed=0), cfg, step=1, epoch=0, batches_done=1)
    assert manager.load(_engine(cfg, seed=5), path, cfg)["step"] == 1  # the same backbone: fine
    forgot = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    other = _engine(forgot, seed=0)
    with torch.no_grad():
        other.module.backbone.weight.normal_()  # e.g. the random init a missing model.pretrained leaves
    with pytest.raises(CheckpointError, match=r"other frozen backbone weights .*was '/weights/clip.pt', now ''"):
        manager.load(other, path, forgot)
    low = _engine(cfg, seed=0)
    with torch.no_grad():
        low.module.backbone.weight.copy_(low.module.backbone.weight.bfloat16().float())  # bf16-rounded: the same
    assert manager.load(low, path, cfg)["step"] == 1


def test_a_run_saved_before_model_random_backbone_existed_resumes_with_it(world, tmp_path):
    """Runs on an empty model.pretrained saved no model.random_backbone (read as false): training now asks for the key
    on such a run, and the resume refused it as another model config."""
    old = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(_engine(old, seed=0), old, step=1, epoch=0, batches_done=1)
    now = load_config(None, ["train.precision=fp32", "data.batch_size=2", "model.random_backbone=true"])
    assert manager.load(_engine(now, seed=0), path, now)["step"] == 1


def test_a_changed_lr_is_refused_on_resume_since_the_restored_states_would_keep_the_old(world, tmp_path, capsys):
    """The user saw 'peak_lr: 1e-06' logged at the start while the steps ran on the saved 2e-3 schedule."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2", "train.lr=0.002"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(_engine(cfg, seed=0), cfg, step=1, epoch=0, batches_done=1)
    lower = load_config(None, ["train.precision=fp32", "data.batch_size=2", "train.lr=1e-6", "train.weight_decay=0"])
    kept = r"saved with train.lr=0.002, train.weight_decay=0.05 \(this run: 1e-06, 0.0\)"
    with pytest.raises(CheckpointError, match=kept):
        manager.load(_engine(lower, seed=0), path, lower)
    longer = load_config(None, ["train.precision=fp32", "data.batch_size=2", "train.lr=0.002", "train.epochs=60"])
    meta = manager.load(_engine(longer, seed=0), path, longer)  # a longer schedule does take effect
    assert meta["step"] == 1 and meta["batch_size"] == 2
    assert "warning: train.epochs 30 -> 60 since the checkpoint: the warmup + cosine schedule is recomputed" in (
        capsys.readouterr().err
    )


def test_best_follows_a_checkpoint_saved_again_at_the_same_step(world, tmp_path):
    """After a resume a step can be saved again with other weights and no metric: best.json kept naming it with
    the old metric."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=3, rank=0, world_size=1)
    manager.save(engine, cfg, step=1, epoch=0, batches_done=1, metric=40.0)
    manager.save(engine, cfg, step=2, epoch=1, batches_done=1, metric=48.6)
    assert manager.best() == {"name": "step_00000002", "metric": 48.6}
    manager.save(engine, cfg, step=2, epoch=1, batches_done=1)  # saved again, not evaluated
    assert manager.best() == {"name": "step_00000001", "metric": 40.0}
    manager.save(engine, cfg, step=1, epoch=0, batches_done=1, metric=None)
    assert manager.best() is None and not os.path.exists(os.path.join(root, "best.json"))


def test_an_evaluation_that_read_no_video_never_becomes_the_best(world, tmp_path):
    """Its top-1 is NaN, and max() never moved past a NaN that came first: best.json named it for the whole run."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=3, rank=0, world_size=1)
    manager.save(engine, cfg, step=1, epoch=0, batches_done=1, metric=float("nan"))
    assert manager.best() is None
    manager.save(engine, cfg, step=2, epoch=1, batches_done=1, metric=61.5)
    manager.save(engine, cfg, step=3, epoch=2, batches_done=1, metric=70.0)
    assert manager.best() == {"name": "step_00000003", "metric": 70.0}


def test_a_damaged_checkpoint_is_named_with_the_older_one_to_resume_from(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=3, rank=0, world_size=1)
    engine = _engine(cfg, seed=0)
    older = manager.save(engine, cfg, step=1, epoch=0, batches_done=1)
    path = manager.save(engine, cfg, step=2, epoch=0, batches_done=2)
    weights = os.path.join(path, "trainable.safetensors")
    os.truncate(weights, 100)
    with pytest.raises(CheckpointError, match=rf"trainable.safetensors cannot be read .*--resume {older}\)"):
        manager.load(_engine(cfg, seed=0), path, cfg)
    manager.save(engine, cfg, step=2, epoch=0, batches_done=2)
    states = os.path.join(path, "deepspeed", "mp_rank_00_model_states.pt")
    os.truncate(states, os.path.getsize(states) // 2)
    with pytest.raises(CheckpointError, match=r"its deepspeed/ cannot be read .*the checkpoint is damaged"):
        manager.load(_engine(cfg, seed=0), path, cfg)


def test_the_class_names_travel_with_the_weights(world, tmp_path):
    from aim_video.models.trainable_io import read_metadata

    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    manager.classes = ["zumba", "abseiling", "yoga"]
    path = manager.save(_engine(cfg, seed=0), cfg, step=1, epoch=0, batches_done=1)
    assert json.loads(read_metadata(os.path.join(path, "trainable.safetensors"))["classes"]) == manager.classes


def test_without_elastic_checkpoints_another_number_of_ranks_is_refused_naming_the_key(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "train.zero_stage=1", "train.elastic_checkpoints=false"])
    engine = _engine(cfg, seed=0)
    _step(engine, torch.Generator().manual_seed(1))
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(engine, cfg, step=1, epoch=0, batches_done=1)
    assert not os.path.exists(os.path.join(path, "optimizer.safetensors"))
    meta_path = os.path.join(path, "meta.json")
    json.dump({**json.load(open(meta_path)), "world_size": 2}, open(meta_path, "w"))
    with pytest.raises(CheckpointError, match=r"saved by 2 ranks .*\(train.elastic_checkpoints=false.*with 2 ranks"):
        manager.load(_engine(cfg, seed=1), path, cfg)


def test_another_zero_stage_resumes_through_the_whole_state_and_no_zero_is_refused(world, tmp_path):
    """ZeRO 1 -> 2 deals optimizer.safetensors out (DeepSpeed's shards fit their own layout only) and goes on
    exactly; 1 -> 0 keeps the state whole in another format: refused, naming the key."""
    base = ["train.precision=fp32", "data.batch_size=2", "train.epochs=1", "train.lr=0.05"]
    cfg = load_config(None, [*base, "train.zero_stage=1"])
    engine, gen = _engine(cfg, seed=0), torch.Generator().manual_seed(1)
    for _ in range(2):
        _step(engine, gen)
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(engine, cfg, step=2, epoch=0, batches_done=2)
    state = gen.get_state()
    after = [_step(engine, gen) for _ in range(2)]
    stage2 = load_config(None, [*base, "train.zero_stage=2"])
    fresh = _engine(stage2, seed=5)
    manager.load(fresh, path, stage2)
    gen.set_state(state)
    assert [_step(fresh, gen) for _ in range(2)] == after
    with pytest.raises(CheckpointError, match="saved with train.zero_stage=1, this run has 0"):
        no_zero = load_config(None, [*base, "train.zero_stage=0"])
        manager.load(_engine(no_zero, seed=5), path, no_zero)


def test_another_precision_is_refused_naming_the_key_not_called_damaged(world, tmp_path):
    """fp32 -> bf16: DeepSpeed's bf16 optimizer found no 'param_groups' in the fp32 state and the checkpoint was
    called damaged, with the advice to delete it."""
    fp32 = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    engine = _engine(fp32, seed=0)
    _step(engine, torch.Generator().manual_seed(1))
    path = manager.save(engine, fp32, step=1, epoch=0, batches_done=1)
    assert json.load(open(os.path.join(path, "meta.json")))["precision"] == "fp32"
    bf16 = load_config(None, ["train.precision=bf16", "data.batch_size=2"])
    with pytest.raises(CheckpointError, match=r"saved with train.precision=fp32, this run has bf16") as err:
        manager.load(_engine(bf16, seed=0), path, bf16)
    assert "damaged" not in str(err.value) and "Resume with train.precision=fp32" in str(err.value)


def test_a_mixed_precision_checkpoint_without_zero_says_it_cannot_be_resumed(world, tmp_path):
    """Saved by an earlier version with its defaults (bf16, ZeRO 0): resuming with the new default stage said "Resume
    with train.zero_stage=0", which the engine now refuses under bf16, whose fix was a precision the checkpoint
    refuses: a circle. One message now says it cannot be resumed and what to do instead."""
    fp32 = load_config(None, ["train.precision=fp32", "data.batch_size=2", "train.zero_stage=0"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(_engine(fp32, seed=0), fp32, step=1, epoch=0, batches_done=1)
    meta = json.load(open(os.path.join(path, "meta.json")))
    with open(os.path.join(path, "meta.json"), "w") as f:  # as the old default wrote it
        json.dump({**meta, "precision": "bf16", "zero_stage": 0}, f)
    bf16 = load_config(None, ["train.precision=bf16", "data.batch_size=2"])
    with pytest.raises(CheckpointError, match=r"precision=bf16 and train.zero_stage=0, .* it cannot be resumed"):
        manager.load(_engine(bf16, seed=0), path, bf16)


def test_another_temporal_attention_resumes_since_it_computes_the_same_model(world, tmp_path):
    """model.temporal_attention picks the kernel, not the model (tests/models compare outputs and gradients): like
    model.compile it may change on resume; another adapter setting may not."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    manager = CheckpointManager(str(tmp_path / "ckpt"), keep_last=2, rank=0, world_size=1)
    path = manager.save(_engine(cfg, seed=0), cfg, step=1, epoch=0, batches_done=1)
    matmul = load_config(None, ["train.precision=fp32", "data.batch_size=2", "model.temporal_attention=matmul"])
    assert manager.load(_engine(matmul, seed=1), path, matmul)["step"] == 1
    other = load_config(None, ["train.precision=fp32", "data.batch_size=2", "model.num_temporal_adapters=2"])
    with pytest.raises(CheckpointError, match="model.num_temporal_adapters=1"):
        manager.load(_engine(other, seed=1), path, other)


def test_a_save_again_at_the_same_step_keeps_the_old_one_until_the_new_one_is_in_place(world, tmp_path, monkeypatch):
    """It deleted the old folder, then renamed the new one into place: killed in between (here: the rename fails),
    the next start removed the new one as an interrupted save and, with keep_last=1, --resume auto started from 0."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=1, rank=0, world_size=1)
    engine = _engine(cfg, seed=0)
    first = manager.save(engine, cfg, step=3, epoch=0, batches_done=3, metric=1.0)
    rename = os.rename

    def killed_before_the_new_one_is_renamed(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise KeyboardInterrupt("killed")  # nothing in the save catches it, as nothing survives a SIGKILL
        rename(src, dst)

    monkeypatch.setattr(os, "rename", killed_before_the_new_one_is_renamed)
    with pytest.raises(KeyboardInterrupt):
        manager.save(engine, cfg, step=3, epoch=0, batches_done=3, metric=2.0)
    monkeypatch.setattr(os, "rename", rename)
    assert not os.path.exists(first)  # moved aside, not deleted
    restarted = CheckpointManager(root, keep_last=1, rank=0, world_size=1)  # the next start puts it back
    assert sorted(os.listdir(root)) == ["best.json", "latest", "step_00000003"]
    assert restarted.resolve_resume("auto") == first and read_meta(first)["metric"] == 1.0
    manager.save(engine, cfg, step=3, epoch=0, batches_done=3, metric=2.0)  # a save that goes through: no old copy left
    assert sorted(os.listdir(root)) == ["best.json", "latest", "step_00000003"] and manager.best()["metric"] == 2.0
    os.makedirs(os.path.join(root, ".old-step_00000003", "deepspeed"))  # killed after the new one was in place
    CheckpointManager(root, keep_last=1, rank=0, world_size=1)
    assert sorted(os.listdir(root)) == ["best.json", "latest", "step_00000003"]
    assert read_meta(first)["metric"] == 2.0


def test_resume_auto_refuses_to_start_anew_when_latest_names_checkpoints_that_are_gone(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=1, rank=0, world_size=1)
    path = manager.save(_engine(cfg, seed=0), cfg, step=2, epoch=0, batches_done=2)
    os.remove(os.path.join(path, "meta.json"))  # e.g. deleted by hand, or a copy cut short
    with pytest.raises(CheckpointError, match=r"latest names 'step_00000002', but no complete checkpoint is left"):
        manager.resolve_resume("auto")
    os.remove(os.path.join(root, "latest"))  # the user says: start anew
    assert manager.resolve_resume("auto") is None


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8384 vs 8278"),  # torch's zip writer
        RuntimeError("basic_ios::clear: iostream error"),  # torch's zip writer, at the end of the file
        OSError(errno.ENOSPC, "No space left on device"),  # the rest (all three seen on a full tmpfs)
    ],
)
def test_a_full_disk_during_a_save_is_one_error_naming_the_folder(world, tmp_path, error):
    """It was a traceback (torch's zip writer) or the bad-input exit status 2 (OSError): now a CheckpointError,
    which tools/train.py reports in one line with exit status 1."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=2, rank=0, world_size=1)
    engine = _engine(cfg, seed=0)
    previous = manager.save(engine, cfg, step=1, epoch=0, batches_done=1)

    def fails(*args, **kwargs):
        raise error

    engine.save_checkpoint = fails
    with pytest.raises(CheckpointError, match=rf"no space left in {root}: saving step_00000002 failed") as err:
        manager.save(engine, cfg, step=2, epoch=0, batches_done=2)
    assert f"--resume auto goes on from {previous}" in str(err.value)
    assert manager.latest() == previous
    error = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):  # anything else goes through as it is
        manager.save(engine, cfg, step=2, epoch=0, batches_done=2)


def test_keep_last_keeps_the_latest_saves_not_the_highest_steps(world, tmp_path):
    """Resumed from step 1 after the abandoned run saved 4 and 5: with keep_last=3 the new saves 2 and 3 stay with
    the newest of the old (ranked by step, the resumed run's step 2 went first)."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=3, rank=0, world_size=1)
    for step in (4, 5, 2, 3):
        manager.save(engine, cfg, step=step, epoch=0, batches_done=step)
    assert sorted(n for n in os.listdir(root) if n.startswith("step_")) == [
        "step_00000002", "step_00000003", "step_00000005"
    ]  # fmt: skip


def test_of_equal_metrics_the_earliest_is_best(world, tmp_path):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2"])
    engine = _engine(cfg, seed=0)
    root = str(tmp_path / "ckpt")
    manager = CheckpointManager(root, keep_last=5, rank=0, world_size=1)
    for step in (1, 2):
        manager.save(engine, cfg, step=step, epoch=step, batches_done=0, metric=50.0)
    assert json.load(open(os.path.join(root, "best.json")))["name"] == "step_00000001"


def test_a_zero_stage_0_checkpoint_resumes_under_another_world_size(world, tmp_path):
    """Stage 0 keeps the whole optimizer on every rank: nothing to regroup, so another world size is allowed."""
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2", "train.zero_stage=0"])
    root = str(tmp_path / "ckpt")
    path = CheckpointManager(root, keep_last=2, rank=0, world_size=2).save(
        _engine(cfg, seed=0), cfg, step=1, epoch=0, batches_done=1
    )
    assert CheckpointManager(root, keep_last=2, rank=0, world_size=1).load(_engine(cfg, seed=1), path, cfg)[
        "world_size"
    ] == 2
