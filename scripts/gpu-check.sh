#!/usr/bin/env bash
# GPU check. On a machine with an NVIDIA GPU and Python's torch but no Go:
#   1. builds the shim against that torch (LIBTORCH = python's torch folder),
#   2. runs the Go test binaries built beforehand on a Go machine with
#      `make gpu-bins` (they are in .gpu/) with DP2O_DEVICE=cuda,
#   3. prints a short report: libtorch version, GPU, tests passed, matmul
#      TFLOP/s, the full-size SD2 UNet+ControlNet step benchmark, and a C-FLUX
#      training step's peak memory with and without gradient checkpointing.
# Usage: scripts/gpu-check.sh [report-file]
set -uo pipefail
cd "$(dirname "$0")/.."
report=${1:-gpu-report.txt}
bins=.gpu

LIBTORCH=${LIBTORCH:-$(python3 -c 'import torch; print(torch.__path__[0])')}
export LIBTORCH
echo "== building the shim against $LIBTORCH"
make -s shim LIBTORCH="$LIBTORCH" JOBS="$(nproc)" -j"$(nproc)" >build-shim.log 2>&1 || { tail -50 build-shim.log; exit 1; }
export LD_LIBRARY_PATH="$PWD/build:$LIBTORCH/lib:${LD_LIBRARY_PATH:-}"
export DP2O_DEVICE=cuda

{
  echo "# dp2o GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
  python3 -c 'import torch; print("python torch:", torch.__version__, "cuda", torch.version.cuda)'
  "$bins/gpucheck" -n 8192 -iters 50
} | tee "$report"

pass=0; fail=0
for t in "$bins"/*.test; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .test)
  pkg=$(cat "$bins/$name.pkg")
  echo "== go test $pkg (DP2O_DEVICE=cuda)"
  if (cd "$pkg" && "$OLDPWD/$t" -test.v -test.timeout 8m ${GPU_TEST_FLAGS:-} >"$OLDPWD/$bins/$name.log" 2>&1); then
    pass=$((pass+1)); status="ok  "
  else
    fail=$((fail+1)); status="FAIL"
  fi
  printf '%s %s (%d tests passed, %d skipped, %d failed)\n' "$status" "$pkg" \
    "$(grep -c -- '--- PASS' "$bins/$name.log")" "$(grep -c -- '--- SKIP' "$bins/$name.log")" \
    "$(grep -c -- '--- FAIL' "$bins/$name.log")" | tee -a "$report"
  [ "$status" = "FAIL" ] && grep -B2 -A12 -- '--- FAIL' "$bins/$name.log" | head -40
done
echo "tests: $pass packages passed, $fail failed" | tee -a "$report"

if [ -e "$bins/diffusion_unet.test" ]; then
  echo "== full-size SD2-base UNet + ControlNet step, 512x512, batch 2, float16" | tee -a "$report"
  (cd diffusion/unet && DP2O_BENCH_FULL=1 "$OLDPWD/$bins/diffusion_unet.test" -test.run '^$' -test.bench 'FullSize' -test.benchtime 20x 2>&1) | grep -E 'Benchmark|ms/step|MiB' | tee -a "$report"
fi
if [ -e "$bins/flow_t5.test" ]; then
  echo "== full-size T5-XXL encoder (FLUX text_encoder_2), 1x512 tokens, bfloat16" | tee -a "$report"
  (cd flow/t5 && DP2O_BENCH_FULL=1 "$OLDPWD/$bins/flow_t5.test" -test.run '^$' -test.bench 'EncoderFullSize' -test.benchtime 10x 2>&1) | grep -E 'Benchmark|ms/op' | tee -a "$report"
fi
if [ -e "$bins/flow_transformer.test" ]; then
  echo "== C-FLUX ControlNet training step through the frozen transformer, full width, 4+4 blocks, batch 2, 512x512, float32: plain vs gradient checkpointing" | tee -a "$report"
  (cd flow/transformer && DP2O_DEVICE=cuda DP2O_BENCH_HEADS=24 "$OLDPWD/$bins/flow_transformer.test" -test.run '^$' -test.bench 'TrainStepMemory' -test.benchtime 1x 2>&1) | grep -E 'Benchmark|MiB|width' | tee -a "$report"
fi
if [ -e "$bins/torch_dist.test" ]; then
  echo "== data-parallel AdamW step, 128 MiB MLP, 2 ranks on GPU 0 over Gloo, 4 passes per step: whole / optimizer sharded / gradients sharded too (peak CUDA memory per rank)" | tee -a "$report"
  (cd torch/dist && DP2O_DIST_BENCH_CUDA=1 DP2O_DIST_BENCH_ACCUM=4 "$OLDPWD/$bins/torch_dist.test" -test.run '^$' -test.bench 'ShardedStep' -test.benchtime 3x 2>&1) | grep -E 'Benchmark' | tee -a "$report"
fi
[ "$fail" -eq 0 ]
