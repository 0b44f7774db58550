"""Reference scores of pyiqa's semantic-weighted LPIPS ("lpips+", "lpips-vgg+") for reward/lpips's tests.

No fixture covers these two metrics, so this script computes them with pyiqa itself, with the deterministic weights
of the lpips / lpips_vgg fixture folders (the same networks; lpips+ only adds the weighting by the reference's
relu3 features) on every case of those folders, and writes reward/lpips/testdata/lpips_plus.json. The Go test reads
the weights and images from the repository's copies (reward/lpips/testdata, the shared inputs in testdata/), not
from $DP2O_FIXTURES: these values belong to those files.

Run from the repository root (pyiqa set up by ../shared/refenv/setup-iqa.sh into OUT_DIR):
  PYTHONPATH=OUT_DIR:<refenv> TIMM_FUSED_ATTN=0 HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/iqa_lpips_plus.py
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lpips import pyiqa_metric  # noqa: E402

torch.set_num_threads(1)
TESTDATA = 'reward/lpips/testdata'
INPUTS = 'testdata/iqa/inputs/images.safetensors'


def main():
    import pyiqa
    out = {'source': 'pyiqa ' + pyiqa.__version__, 'torch': torch.__version__, 'cases': []}
    for folder, name in [('iqa/lpips', 'lpips+'), ('iqa/lpips_vgg', 'lpips-vgg+')]:
        m, _, _, _, images, cases = pyiqa_metric(os.path.join(TESTDATA, folder), name, inputs=INPUTS)
        for c in cases['cases']:
            with torch.no_grad():
                s = m(images[c['dist']], images[c['ref']]).item()
            out['cases'].append({'folder': folder, 'metric': name, 'dist': c['dist'], 'ref': c['ref'], 'score': s})
            print(name, c['dist'], s)
    json.dump(out, open(os.path.join(TESTDATA, 'lpips_plus.json'), 'w'), indent=1)


if __name__ == '__main__':
    main()
