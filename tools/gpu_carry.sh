#!/bin/bash
# Builds .gpu/ (git-ignored, about 52 MB): what a lent GPU machine lacks to run tools/gpu_checks.sh. That machine
# has its own python3 (3.12) with torch, torchvision, timm, einops and torchmetrics, but no deepspeed, decord, PyAV,
# omegaconf or pydantic, and no internet. So: wheels for its Python in .gpu/whl (av, decord, pydantic-core) and the
# pure-Python packages copied from this .venv in .gpu/site.tgz. gpu_checks.sh unpacks them when it finds them.
# Usage: bash tools/gpu_carry.sh            then run the device command with carry [".gpu"]:
#        bash tools/gpu_checks.sh $OUT/gc python3
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=.venv/lib/python3.11/site-packages
[ -d "$SITE" ] || { echo "error: $SITE not found: run bash tools/setup.sh first" >&2; exit 2; }
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .gpu && mkdir -p .gpu/whl
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 -d .gpu/whl \
  "av==$(version av)" "decord==$(version decord)" "pydantic_core==$(version pydantic_core)"
tmp=$(mktemp -d)
mkdir "$tmp/site"
for pkg in deepspeed omegaconf hjson pydantic annotated_types typing_inspection; do
  cp -r "$SITE/$pkg" "$tmp/site/"
  cp -r "$SITE/$pkg"-*.dist-info "$tmp/site/" 2>/dev/null || true
done
tar czf .gpu/site.tgz --exclude=__pycache__ -C "$tmp" site
rm -rf "$tmp"
du -sh .gpu
