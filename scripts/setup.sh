#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv (idempotent, offline-safe
# once the packages are cached). Usage: bash scripts/setup.sh
#  - torch 2.13.0 CPU comes from the local wheel folder ($PIP_FIND_LINKS, default /opt/wheels);
#    on a machine with internet and no such folder, the registry's torch 2.13.0 is used.
#  - uv installs in seconds; plain pip is the fallback.
#  - the torchvision CPU shim (scripts/tv_cpu_shim.py) is placed in site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WHEELS=${PIP_FIND_LINKS:-/opt/wheels}
stamp="$VENV/.setup-stamp"
want=$(cat requirements.txt pyproject.toml scripts/setup.sh scripts/tv_cpu_shim.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
echo "[setup] creating/updating $VENV ..." >&2
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
find_links=()
[ -d "$WHEELS" ] && find_links=(--find-links "$WHEELS")
if "$VENV/bin/python" -m pip install -q uv==0.13.8 2>/dev/null; then
  UV=("$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" "${find_links[@]}")
else
  UV=("$VENV/bin/python" -m pip install -q "${find_links[@]}")
fi
"${UV[@]}" -r requirements.txt
# facenet-pytorch only for the MTCNN weights it ships; its own pins (torch<2.3, numpy<2) are wrong for us.
"${UV[@]}" --no-deps facenet-pytorch==2.6.0
"${UV[@]}" --no-deps -e .
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/tv_cpu_shim.py "$site/_tv_cpu_shim.py"
echo 'import _tv_cpu_shim; _tv_cpu_shim.register()' > "$site/zz_tv_cpu_shim.pth"
"$VENV/bin/python" -c 'import torch, torchvision, lightning, timm, lpips, torchmetrics; assert torch.__version__.startswith("2.13.0"), torch.__version__'
echo "$want" > "$stamp"
echo "[setup] done: $VENV" >&2
