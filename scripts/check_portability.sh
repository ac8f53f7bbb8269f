#!/usr/bin/env bash
# Run the float-comparison tests (`-m numerics`) under CPU kernels other than this machine's defaults, so
# that a tolerance written on one CPU cannot silently depend on it (tests/README.md, "Tolerances").
#   bash scripts/check_portability.sh            # every configuration below
#   bash scripts/check_portability.sh avx2       # one of them (names: default avx2 avx512 threads2)
# Each configuration forces PyTorch's ATen dispatch (ATEN_CPU_CAPABILITY), oneDNN's convolutions
# (ONEDNN_MAX_CPU_ISA) and MKL's GEMMs (MKL_ENABLE_INSTRUCTIONS) down to one instruction set, or changes
# the thread count (other blockings of the reductions). A capability the CPU lacks is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline

declare -A CONFIGS=(
  [default]="ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2"
  [avx2]="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
  [avx512]="ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE MKL_ENABLE_INSTRUCTIONS=AVX512"
  [threads2]="GOAE_TEST_THREADS=2"
)
ORDER=(default avx2 avx512 threads2)
requested=("$@")
[ ${#requested[@]} -gt 0 ] || requested=("${ORDER[@]}")

cpu_flags=$(grep -m1 -o -w -E 'avx2|avx512f' /proc/cpuinfo | sort -u | tr '\n' ' ')
failed=()
for name in "${requested[@]}"; do
  settings=${CONFIGS[$name]:-}
  if [ -z "$settings" ]; then echo "[portability] unknown configuration '$name' (known: ${ORDER[*]})" >&2; exit 2; fi
  case "$name" in
    avx2) [[ $cpu_flags == *avx2* ]] || { echo "[portability] $name: CPU has no AVX2, skipped"; continue; } ;;
    avx512) [[ $cpu_flags == *avx512f* ]] || { echo "[portability] $name: CPU has no AVX-512, skipped"; continue; } ;;
  esac
  echo "[portability] $name: $settings"
  start=$(date +%s)
  # -p no:randomly etc. are not installed; one xdist worker per core as in the suite.
  if env $settings "$PYTHON" -m pytest -q -m numerics -p no:cacheprovider; then
    echo "[portability] $name: passed in $(( $(date +%s) - start )) s"
  else
    echo "[portability] $name: FAILED" >&2
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "[portability] failed under: ${failed[*]}" >&2
  exit 1
fi
echo "[portability] all requested configurations passed"
