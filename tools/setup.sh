#!/usr/bin/env bash
# Set up aim-video in ./.venv: FFmpeg's shared libraries (for the torchcodec backend) when apt is available,
# then the pinned Python stack and the package itself (editable). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/*/libavcodec.so.* >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing FFmpeg shared libraries for torchcodec (apt-get install ffmpeg)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) ||
      echo "[setup] warning: apt-get install ffmpeg failed; the torchcodec backend will be unavailable"
  else
    echo "[setup] note: FFmpeg libraries missing; 'sudo apt-get install ffmpeg' enables the torchcodec backend"
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, timm, decord, deepspeed, einops, torchmetrics, av, aim_video" 2>/dev/null ||
  { echo "[setup] error: the environment does not import; see pip's output above"; exit 1; }
echo "[setup] ready: $(.venv/bin/python -c 'import torch, timm, deepspeed; print(f"torch {torch.__version__}, timm {timm.__version__}, deepspeed {deepspeed.__version__}")')"
