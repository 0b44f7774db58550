#!/bin/sh
# Build an alternate fixture set: sd2/ (and, with WITH_FLUX=1, flux/transformer,
# flux/controlnet, flux/vae, flux/scheduler and flux/clip_l) regenerated with other configs, shapes and seeds; every
# other top-level folder linked to the public set.
#
#   scripts/altfixtures/build.sh OUT_DIR [a|b] [PUBLIC_FIXTURES]
#   DP2O_FIXTURES=OUT_DIR go test -count=1 ./diffusion/...
#
# flux/pipeline (and preference/train_*) were made from the public tiny models,
# so a set with WITH_FLUX=1 is for ./flow/transformer, ./flow/scheduler,
# ./diffusion/vae and ./diffusion/clip, not ./flow.
set -eu
out=${1:?usage: build.sh OUT_DIR [a|b] [PUBLIC_FIXTURES]}
variant=${2:-a}
pub=${3:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/fixtures}
here=$(cd "$(dirname "$0")" && pwd)
refenv=${REFENV:?set REFENV to the reference Python environment (../shared/refenv)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
PYTHONPATH=$refenv HF_HUB_OFFLINE=1 /usr/bin/python3 "$here/gen_sd2.py" "$out" --variant "$variant" --public "$pub/sd2"
python3 "$here/check_layout.py" "$out/sd2" "$pub/sd2"
if [ "${WITH_FLUX:-0}" = 1 ]; then
	PYTHONPATH=$refenv HF_HUB_OFFLINE=1 /usr/bin/python3 "$here/gen_flux.py" "$out" --variant "$variant" --public "$pub/flux"
	python3 "$here/check_layout.py" "$out/flux" "$pub/flux"
fi
for f in "$pub"/*; do
	name=$(basename "$f")
	[ -e "$out/$name" ] || ln -s "$f" "$out/$name"
done
echo "alternate set in $out (variant $variant)"
