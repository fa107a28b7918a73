#!/bin/bash
# The GPU checks in one command, most telling first, all inside DEADLINE seconds (default 540, so that one device
# call of 600 s holds them): each step's time limit is cut to what is left, and a step with under 15 s left is
# skipped. Each step compares side by side in one process:
#   the model step eager against the authors' computation and full fine-tuning, with each way of computing the
#   temporal attention (bench_model --temporal-attention), the CUDA tests, the profiler eager and compiled on
#   generated videos (MFU, loader, data wait), a short DeepSpeed bf16 run with model.compile=true, the model step
#   compiled for AIM and full fine-tuning with sdpa and matmul, the same at 32 frames eager and compiled, then AIM's
#   two attention shapes per implementation (bench_attention); on request (STEPS) a resume check. Its default steps,
#   timed one by one in runs 4-6 on an H200 (docs/benchmarks.md), add up to about 490 s; not yet run whole in this
#   form. Run 7 (STEPS="tests resume profile") took 434 s: tests 47 s + the engine folder's ~90 s, resume 171 s,
#   profiles 106 s.
# Usage: bash tools/gpu_checks.sh OUT_DIR [PYTHON]      (PYTHON defaults to .venv/bin/python, else python3)
#        TINY=1 bash tools/gpu_checks.sh OUT_DIR          a CPU smoke run of the same steps on a tiny ViT
#        STEPS="tests resume profile" bash tools/gpu_checks.sh OUT_DIR    only these steps, in the script's order:
#          model (eager model step), tests (CUDA and engine tests), resume (bf16 ZeRO-1 run stopped by SIGUSR1,
#          resumed, against an uninterrupted one, then tools/test.py; RESUME_EXTRA="key=value ..." adds overrides
#          to both runs, e.g. train.grad_accum_dtype=fp32), profile (eager, compiled), train (compiled
#          DeepSpeed run), compiled (compiled model step), frames32, attention. Default: all but resume.
# Outputs in OUT_DIR: all.log and one JSON per step. Each step has its own time limit; a failing step does not
# stop the others. Record what it measured in docs/benchmarks.md with the date and device.
set -u
OUT=${1:?usage: bash tools/gpu_checks.sh OUT_DIR [PYTHON]}
PY=${2:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -f .gpu/site.tgz ] && ! "$PY" -c "import deepspeed" 2>/dev/null; then  # a lent machine: unpack what
  mkdir -p /tmp/site && tar xzf .gpu/site.tgz -C /tmp &&                   # tools/gpu_carry.sh carried here
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/all.log") 2>&1
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}
stamp() { echo "=== [$(($(date +%s) - T0))s] $*"; }
STEPS=${STEPS:-model tests profile train compiled frames32 attention}
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
# step KEY LIMIT NAME COMMAND...: runs COMMAND under min(LIMIT, the seconds left before DEADLINE), or skips it
step() {
  local key=$1 limit=$2 name=$3 left=$((DEADLINE - ($(date +%s) - T0))) rc
  shift 3
  wanted "$key" || return 0
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 15 ]; then stamp "$name: skipped, ${left}s left"; return 0; fi
  stamp "$name (limit ${limit}s)"
  timeout "$limit" "$@"
  rc=$?
  [ "$rc" -eq 0 ] || echo "=== $name: exit status $rc"
}
WORK=$(mktemp -d)
V=$WORK/videos
NVID=32
BENCH=(--batch 32 --steps 10 --warmup 3 --dtypes bf16)
BENCH32=(--frames 32 --batch 16 --steps 6 --warmup 2 --dtypes bf16)
ATTN=(--batch 32 --compile)
TINY_CFG=()
PROF=('profile.batch_sizes=[32]' profile.steps=10 data.batch_size=32)
TRAIN=(data.batch_size=32 train.max_steps=40)
if [ -n "${TINY:-}" ]; then
  NVID=4
  BENCH=(--arch vit_tiny_patch16_224 --vit-kwargs '{"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 16}'
    --batch 2 --steps 1 --warmup 1 --dtypes bf16)
  BENCH32=("${BENCH[@]}" --frames 4)
  ATTN=(--batch 1 --tokens 17 --dtype fp32 --iters 2)
  TINY_CFG=(model.arch=vit_tiny_patch16_224 'model.vit_kwargs={img_size: 32, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2}'
    data.input_size=32 data.test_short_side=32 data.num_workers=1)
  PROF=('profile.batch_sizes=[4]' profile.steps=2 data.batch_size=4)
  TRAIN=(data.batch_size=4 train.max_steps=3)
  export DS_ACCELERATOR=cpu
fi

stamp "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
"$PY" -c "import torch, timm, deepspeed, decord; print('torch', torch.__version__, 'timm', timm.__version__,
'deepspeed', deepspeed.__version__, 'decord', decord.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

stamp "generating $NVID videos, 340x256, 6 s, in the background"
"$PY" - "$V" "$NVID" > "$WORK/videos.log" 2>&1 <<'EOF' &
import os, sys
from multiprocessing import Pool
from aim_video.profiling.videos import scene_video
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(root, exist_ok=True)
def make(i):
    return scene_video(f"{root}/v{i:03d}.mp4", 340, 256, seconds=6.0, seed=i)
with Pool(min(8, os.cpu_count() or 1)) as pool:
    pool.map(make, range(n))
with open(f"{root}/train.txt", "w") as f:
    f.writelines(f"v{i:03d}.mp4 {i % 400}\n" for _ in range(10) for i in range(n))  # 10 entries per video
EOF
VIDEOS=$!
DATA=(data.root="$V" data.train_list="$V/train.txt" data.val_list="$V/train.txt" data.test_list="$V/train.txt"
  model.pretrained= data.num_workers=12)

step model 110 "bench_model eager, each temporal attention" "$PY" tools/bench_model.py "${BENCH[@]}" \
  --temporal-attention sdpa,math,matmul,reduce --json "$OUT/bench_model_eager.json"

step tests 100 "CUDA tests" "$PY" -m pytest -q -rP -p no:cacheprovider -m gpu tests/models/test_aim.py tests/data/test_dataset.py \
  tests/profiling/test_runner.py tests/test_compare.py
step tests 150 "engine and evaluation tests on this machine" "$PY" -m pytest -q -p no:cacheprovider tests/engine \
  tests/eval/test_loading.py tests/tools/test_test_tool_infer.py

wait "$VIDEOS" || { echo "=== video generation failed:"; cat "$WORK/videos.log"; }

# resume: the default recipe (bf16, ZeRO 1, fused AdamW on CUDA) for 2 epochs, once uninterrupted and once stopped by
# SIGUSR1 after step 5 (as a scheduler's preemption notice) then resumed with --resume auto; the losses of each
# step side by side, then tools/test.py (multi-view) on the resumed run's weights
{
  declare -p PY DATA TINY_CFG WORK OUT; echo "TINY=${TINY:-}"; printf 'RESUME_EXTRA=%q\n' "${RESUME_EXTRA:-}"
  cat <<'EOF'
set -u
"$PY" - "$WORK/backbone.safetensors" "${TINY_CFG[@]}" <<'PY'  # a saved random backbone: test.py must find the same
import sys, timm, torch
from safetensors.torch import save_file
from aim_video.config import load_config
m = load_config("configs/k400_vit_b16_8f.yaml", sys.argv[2:]).model
torch.manual_seed(0)
vit = timm.create_model(m.arch, pretrained=False, num_classes=0, **m.vit_kwargs)
save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, sys.argv[1])
PY
RUN=("$PY" tools/train.py --config configs/k400_vit_b16_8f.yaml "${DATA[@]}" "${TINY_CFG[@]}" train.epochs=2
  model.pretrained="$WORK/backbone.safetensors" train.log_every=1 train.eval_every=0 train.save_every=1)
[ -n "${TINY:-}" ] && RUN+=(data.batch_size=4) || RUN+=(data.batch_size=32)
read -r -a EXTRA <<< "$RESUME_EXTRA"  # e.g. RESUME_EXTRA="train.grad_accum_dtype=fp32" (BF16_Optimizer on CUDA)
RUN+=("${EXTRA[@]}")
"${RUN[@]}" output_dir="$WORK/ref" > "$WORK/ref.log" 2>&1; echo "uninterrupted: exit status $?"
AIM_VIDEO_FAULT=after_step@5:rank0:signal=SIGUSR1 "${RUN[@]}" output_dir="$WORK/res" > "$WORK/res.log" 2>&1
echo "stopped: exit status $? (128 + SIGUSR1 = 138 expected)"
"${RUN[@]}" output_dir="$WORK/res" --resume auto >> "$WORK/res.log" 2>&1; echo "resumed: exit status $?"
grep -h "Error\|error:" "$WORK/ref.log" "$WORK/res.log" | head -5
"$PY" - "$WORK/ref" "$WORK/res" <<'PY' | tee "$OUT/resume.json"
import json, sys
logs = [[json.loads(line) for line in open(f"{d}/log.jsonl")] for d in sys.argv[1:]]
ref, res = ({r["step"]: r["loss"] for r in log if r["event"] == "train"} for log in logs)
stopped = [(r["signal"], r["step"]) for r in logs[1] if r["event"] == "stopped"]
starts = [r.get("start_step") for r in logs[1] if r["event"] == "start"]
common = sorted(set(ref) & set(res))
rel = {s: abs(res[s] - ref[s]) / abs(ref[s]) for s in common}
print(json.dumps({"steps_uninterrupted": len(ref), "steps_resumed": len(res), "stopped": stopped,
                  "start_steps": starts, "max_rel_loss_diff": max(rel.values()) if rel else None,
                  "max_rel_loss_diff_after_resume": max((v for s, v in rel.items() if s > 5), default=None),
                  "losses": {s: [ref[s], res[s]] for s in common},
                  "final_eval": [[r.get("top1") for r in log if r["event"] == "eval"][-1:] for log in logs]}))
PY
"$PY" tools/test.py --checkpoint "$WORK/res" --no-progress > "$WORK/test.log" 2>&1; echo "test.py: exit status $?"
tail -4 "$WORK/test.log"
EOF
} > "$WORK/resume.sh"
step resume 200 "bf16 ZeRO-1 run stopped by SIGUSR1 and resumed, against an uninterrupted run; then test.py" \
  bash "$WORK/resume.sh"
for compiled in false true; do
  step profile 110 "profile, model.compile=$compiled" "$PY" tools/profile.py --config configs/k400_vit_b16_8f.yaml \
    --out "$WORK/profile_$compiled" output_dir="$WORK/prof" "${DATA[@]}" "${TINY_CFG[@]}" "${PROF[@]}" \
    profile.max_workers=1 profile.loader_batches=2 model.compile=$compiled
  wanted profile && cp "$WORK/profile_$compiled/profile.json" "$OUT/profile_compile_$compiled.json"
done

step train 130 "DeepSpeed bf16, model.compile=true" "$PY" -m deepspeed.launcher.runner --num_gpus 1 tools/train.py \
  --config configs/k400_vit_b16_8f.yaml output_dir="$WORK/train" "${DATA[@]}" "${TINY_CFG[@]}" "${TRAIN[@]}" \
  model.compile=true model.random_backbone=true train.epochs=2 train.eval_every=-1 train.save_every=1
wanted train && cp "$WORK/train/log.jsonl" "$OUT/train_compiled.jsonl"

export TORCH_LOGS=recompiles
step compiled 150 "bench_model compiled, (a) and (c), sdpa and matmul" "$PY" tools/bench_model.py "${BENCH[@]}" --compile \
  --variants a,c --temporal-attention sdpa,matmul --json "$OUT/bench_model_compiled.json"
unset TORCH_LOGS
for compiled in "" --compile; do
  step frames32 90 "bench_model at 32 frames${compiled:+, compiled}" "$PY" tools/bench_model.py "${BENCH32[@]}" $compiled \
    --variants a --temporal-attention sdpa,matmul --json "$OUT/bench_model_32f${compiled:+_compiled}.json"
done

step attention 50 "bench_attention (its lines are in all.log: a device call returns 8 files at most)" "$PY" \
  tools/bench_attention.py "${ATTN[@]}"
stamp "done"
rm -rf "$WORK"
