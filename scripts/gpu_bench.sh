#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md ("## GPU"): per family, the stock diffusers pipeline (mode.reference, in
# the same process on the same components) eager and compiled, and this runner's passes, with ms per step,
# seconds per image, peak memory, first-call time and TFLOP/s (the bench report's columns). One Hydra sweep per
# family; each job writes its report.json and the sweep its summary table under outputs/sweeps/.
#
# Usage: bash scripts/gpu_bench.sh [FAMILY ...]   (default: sd15 sdxl sd3 flux; random weights at full size)
# Needs one CUDA GPU and the PyTorch engine; fp8_linear needs compute capability 8.9 or newer.
set -euo pipefail
python=${PYTHON:-python3}
families=("$@")
[ ${#families[@]} -eq 0 ] && families=(sd15 sdxl sd3 flux)

UNET_PASSES='none,default,[channels_last,groupnorm_silu,cuda_graphs],[channels_last,groupnorm_silu,cuda_graphs,fp8_linear]'
DIT_PASSES='none,default,[cuda_graphs],[fp8_linear,cuda_graphs],[fp8_linear,step_cache]'

for family in "${families[@]}"; do
  case $family in
    sd15) args=(model=sd15 height=512 width=512 precision=fp16 scheduler=euler "passes=$UNET_PASSES") ;;
    sdxl) args=(model=sdxl height=1024 width=1024 precision=fp16 scheduler=euler "passes=$UNET_PASSES") ;;
    sd3) args=(model=sd3 height=1024 width=1024 precision=fp16 "passes=$DIT_PASSES") ;;
    flux) args=(model=flux height=1024 width=1024 precision=bf16 steps=28 "passes=$DIT_PASSES") ;;
    *) echo "unknown family '$family' (sd15, sdxl, sd3, flux)" >&2; exit 2 ;;
  esac
  # Eager and compiled; the memory modes on the eager backend.
  "$python" -m runner -m mode=bench backend=torch,inductor "${args[@]}"
  "$python" -m runner -m mode=bench backend=torch memory=lean,offload "${args[@]/passes=*/passes=none}"
done
