#!/bin/bash
# one-off follow-up: temporal attention at 16 and 32 frames; the profiler with model.compile=true
set -u
OUT=$1
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
mkdir -p /tmp/site && tar xzf .gpu/site.tgz -C /tmp && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
exec > >(tee -a "$OUT/all.log") 2>&1
T0=$(date +%s)
stamp() { echo "=== [$(($(date +%s) - T0))s] $*"; }
V=/tmp/v8
python3 - <<'PY' &
import os
from multiprocessing import Pool
from aim_video.profiling.videos import scene_video
os.makedirs("/tmp/v8", exist_ok=True)
def make(i):
    return scene_video(f"/tmp/v8/v{i:03d}.mp4", 340, 256, seconds=6.0, seed=i)
with Pool(8) as pool:
    pool.map(make, range(8))
with open("/tmp/v8/train.txt", "w") as f:
    f.writelines(f"v{i:03d}.mp4 {i}\n" for _ in range(40) for i in range(8))
PY
VIDEOS=$!
for fb in "16 32" "32 16"; do
  set -- $fb
  stamp "bench_attention frames $1 batch $2"
  timeout 40 python3 tools/bench_attention.py --batch $2 --frames $1 --iters 10 | tee "$OUT/attn_f$1.jsonl"
  stamp "bench_model eager frames $1 batch $2"
  timeout 60 python3 tools/bench_model.py --frames $1 --batch $2 --steps 6 --warmup 2 --dtypes bf16 --variants a \
    --temporal-attention sdpa,matmul --json "$OUT/bm_eager_f$1.json" | grep '^{"variant'
done
stamp "bench_model compiled frames 32 batch 16"
timeout 90 python3 tools/bench_model.py --frames 32 --batch 16 --steps 6 --warmup 2 --dtypes bf16 --variants a \
  --temporal-attention sdpa,matmul --compile --json "$OUT/bm_compiled_f32.json" 2>&1 | grep '^{"variant'
wait $VIDEOS
stamp "profile compiled"
timeout 100 python3 tools/profile.py --config configs/k400_vit_b16_8f.yaml --out /tmp/pc output_dir=/tmp/prof \
  data.root=$V data.train_list=$V/train.txt data.val_list=$V/train.txt model.pretrained= data.num_workers=12 \
  'profile.batch_sizes=[32]' profile.steps=10 data.batch_size=32 profile.max_workers=1 profile.loader_batches=2 \
  model.compile=true 2>&1 | grep -v "WARNING\|Warn"
cp /tmp/pc/profile.json "$OUT/profile_compiled.json"
stamp done
