#!/bin/sh
# Cross-checks the hub package with huggingface_hub on the same cache:
# Python downloads, Go reads offline; Go downloads, Python reads offline;
# both cache trees must be the same. Needs a Python with huggingface_hub
# (PYTHONPATH=/path/to/it; PYTHON names the interpreter, default python3).
set -eu
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/hubcheck" ./scripts/hubcheck
mkfifo "$tmp/in"
"$tmp/hubcheck" serve <"$tmp/in" >"$tmp/url" &
exec 3>"$tmp/in"
while [ ! -s "$tmp/url" ]; do sleep 0.1; done
export HF_ENDPOINT="$(cat "$tmp/url")" HF_HUB_DISABLE_PROGRESS_BARS=1
# Unset, not empty: huggingface_hub takes an empty HF_HUB_CACHE as the
# current folder.
unset HF_HUB_CACHE HUGGINGFACE_HUB_CACHE HF_TOKEN HF_HUB_OFFLINE
cd "$tmp"
files="model_index.json unet/config.json unet/diffusion_pytorch_model.safetensors"

echo "1. Python downloads into A; Go reads A offline"
HF_HOME="$tmp/A" "$PYTHON" -c "
import sys
from huggingface_hub import hf_hub_download
for f in sys.argv[1:]: hf_hub_download('org/tiny', f)" $files
HF_HOME="$tmp/A" HF_HUB_OFFLINE=1 "$tmp/hubcheck" get org/tiny main $files

echo "2. Go downloads into B; Python reads B offline"
HF_HOME="$tmp/B" "$tmp/hubcheck" get org/tiny main $files
HF_HOME="$tmp/B" HF_HUB_OFFLINE=1 "$PYTHON" -c "
import sys
from huggingface_hub import hf_hub_download
for f in sys.argv[1:]: print(hf_hub_download('org/tiny', f))" $files

echo "3. the two caches hold the same tree (names, symlink targets, sizes)"
list() { (cd "$1/hub" && find . -path ./.locks -prune -o -printf '%p %y %l %s\n' | grep -v '^\./\.locks' | awk '{ if ($2 == "l") $4 = ""; print }' | sort); }
list "$tmp/A" >"$tmp/a.txt"
list "$tmp/B" >"$tmp/b.txt"
if diff "$tmp/a.txt" "$tmp/b.txt"; then cat "$tmp/a.txt"; echo "same"; else echo "DIFFERENT"; exit 1; fi
exec 3>&-
