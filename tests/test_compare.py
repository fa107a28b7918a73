"""aim_video/compare.py: method configs, the cost measurements, pair accuracy and the written table/JSON/PNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import aim_video.compare as compare
from aim_video.compare import METHODS, markdown_table, measure_cost, method_config, pair_accuracy, write_outputs
from aim_video.config import load_config
from aim_video.models.build import build_model, check_method
from tests.models.conftest import TINY_CLIP
from tests.tools.conftest import PYTHONPATH, REPO, TINY_VIT, make_videos, tiny_config, write_base_weights


def _cfg(method: str, precision: str = "fp32"):
    shape = ["data.batch_size=2", "data.num_frames=4", "data.input_size=32", "model.num_classes=5"]
    cfg = method_config(method, None, [*shape, f"train.precision={precision}"], "/tmp/unused")
    cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_CLIP)
    return cfg


def test_every_method_builds_a_distinct_config_and_unknown_names_fail() -> None:
    models = {name: method_config(name, None, [], "runs/x").model for name in METHODS}
    assert models["aim"] == load_config().model  # the default is AIM, unchanged
    assert models["aim_spatial"].temporal_embedding is False and models["aim_spatial"].temporal_adapter is False
    assert models["aim_spatial_temporal"].joint_adapter is False and models["aim_spatial_temporal"].temporal_adapter
    assert {m.method for m in models.values()} == {"aim", "linear_probe", "full_finetune", "lora", "vpt_shallow",
                                                   "vpt_deep", "linear_adapter"}  # fmt: skip
    assert method_config("lora", None, [], "runs/x").output_dir == os.path.join("runs/x", "lora")
    with pytest.raises(ValueError, match="unknown method 'adapter': choose from aim_spatial, "):
        method_config("adapter", None, [], "runs/x")


def test_the_users_output_dir_is_not_reported_as_given_twice(capsys, monkeypatch) -> None:
    """Each method warned 'output_dir is given as runs/x, runs/x/aim: the last one counts' of one output_dir."""
    import aim_video.config as config

    monkeypatch.setattr(config, "_WARNED", set())
    monkeypatch.delenv("RANK", raising=False)
    assert method_config("aim", None, ["output_dir=runs/x"], "runs/x").output_dir == os.path.join("runs/x", "aim")
    assert "given as" not in capsys.readouterr().err



def test_a_methods_output_dir_that_is_a_file_is_refused(tmp_path) -> None:
    """It was a NotADirectoryError traceback at the method's start (load_config checks the output_dir it is given)."""
    (tmp_path / "aim").write_text("")
    with pytest.raises(ValueError, match=r"output_dir of method aim: .*aim is a file"):
        method_config("aim", None, [], str(tmp_path))


@pytest.mark.parametrize("recipe", ["k400_vit_b16_8f.yaml", "ssv2_vit_b16_8f.yaml"])
def test_a_recipe_config_gives_every_method_only_the_settings_it_reads(recipe: str) -> None:
    """The k400 ViT-B/16 8-frame recipe sets temporal_attention=matmul, the SSv2 ones two temporal adapters and
    mlp_adapter_scale=1.0: build_model refused every baseline with them, after the AIM variants had trained."""
    path = os.path.join(REPO, "configs", recipe)
    recipe_model = load_config(path).model
    models = {name: method_config(name, path, ["model.lora_rank=4"], "runs/x").model for name in METHODS}
    for model in models.values():
        check_method(model)  # raised for every baseline before
    aim = models["aim"]
    assert (aim.temporal_attention, aim.num_temporal_adapters, aim.mlp_adapter_scale, aim.drop_path_rate) == (
        recipe_model.temporal_attention,
        recipe_model.num_temporal_adapters,
        recipe_model.mlp_adapter_scale,
        0.2,
    )
    assert aim.lora_rank == 8  # the shared override reaches only LoRA
    lora = models["lora"]
    assert (lora.lora_rank, lora.temporal_attention, lora.num_temporal_adapters, lora.mlp_adapter_scale) == (
        4, "sdpa", 1, 0.5)  # fmt: skip
    assert lora.drop_path_rate == 0.0 and models["linear_probe"].drop_path_rate == 0.0  # what they run with
    assert models["full_finetune"].drop_path_rate == 0.2 and models["full_finetune"].lora_rank == 8
    assert models["vpt_deep"].arch == recipe_model.arch and models["vpt_deep"].num_classes == recipe_model.num_classes


def test_every_method_and_the_evaluation_list_are_checked_before_any_trains(tmp_path) -> None:
    from aim_video.compare import prepare_methods

    listed = make_videos(str(tmp_path), count=2)
    data = [f"data.val_list={listed}", f"data.root={tmp_path}", f"data.test_list={listed}"]
    configs = prepare_methods(["aim", "linear_probe", "lora"], None, [*data, "model.lora_rank=4"], str(tmp_path))
    assert list(configs) == ["aim", "linear_probe", "lora"] and configs["aim"].train.eval_every == -1
    assert configs["lora"].model.lora_rank == 4 and configs["aim"].model.lora_rank == 8  # only where it is read
    with pytest.raises(ValueError, match="bad value for config key 'model.lora_rank': 0"):  # before any training
        prepare_methods(["aim", "linear_probe", "lora"], None, [*data, "model.lora_rank=0"], str(tmp_path))
    with pytest.raises(ValueError, match="method aim: model.vit_kwargs=.* does not fit timm's"):  # checked by building
        prepare_methods(["aim", "lora"], None, [*data, "model.vit_kwargs={depth_of_field: 3}"], str(tmp_path))
    with pytest.raises(ValueError, match="no data.val_list given"):  # it failed after the first method trained
        prepare_methods(["aim", "lora"], None, [], str(tmp_path))
    with pytest.raises(ValueError, match="no data.test_list given"):
        prepare_methods(["aim"], None, data[:2], str(tmp_path), split="test")
    with pytest.raises(ValueError, match="model.init_trainable=.* a comparison trains every method from the same"):
        prepare_methods(["aim", "lora"], None, [*data, f"model.init_trainable={tmp_path}"], str(tmp_path))
    earlier = tmp_path / "lora" / "checkpoints"  # a comparison run here before: training refuses the folder, after
    (earlier / "step_00000004" / "deepspeed").mkdir(parents=True)  # the methods before it trained; what counts is
    (earlier / "latest").write_text("step_00000004")  # what fit refuses: a complete checkpoint
    assert list(prepare_methods(["aim", "lora"], None, data, str(tmp_path))) == ["aim", "lora"]  # none: fit trains
    (earlier / "step_00000004" / "meta.json").write_text('{"step": 4}')
    (earlier / "latest").unlink()  # a save killed before it wrote `latest`: fit still refuses the folder
    with pytest.raises(ValueError, match="method lora: .* holds the run of an earlier comparison"):
        prepare_methods(["aim", "lora"], None, data, str(tmp_path))
    assert list(prepare_methods(["aim", "lora"], None, [*data, "train.resume=auto"], str(tmp_path))) == ["aim", "lora"]
    (earlier / ".tmp-step_00000005").mkdir()  # a save in flight, of a run still training there: left alone
    prepare_methods(["aim", "lora"], None, [*data, "train.resume=auto"], str(tmp_path))
    assert (earlier / ".tmp-step_00000005").is_dir() and not (tmp_path / "aim" / "checkpoints").exists()


def test_cost_counts_parameters_and_memory_grows_with_the_trainable_set() -> None:
    probe = measure_cost(_cfg("linear_probe"), torch.device("cpu"), warmup=1, steps=1)
    full = measure_cost(_cfg("full_finetune"), torch.device("cpu"), warmup=1, steps=1)
    assert probe["tunable_params"] == 64 * 5 + 5 and full["tunable_params"] == full["total_params"]
    assert probe["train_clips_per_s"] > 0 and full["train_clips_per_s"] > 0
    params_mib = full["total_params"] * 4 / 2**20
    # full fine-tuning adds gradients + two AdamW states for every weight, and activations saved everywhere
    assert full["peak_memory_mib"] > probe["peak_memory_mib"] + 2.9 * params_mib
    assert probe["peak_memory_mib"] > params_mib


@pytest.mark.parametrize("method", ["full_finetune", "aim"])
def test_bf16_step_keeps_fp32_master_weights_and_adam_state_as_deepspeed(method: str) -> None:
    """DeepSpeed bf16: bf16 model, fp32 master weights + gradient buffers + AdamW moments of the trainable set,
    20 bytes per trainable parameter and 2 per frozen one."""
    from aim_video.compare import accounted_training_memory
    from aim_video.profiling.throughput import build_train_step

    cfg = _cfg(method, precision="bf16")
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    trainable, total = model.parameter_counts()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    video, label = torch.randn(2, 4, 3, 32, 32, dtype=torch.bfloat16), torch.tensor([0, 3])
    optimizer, train = build_train_step(cfg, model, torch.device("cpu"))

    def step() -> None:
        train(video, label)

    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    memory = accounted_training_memory(model, optimizer, step)
    masters = [p for g in optimizer.param_groups for p in g["params"]]
    assert {p.dtype for p in masters} == {torch.float32} and sum(p.numel() for p in masters) == trainable
    states = [t for s in optimizer.state.values() for t in s.values() if t.ndim > 0]
    assert len(states) == 2 * len(masters) and {t.dtype for t in states} == {torch.float32}
    assert memory["parameters"] == 2 * total and memory["gradients"] == 2 * trainable
    assert memory["master_weights"] == 8 * trainable and memory["optimizer_states"] == 8 * trainable
    assert sum(memory.values()) - memory["activations"] == 20 * trainable + 2 * (total - trainable)
    # the step updated the masters and copied them back: the model holds them, rounded to bf16
    params = dict(model.named_parameters())
    held = [params[n] for n in model.trainable_parameter_names()]
    assert all(any(p.shape == m.shape and torch.equal(p, m.to(torch.bfloat16)) for p in held) for m in masters)
    assert not torch.equal(params["head.weight"].float(), before["head.weight"])


def test_bf16_memory_counts_20_bytes_per_trainable_parameter() -> None:
    """A bf16 model under torch AdamW (bf16 moments, no fp32 masters) counted 6: full fine-tuning looked cheap."""
    full = measure_cost(_cfg("full_finetune", "bf16"), torch.device("cpu"), warmup=1, steps=1)
    probe = measure_cost(_cfg("linear_probe", "bf16"), torch.device("cpu"), warmup=1, steps=1)
    extra_trainable = full["tunable_params"] - probe["tunable_params"]
    assert full["peak_memory_mib"] - probe["peak_memory_mib"] > extra_trainable * 20 / 2**20


def test_pair_accuracy_scores_only_the_pair_classes() -> None:
    videos = [{"index": i, "label": y, "pred": p} for i, (y, p) in enumerate([(0, 0), (1, 0), (2, 2), (3, 3), (4, 5)])]
    assert pair_accuracy(videos, [(0, 1), (2, 3)]) == 75.0
    with pytest.raises(ValueError, match="no evaluated video"):
        pair_accuracy(videos, [(7, 8)])


def test_outputs_table_json_and_chart(tmp_path) -> None:
    rows = [
        {"method": "aim", "tunable_params": 20182, "gflops_per_clip": 0.05, "gmacs_per_clip": 0.025,
         "train_clips_per_s": 30.0, "peak_memory_mib": 20.0, "top1": 100.0, "top5": 100.0,
         "temporal_pairs_top1": 100.0},
        {"method": "linear_probe", "tunable_params": 390, "gflops_per_clip": 0.04, "gmacs_per_clip": 0.02,
         "train_clips_per_s": 60.0, "peak_memory_mib": 10.0, "top1": 60.0, "top5": 100.0, "temporal_pairs_top1": 50.0},
    ]  # fmt: skip
    paths = write_outputs(rows, str(tmp_path), {"config": "configs/demo.yaml", "command": "python tools/compare.py"})
    table = open(paths["md"]).read()
    assert (
        "| method | tunable params | GFLOPs / clip (inference, 2 per MAC) | GMACs / clip (the paper's GFLOPs) |"
        in table
    )
    assert "| aim | 20,182 | 0.0500 | 0.0250 | 30.0 | 20.0 | 100.0 | 100.0 | 100.0 |" in table
    assert "- command: python tools/compare.py" in table
    assert "full_finetune is not the paper's full fine-tuning baseline" in table
    data = json.load(open(paths["json"]))
    assert data["rows"] == rows and data["meta"]["machine"]
    assert os.path.getsize(paths["png"]) > 10_000
    assert sorted(os.listdir(tmp_path)) == ["compare.json", "compare.md", "compare.png"]  # no temporary left
    assert "temporal pairs" not in markdown_table([{k: v for k, v in rows[0].items() if "pairs" not in k}])


# tools/compare.py in a child process, with the third method crashing (a stand-in for an out-of-memory error) and
# measure_cost wrapped to count the video models alive (reachable or in uncollected cycles) when it starts
CHILD = """
import gc, json, runpy, sys
import aim_video.compare as compare
from aim_video.models.video_model import VideoModelMixin

real_run, real_measure, alive = compare.run_method, compare.measure_cost, []

def measure(*args, **kwargs):
    alive.append(sum(isinstance(o, VideoModelMixin) for o in gc.get_objects()))
    return real_measure(*args, **kwargs)

def run(name, *args, **kwargs):
    if name == "vpt_shallow":
        raise RuntimeError("simulated crash of the third method")
    return real_run(name, *args, **kwargs)

compare.measure_cost, compare.run_method = measure, run
sys.argv = ["tools/compare.py", *sys.argv[1:]]
try:
    runpy.run_path("tools/compare.py", run_name="__main__")
except RuntimeError as err:
    print(f"crashed: {err}")
print(json.dumps({"alive": alive}))
"""


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("videos"))
    make_videos(root)
    write_base_weights(os.path.join(root, "base_vit.safetensors"), TINY_VIT)
    return root


def _compare(tmp_path, root: str, args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    cfg = tiny_config(
        str(tmp_path), root,
        data={"val_list": os.path.join(root, "train.txt"), "test_num_clips": 1, "test_short_side": 32},
        model={"temporal_attention": "matmul", "num_temporal_adapters": 2},  # AIM-only settings, as the recipes'
        train={"max_steps": 2, "save_every": 100},
    )  # fmt: skip
    cmd = ["-c", script] if script else ["tools/compare.py"]
    cmd = [sys.executable, *cmd, "--config", cfg, "--out", str(tmp_path / "table"), *args,
           f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    dist_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_keys}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=PYTHONPATH)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_rows_are_written_as_each_method_ends_and_measured_without_leftover_models(tiny_videos, tmp_path) -> None:
    result = _compare(tmp_path, tiny_videos, ["--methods", "aim,lora,linear_probe,vpt_shallow"], CHILD)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "crashed: simulated crash of the third method" in result.stdout
    # the evaluation model and fit's model were freed before each measurement
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"alive": [0, 0, 0]}
    data = json.load(open(tmp_path / "table" / "compare.json"))
    aim, lora, probe = data["rows"]
    assert [r["method"] for r in data["rows"]] == ["aim", "lora", "linear_probe"]
    assert data["meta"]["methods_done"] == "3 of 4"
    assert "| linear_probe |" in (tmp_path / "table" / "compare.md").read_text()
    assert sorted(os.listdir(tmp_path / "table")) == ["compare.json", "compare.md", "compare.png"]
    # the recipe's AIM settings reached AIM (two temporal adapters per block) and LoRA ran with the defaults
    per_adapter = 32 * 8 + 8 + 8 * 32 + 32  # width 32, ratio 0.25
    assert aim["tunable_params"] == 2 * 4 * per_adapter + 4 * 32 + 2 * 32 + 32 * 2 + 2  # + temporal emb, norm, head
    lora_per_block = 8 * ((32 + 3 * 32) + (32 + 32))  # default rank 8 on qkv and proj
    assert lora["tunable_params"] == probe["tunable_params"] + 2 * lora_per_block
    assert lora["train_steps"] == probe["train_steps"] == 2
    # LoRA merges for inference: a plain ViT + head, the probe's parameters and FLOPs
    assert lora["merged_for_eval"] and not probe["merged_for_eval"] and not aim["merged_for_eval"]
    assert lora["inference_params"] == probe["inference_params"] == probe["total_params"] < lora["total_params"]
    assert lora["gflops_per_clip"] == probe["gflops_per_clip"] < aim["gflops_per_clip"]
    assert all(r["gmacs_per_clip"] * 2 == pytest.approx(r["gflops_per_clip"]) for r in data["rows"])


def test_a_bad_setting_stops_the_run_before_any_method_trains(tiny_videos, tmp_path) -> None:
    result = _compare(tmp_path, tiny_videos, ["--methods", "linear_probe,lora", "model.lora_rank=0"])
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "bad value for config key 'model.lora_rank': 0; it must be at least 1" in result.stderr
    assert not os.path.exists(tmp_path / "runs" / "linear_probe") and not os.path.exists(tmp_path / "table")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["aim", "full_finetune", "linear_probe"])
def test_cuda_peak_of_the_measured_step_is_the_deepspeed_engines(method: str) -> None:
    """compare times a hand-made step with the memory layout of DeepSpeed's ZeRO-1 bf16 step (build_train_step's
    doc); on CUDA its peak must be the real engine's on the same model and clips, within 10%."""
    from aim_video.compare import free_memory
    from aim_video.engine.deepspeed_setup import build_engine, derive_ds_config
    from aim_video.engine.distributed import init_distributed
    from aim_video.engine.train_loop import loss_fn

    init_distributed()
    device = torch.device("cuda", torch.cuda.current_device())
    shape = ["model.pretrained=", "data.batch_size=8", "train.precision=bf16", "train.zero_stage=1"]
    cfg = method_config(method, f"{REPO}/configs/k400_vit_b16_8f.yaml", shape, "/tmp/unused")
    hand_made = measure_cost(cfg, device, warmup=2, steps=3)["peak_memory_mib"]

    free_memory(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    torch.manual_seed(cfg.train.seed)
    d = cfg.data
    model = build_model(cfg.model, d.num_frames, d.input_size).train()
    engine, _ = build_engine(cfg, model, steps_per_epoch=10, world_size=1, ds_config=derive_ds_config(cfg, 1))
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(d.batch_size, d.num_frames, 3, d.input_size, d.input_size, generator=gen)
    video, label = video.to(device, torch.bfloat16), torch.randint(0, 400, (d.batch_size,), generator=gen).to(device)
    for _ in range(3):
        engine.backward(loss_fn(engine(video), label, cfg.train.label_smoothing))
        engine.step()
    torch.cuda.synchronize(device)
    deepspeed_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    del engine, model
    free_memory(device)
    print(json.dumps({"method": method, "hand_made_mib": round(hand_made), "deepspeed_mib": round(deepspeed_mib)}))
    assert abs(hand_made / deepspeed_mib - 1) < 0.10, (hand_made, deepspeed_mib)


def test_training_speed_is_the_batch_over_the_median_timed_step_after_the_warm_up(monkeypatch) -> None:
    """Clips/s = data.batch_size / the median of the timed steps (a step slowed by another process of a shared
    machine does not count), after `warmup` untimed steps."""
    readings = iter([0.0, 0.1, 1.0, 1.1, 2.0, 3.0])  # three timed steps: 0.1, 0.1 and 1.0 s (mean 0.4)
    monkeypatch.setattr(compare, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    calls: list[int] = []
    real = compare.build_train_step

    def counting(cfg, model, device):
        optimizer, train = real(cfg, model, device)

        def step(video: torch.Tensor, label: torch.Tensor) -> None:
            calls.append(int(video.shape[0]))
            train(video, label)

        return optimizer, step

    monkeypatch.setattr(compare, "build_train_step", counting)
    cost = compare.measure_cost(_cfg("linear_probe"), torch.device("cpu"), warmup=2, steps=3)
    assert cost["train_clips_per_s"] == pytest.approx(2 / 0.1)  # data.batch_size=2
    assert calls == [2] * (2 + 3 + 1)  # warm-up, timed, and the step whose memory is accounted


@pytest.mark.parametrize("method", ["aim", "full_finetune"])
def test_accounted_activations_leave_out_the_weights_autograd_saves(method: str) -> None:
    """The weights a linear layer saves for its backward are parameters, counted once under `parameters`: the
    activations are the batch's own, twice as large for twice the clips (counted with them: about the model's size
    more at every batch size)."""
    from aim_video.compare import accounted_training_memory
    from aim_video.models.build import build_model
    from aim_video.profiling.throughput import build_train_step

    activations = []
    for batch in (1, 2):
        cfg = _cfg(method)
        torch.manual_seed(0)
        model = build_model(cfg.model, 4)
        optimizer, train = build_train_step(cfg, model, torch.device("cpu"))
        video, label = torch.randn(batch, 4, 3, 32, 32), torch.zeros(batch, dtype=torch.long)
        step = lambda: train(video, label)  # noqa: B023, E731
        activations.append(accounted_training_memory(model, optimizer, step)["activations"])
    assert activations[1] == pytest.approx(2 * activations[0], rel=0.01)


def test_a_column_some_rows_lack_reads_n_a() -> None:
    rows = [{"method": "aim", "top1": 80.0, "temporal_pairs_top1": 90.0}, {"method": "lora", "top1": 70.0}]
    table = compare.markdown_table(rows)
    assert "temporal pairs top-1 (%)" in table and "| lora | 70.0 | n/a |" in table
    scored = compare.markdown_table([{"method": "aim", "top1": 80.0, "num_evaluated": 69}])
    assert "| method | top-1 (%) | videos scored |" in scored and "| aim | 80.0 | 69 |" in scored  # 69 of 72 listed


def test_cpu_training_memory_is_the_accounted_bytes_in_mib() -> None:
    from aim_video.compare import accounted_training_memory, training_memory_mib
    from aim_video.models.build import build_model
    from aim_video.profiling.throughput import build_train_step

    cfg = _cfg("aim")
    model = build_model(cfg.model, 4)
    optimizer, train = build_train_step(cfg, model, torch.device("cpu"))
    video, label = torch.randn(2, 4, 3, 32, 32), torch.tensor([0, 1])

    def step() -> None:
        train(video, label)

    step()  # the optimizer's states exist from here on
    accounted = sum(accounted_training_memory(model, optimizer, step).values())
    assert training_memory_mib(model, optimizer, step, torch.device("cpu"), 0) == pytest.approx(accounted / 2**20)


def test_accumulation_times_whole_optimizer_steps_and_keeps_the_measured_training_memory(monkeypatch) -> None:
    """Each timed call was one micro-batch: with train.grad_accum_steps above the calls made (32 for the recipes'
    global batch of 64 at 2 clips a GPU) AdamW never stepped and its moments were left out of the memory, and the
    median call was a stepping one or not by parity."""
    readings = iter([0.0, 0.4, 1.0, 1.4])  # two timed optimizer steps of 0.4 s each
    monkeypatch.setattr(compare, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    calls: list[int] = []
    real = compare.build_train_step

    def counting(cfg, model, device):
        optimizer, train = real(cfg, model, device)
        return optimizer, lambda video, label: (calls.append(1), train(video, label))

    monkeypatch.setattr(compare, "build_train_step", counting)
    cfg = _cfg("linear_probe")
    cfg.train.grad_accum_steps = 4
    cost = compare.measure_cost(cfg, torch.device("cpu"), warmup=2, steps=3)
    assert len(calls) == (1 + 2) * 4 + 1  # one warm-up and two timed optimizer steps, one micro-batch accounted
    assert cost["train_clips_per_s"] == pytest.approx(2 * 4 / 0.4)
    monkeypatch.undo()
    costs = []
    for accum in (1, 32):
        cfg = _cfg("full_finetune")
        cfg.train.grad_accum_steps = accum
        costs.append(measure_cost(cfg, torch.device("cpu"), warmup=1, steps=2))
    assert costs[1]["peak_memory_mib"] == pytest.approx(costs[0]["peak_memory_mib"], rel=0.02)
