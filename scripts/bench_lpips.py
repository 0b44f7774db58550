"""LPIPS throughput: pyiqa's create_metric(...) forward vs the Go port, side by side on the same libtorch.

Both sides score the same batch (DP2O_BENCH_BATCH copies of the first fixture case's distorted image against its
reference, float32, CPU, DP2O_BENCH_THREADS libtorch threads) with the same deterministic weights
(fixtures/DETINIT.md, rebuilt here from the fixture manifest and seed; pyiqa's score is checked against the fixture
first, so both sides time the same computation). The runs alternate (pyiqa, Go, pyiqa, Go, ...) and each side keeps
its best round, to damp the load of a shared machine. Each side also reports images per CPU second of its process
(time.process_time / getrusage), which a loaded machine disturbs much less than the wall clock; the ratios use it. The Go side is `go test ./reward/lpips -bench LPIPS`:
"pairs" feeds the reference repeated (pyiqa's computation), "group" the reference expanded (one reference for a
group of candidates, the reward's case; pyiqa has no such path, so it is compared with the same pyiqa number);
"exact" is the default path (pyiqa's kernels, bit for bit), "fast" the channels-last one (OpenOptions.Fast).

Run from the repository root, with pyiqa set up by ../shared/refenv/setup-iqa.sh into OUT_DIR:
  PYTHONPATH=OUT_DIR:<refenv> TIMM_FUSED_ATTN=0 HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_lpips.py [--rounds 3]
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import torch

FIX = os.environ.get('DP2O_FIXTURES') or 'reward/lpips/testdata'
# Without $DP2O_FIXTURES the shared inputs are the repository's testdata/iqa/inputs.
INPUTS = None if os.environ.get('DP2O_FIXTURES') else 'testdata/iqa/inputs/images.safetensors'
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


def pyiqa_metric(folder, name=None, inputs=None):
    """pyiqa's metric (cases.json's pyiqa_name, or name) with the folder's deterministic weights; with the folder's own
    metric, its first case is checked against the fixture."""
    import pyiqa
    import torchvision.models as tvm
    from pyiqa.archs import lpips_arch
    from safetensors.torch import load_file

    # pyiqa builds torchvision's backbones with ImageNet weights (a download); the fixtures use weights=None.
    alexnet, vgg16 = tvm.alexnet, tvm.vgg16
    lpips_arch.models.alexnet = lambda weights=None, **kw: alexnet(weights=None)
    lpips_arch.models.vgg16 = lambda weights=None, **kw: vgg16(weights=None)
    cases = json.load(open(os.path.join(folder, 'cases.json')))
    m = pyiqa.create_metric(name or cases['pyiqa_name'], device='cpu', pretrained=False)
    sd = detinit(json.load(open(os.path.join(folder, cases['model']['manifest']))), cases['model']['seed'])
    if cases['model'].get('fixed'):
        sd.update(load_file(os.path.join(folder, cases['model']['fixed'])))
    for alias, key in cases['model'].get('aliases', {}).items():
        sd[alias] = sd[key]
    m.net.load_state_dict(sd, strict=True)
    m.eval()
    images = load_file(inputs or os.path.normpath(os.path.join(folder, cases['inputs'])))
    io = load_file(os.path.join(folder, 'io.safetensors'))
    c = cases['cases'][0]
    with torch.no_grad():
        got = m(images[c['dist']], images[c['ref']]).item()
    want = io[c['score']].item()
    assert name is not None or abs(got - want) <= 1e-4 * abs(want) + 1e-6, (got, want)
    return m, images[c['dist']], images[c['ref']], c, images, cases


def time_pyiqa(m, dist, ref, batch, iters):
    """(images/s wall, images per CPU second), best of iters calls."""
    d = dist.expand(batch, -1, -1, -1).contiguous()
    r = ref.expand(batch, -1, -1, -1).contiguous()
    best, best_cpu = float('inf'), float('inf')
    with torch.no_grad():
        m(d, r)  # warm-up
        for _ in range(iters):
            t, c = time.perf_counter(), time.process_time()
            m(d, r)
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
    return batch / best, batch / best_cpu


def time_go(batch, threads, iters):
    env = dict(os.environ, DP2O_BENCH_BATCH=str(batch), DP2O_BENCH_THREADS=str(threads), GOMAXPROCS='1')
    out = subprocess.run(['go', 'test', './reward/lpips', '-run', '^$', '-bench', 'LPIPS', '-benchtime', f'{iters}x'],
                         env=env, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        m = re.match(r'BenchmarkLPIPS/metric=(\S+?)/path=(\w+)/mode=(\w+)/\S*\s+\d+\s+\d+ ns/op'
                     r'\s+([\d.]+) images/cpu-s\s+([\d.]+) images/s', line)
        if m:
            res[(m.group(1), m.group(2), m.group(3))] = (float(m.group(5)), float(m.group(4)))
    return res


# Both processes get the same fixed glibc malloc thresholds. With the default dynamic ones, a process that has
# already freed a large block (this one, after its first VGG round) serves later allocations from its heap while a
# fresh process (each Go run) still maps and faults in new pages: an order effect, not a property of either side.
TUNABLES = 'glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864'


def main():
    if os.environ.get('GLIBC_TUNABLES') != TUNABLES:
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, GLIBC_TUNABLES=TUNABLES))
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--iters', type=int, default=3)
    args = ap.parse_args()
    batch = int(os.environ.get('DP2O_BENCH_BATCH', '4'))
    threads = int(os.environ.get('DP2O_BENCH_THREADS', '1'))
    torch.set_num_threads(threads)
    metrics = {k: pyiqa_metric(os.path.join(FIX, v), inputs=INPUTS) for k, v in FOLDERS.items()}
    py, go = {}, {}
    for _ in range(args.rounds):
        for k, (m, d, r, *_) in metrics.items():
            w, c = time_pyiqa(m, d, r, batch, args.iters)
            pw, pc = py.get(k, (0, 0))
            py[k] = (max(pw, w), max(pc, c))
        for key, (w, c) in time_go(batch, threads, args.iters).items():
            gw, gc = go.get(key, (0, 0))
            go[key] = (max(gw, w), max(gc, c))
    c = next(iter(metrics.values()))[3]
    print(f'GLIBC_TUNABLES={TUNABLES} (both sides)')
    print(f'LPIPS, batch {batch} x {c["shape"][3]}x{c["shape"][2]}, {threads} thread(s), float32 CPU, torch {torch.__version__}')
    print('images per CPU second (images/s wall) of the best round; ratio = Go CPU time / pyiqa CPU time per image')
    print(f'{"metric":10} {"path":6} {"pyiqa":>15} {"Go pairs":>15} {"Go group":>15} {"ratio pairs":>12} {"ratio group":>12}')
    nan = (float('nan'), float('nan'))
    for k in metrics:
        for path in ('exact', 'fast'):
            (pw, pc) = py[k]
            (gpw, gpc), (ggw, ggc) = go.get((k, path, 'pairs'), nan), go.get((k, path, 'group'), nan)
            print(f'{k:10} {path:6} {pc:7.3f} ({pw:5.2f}) {gpc:7.3f} ({gpw:5.2f}) {ggc:7.3f} ({ggw:5.2f}) '
                  f'{pc / gpc:12.3f} {pc / ggc:12.3f}')


if __name__ == '__main__':
    main()
