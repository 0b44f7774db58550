"""LPIPS throughput: pyiqa's create_metric(...) forward vs the Go port, side by side on the same libtorch.

Both sides score the same batch (DP2O_BENCH_BATCH copies of the first fixture case's distorted image against its
reference, float32, CPU, DP2O_BENCH_THREADS libtorch threads) with the same deterministic weights
(fixtures/DETINIT.md, rebuilt here from the fixture manifest and seed; pyiqa's score is checked against the fixture
first, so both sides time the same computation). The runs alternate (pyiqa, Go, pyiqa, Go, ...) and each side keeps
its best round, to damp the load of a shared machine. The Go side is `go test ./reward/lpips -bench LPIPS`:
"pairs" feeds the reference repeated (pyiqa's computation), "group" the reference expanded (one reference for a
group of candidates, the reward's case; pyiqa has no such path, so it is compared with the same pyiqa number);
"exact" is the default path (pyiqa's kernels, bit for bit), "fast" the channels-last one (OpenOptions.Fast).

Run from the repository root, with pyiqa set up by /work/shared/refenv/setup-iqa.sh into OUT_DIR:
  PYTHONPATH=OUT_DIR:/work/refenv-py TIMM_FUSED_ATTN=0 HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_lpips.py [--rounds 3]
"""
import argparse
import json
import math
import os
import re
import subprocess
import time

import torch

FIX = os.environ.get('DP2O_FIXTURES') or 'reward/lpips/testdata'
FOLDERS = {'lpips': 'iqa/lpips', 'lpips_vgg': 'iqa/lpips_vgg'}


def detinit(manifest, seed):
    """dp2o-init-v1 (fixtures/DETINIT.md)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(manifest, key=lambda s: s.encode()):
        shape, dt = manifest[k]['shape'], getattr(torch, manifest[k]['dtype'])
        if not dt.is_floating_point:
            out[k] = torch.zeros(shape, dtype=dt)
            continue
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        if k.endswith('running_var'):
            r = 1 + 0.1 * r.abs()
        elif len(shape) >= 2:
            r = r / math.sqrt(math.prod(shape[1:]))
        elif len(shape) == 1 and (k.endswith('weight') or k.endswith('gamma') or k.endswith('scale')):
            r = 1 + 0.1 * r
        else:
            r = 0.02 * r
        out[k] = r.to(dt)
    return out


def pyiqa_metric(folder):
    import pyiqa
    import torchvision.models as tvm
    from pyiqa.archs import lpips_arch
    from safetensors.torch import load_file

    # pyiqa builds torchvision's backbones with ImageNet weights (a download); the fixtures use weights=None.
    alexnet, vgg16 = tvm.alexnet, tvm.vgg16
    lpips_arch.models.alexnet = lambda weights=None, **kw: alexnet(weights=None)
    lpips_arch.models.vgg16 = lambda weights=None, **kw: vgg16(weights=None)
    cases = json.load(open(os.path.join(folder, 'cases.json')))
    m = pyiqa.create_metric(cases['pyiqa_name'], device='cpu', pretrained=False)
    sd = detinit(json.load(open(os.path.join(folder, cases['model']['manifest']))), cases['model']['seed'])
    if cases['model'].get('fixed'):
        sd.update(load_file(os.path.join(folder, cases['model']['fixed'])))
    for alias, key in cases['model'].get('aliases', {}).items():
        sd[alias] = sd[key]
    m.net.load_state_dict(sd, strict=True)
    m.eval()
    images = load_file(os.path.normpath(os.path.join(folder, cases['inputs'])))
    io = load_file(os.path.join(folder, 'io.safetensors'))
    c = cases['cases'][0]
    with torch.no_grad():
        got = m(images[c['dist']], images[c['ref']]).item()
    want = io[c['score']].item()
    assert abs(got - want) <= 1e-4 * abs(want) + 1e-6, (got, want)
    return m, images[c['dist']], images[c['ref']], c


def time_pyiqa(m, dist, ref, batch, iters):
    d = dist.expand(batch, -1, -1, -1).contiguous()
    r = ref.expand(batch, -1, -1, -1).contiguous()
    best = float('inf')
    with torch.no_grad():
        m(d, r)  # warm-up
        for _ in range(iters):
            t = time.perf_counter()
            m(d, r)
            best = min(best, time.perf_counter() - t)
    return batch / best


def time_go(batch, threads, iters):
    env = dict(os.environ, DP2O_BENCH_BATCH=str(batch), DP2O_BENCH_THREADS=str(threads), GOMAXPROCS='1')
    out = subprocess.run(['go', 'test', './reward/lpips', '-run', '^$', '-bench', 'LPIPS', '-benchtime', f'{iters}x'],
                         env=env, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        m = re.match(r'BenchmarkLPIPS/metric=(\S+?)/path=(\w+)/mode=(\w+)/\S*\s+\d+\s+\d+ ns/op\s+([\d.]+) images/s', line)
        if m:
            res[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--iters', type=int, default=3)
    args = ap.parse_args()
    batch = int(os.environ.get('DP2O_BENCH_BATCH', '4'))
    threads = int(os.environ.get('DP2O_BENCH_THREADS', '1'))
    torch.set_num_threads(threads)
    metrics = {k: pyiqa_metric(os.path.join(FIX, v)) for k, v in FOLDERS.items()}
    py, go = {}, {}
    for _ in range(args.rounds):
        for k, (m, d, r, _) in metrics.items():
            py[k] = max(py.get(k, 0), time_pyiqa(m, d, r, batch, args.iters))
        for key, v in time_go(batch, threads, args.iters).items():
            go[key] = max(go.get(key, 0), v)
    c = next(iter(metrics.values()))[3]
    print(f'LPIPS, batch {batch} x {c["shape"][3]}x{c["shape"][2]}, {threads} thread(s), float32 CPU, torch {torch.__version__}')
    print('images/s (best round); ratio = Go time / pyiqa time per image')
    print(f'{"metric":10} {"path":6} {"pyiqa":>8} {"Go pairs":>9} {"Go group":>9} {"ratio pairs":>12} {"ratio group":>12}')
    for k in metrics:
        for path in ('exact', 'fast'):
            p = py[k]
            gp, gg = go.get((k, path, 'pairs'), float('nan')), go.get((k, path, 'group'), float('nan'))
            print(f'{k:10} {path:6} {p:8.3f} {gp:9.3f} {gg:9.3f} {p / gp:12.3f} {p / gg:12.3f}')


if __name__ == '__main__':
    main()
