#!/usr/bin/env bash
# Runs the data loop's multi-process programs under the real torchrun
# (PyTorch's launcher: `apt-get install python3-torch` on Debian), two CPU
# processes talking over Gloo, on the bundled tiny models:
#
#   degrade → sample (torchrun: shard per rank, rank 0 merges)
#           → label (torchrun: PSNR/SSIM, shard per rank, rank 0 writes the labels) → pairs
#           → train (torchrun: data parallel, overlapped gradient all-reduce,
#             AdamW state and gradients sharded over the ranks, 2 accumulation steps)
#
#   scripts/torchrun-check.sh            # TORCHRUN=/path/to/torchrun to pick another
#
# It checks what each stage must leave behind and prints the ranks' output.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCHRUN=${TORCHRUN:-torchrun}
command -v "$TORCHRUN" >/dev/null || { echo "torchrun-check: $TORCHRUN not found (apt-get install python3-torch)" >&2; exit 2; }
# torch 1.13's torchrun under Python 3.11 cannot parse its own default
# "--redirects 0 --tee 0" (3.11's enum no longer lists the flag value 0)
# and stops before starting a worker; redirecting and teeing stdout (1)
# avoids that value and shows each rank's lines prefixed with its rank.
launch=("$TORCHRUN" --standalone --nproc_per_node 2 --redirects 1 --tee 1 --no_python)
export DP2O_DIST_BACKEND=gloo GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/hr"
go build -o "$work/bin/" ./examples/degrade ./examples/sample ./examples/label ./examples/pairs ./examples/train
for n in a b c d; do cp assets/sample/lr_house.png "$work/hr/$n.png"; done

"$work/bin/degrade" --hr_dir "$work/hr" --output_dir "$work/data" --gt_size 64 --quiet

echo "== sample under torchrun"
"${launch[@]}" "$work/bin/sample" --input_dir "$work/data" --output_dir "$work/cands" --num_candidates 4 \
    --num_inference_steps 2 --process_size 64 --prompt house --device cpu --quiet
test -s "$work/cands/manifest.jsonl" || { echo "torchrun-check: no merged manifest" >&2; exit 1; }
echo "merged manifest: $(wc -l < "$work/cands/manifest.jsonl") candidates"

echo "== label under torchrun"
"${launch[@]}" "$work/bin/label" --candidates "$work/cands" --metrics psnr,ssim --quiet
test -s "$work/cands/labels.json" || { echo "torchrun-check: no labels" >&2; exit 1; }
"$work/bin/pairs" --labels "$work/cands/labels.json" --top_n 1 --output "$work/pairs.json"

echo "== train under torchrun"
"${launch[@]}" "$work/bin/train" --model sd2 --pairs "$work/pairs.json" --output_dir "$work/dpo" \
    --train_batch_size 1 --max_train_steps 2 --checkpointing_steps 1 --device cpu --no_progress --shard_gradients --gradient_accumulation_steps 2
for f in checkpoint-1/model.safetensors checkpoint-2/model.safetensors model.safetensors train_log.csv; do
    test -s "$work/dpo/$f" || { echo "torchrun-check: $f missing" >&2; exit 1; }
done
echo "torchrun-check: ok"
