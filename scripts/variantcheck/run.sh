#!/bin/sh
# Saves the bundled tiny UNet with diffusers' save_pretrained in every
# published file layout and loads each with the Go loader. Needs a Python
# with torch and diffusers (PYTHONPATH=/path/to/it; PYTHON names the
# interpreter, default python3).
set -eu
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
HF_HUB_OFFLINE=1 "$PYTHON" scripts/variantcheck/save_unet.py "$tmp/out" assets/tiny-sd2/unet 2>/dev/null
go build -o "$tmp/variantcheck" ./scripts/variantcheck
for d in sharded bin; do "$tmp/variantcheck" assets/tiny-sd2/unet "$tmp/out/$d" ""; done
for d in fp16 fp16sharded fp16bin; do "$tmp/variantcheck" assets/tiny-sd2/unet "$tmp/out/$d" fp16; done
