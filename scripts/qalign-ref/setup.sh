#!/usr/bin/env bash
# Python reference environment for pyiqa's Q-Align (`qalign`) on CPU with the tiny fixture model
# (fixtures/iqa/qalign, README "Reference environment"), for scripts/bench_qalign.py. Nothing it extracts
# goes into the project.
# Usage: scripts/qalign-ref/setup.sh PYIQA_GIT TRANSFORMERS_GIT HUB_GIT TIMM_GIT EINOPS_GIT CLIP_GIT OUT_DIR
#   PYIQA_GIT:        git dir of chaofengc/IQA-PyTorch              (commit 01ae427)
#   TRANSFORMERS_GIT: git dir of huggingface/transformers or a fork  (commit $TRANSFORMERS_REV, default 11ef35e8:
#                     the last main commit at 4.39.0.dev0 = the v4.39 branch point; the 4.39.2 tag 97c00cd is used
#                     instead when the git dir has it and TRANSFORMERS_REV is unset)
#   HUB_GIT:          git dir of huggingface/huggingface_hub         (tag v0.22.2)
#   TIMM_GIT:         git dir of huggingface/pytorch-image-models    (tag v1.0.15)
#   EINOPS_GIT:       git dir of arogozhnikov/einops                 (commit ccb89f2)
#   CLIP_GIT:         git dir of openai/CLIP                         (commit d05afc4)
# Debian packages used (installed with apt-get if missing): python3-torch python3-torchvision python3-numpy
#   python3-pil python3-sentencepiece python3-protobuf python3-regex python3-yaml python3-requests python3-filelock
#   python3-tqdm python3-packaging python3-fsspec python3-typing-extensions
# Stand-ins: tokenizers (import-only, no dist-info) and icecream from stubs/ next to this script; safetensors
#   (refenv's pure-Python one, + storage_ptr/storage_size, which transformers imports) and cv2/facexlib/ftfy from
#   $REFENV (default ../shared/refenv beside the repository); dist-info metadata for huggingface_hub 0.22.2 and
#   safetensors 0.4.2 (transformers checks their versions at import).
# Then: PYTHONPATH=OUT_DIR /usr/bin/python3 scripts/qalign-ref/qalign_ref.py [FIXTURE_DIR]
set -euo pipefail
[ $# -eq 7 ] || { sed -n 2,21p "$0"; exit 2; }
pyiqa=$1 transformers=$2 hub=$3 timm=$4 einops=$5 clip=$6 out=$7
here=$(cd "$(dirname "$0")" && pwd)
refenv=${REFENV:-$(cd "$here/../../.." && pwd)/shared/refenv}
[ -d "$refenv/safetensors" ] || { echo "no refenv at $refenv (set REFENV)" >&2; exit 1; }

debs="python3-torch python3-torchvision python3-numpy python3-pil python3-sentencepiece python3-protobuf python3-regex
  python3-yaml python3-requests python3-filelock python3-tqdm python3-packaging python3-fsspec python3-typing-extensions"
missing=$(for p in $debs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

if [ -z "${TRANSFORMERS_REV:-}" ]; then
  if git --git-dir="$transformers" rev-parse -q --verify 'v4.39.2^{commit}' >/dev/null; then TRANSFORMERS_REV=v4.39.2
  else TRANSFORMERS_REV=11ef35e8281ccf38fe28c6ba6a38b565cc722585; fi
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
git --git-dir="$pyiqa" archive 01ae427 pyiqa | tar x -C "$out"
echo '__version__ = "0.1.15.post17+g01ae427"' > "$out/pyiqa/version.py"
git --git-dir="$transformers" archive "$TRANSFORMERS_REV" src/transformers | tar x --strip-components=1 -C "$out"
git --git-dir="$hub" archive v0.22.2 src/huggingface_hub | tar x --strip-components=1 -C "$out"
git --git-dir="$timm" archive v1.0.15 timm | tar x -C "$out"
git --git-dir="$einops" archive ccb89f2 einops | tar x -C "$out"
git --git-dir="$clip" archive d05afc4 clip | tar x -C "$out"
cp -r "$refenv"/iqa-stubs/* "$out/"
cp -r "$refenv"/safetensors "$here"/stubs/tokenizers "$here"/stubs/icecream "$out/"
chmod -R u+w "$out"  # the refenv copies are read-only; keep OUT_DIR removable by a non-root user
# transformers.pytorch_utils imports these two from safetensors.torch (same meaning as the real package's).
cat >> "$out/safetensors/torch.py" <<'PY'


def storage_ptr(tensor):
    try:
        return tensor.untyped_storage().data_ptr()
    except AttributeError:  # torch < 2.0
        return tensor.storage().data_ptr()


def storage_size(tensor):
    try:
        return tensor.untyped_storage().nbytes()
    except AttributeError:  # torch < 2.0
        return tensor.storage().size() * tensor.element_size()
PY
# transformers reads these versions with importlib.metadata at import time (dependency_versions_check).
for nv in huggingface_hub:0.22.2 safetensors:0.4.2; do
  n=${nv%%:*} v=${nv#*:}
  d="$out/$n-$v.dist-info"; mkdir -p "$d"
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: source tree extracted by setup-qalign.sh (stand-in metadata)\n' "$n" "$v" > "$d/METADATA"
  printf '%s\n' "$n" > "$d/top_level.txt"
  : > "$d/RECORD"
done
echo "transformers rev: $TRANSFORMERS_REV" > "$out/QALIGN_REFENV.txt"
cd /
check_cache=$(mktemp -d); trap 'rm -rf "$check_cache"' EXIT
HF_HUB_CACHE="$check_cache" PYTHONPATH="$out" TIMM_FUSED_ATTN=0 HF_HUB_OFFLINE=1 /usr/bin/python3 -c '
import transformers, huggingface_hub, pyiqa
from transformers.utils import is_tokenizers_available, is_safetensors_available
assert not is_tokenizers_available() and is_safetensors_available()
from pyiqa.archs.qalign_arch import QAlign
print("transformers", transformers.__version__, "huggingface_hub", huggingface_hub.__version__, "pyiqa", pyiqa.__version__, "ready")'
