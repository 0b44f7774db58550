"""IQA metric throughput: pyiqa's create_metric(...) forward vs the Go ports, side by side on the same libtorch.

Metrics: topiq_nr, topiq_fr, clipiqa+, musiq, maniqa, afine_fr, afine_nr (select with --metrics). Both sides score the
first fixture case's image (FR: against its reference), DP2O_BENCH_BATCH copies per call (pyiqa's A-FINE takes one
image per call: it is timed image by image), float32, CPU, DP2O_BENCH_THREADS libtorch threads, with the same
deterministic weights (fixtures/DETINIT.md, rebuilt here from the fixture manifests, seeds, post_scale and fixed
tensors). pyiqa's score is checked against the fixture first, so both sides time the same computation. pyiqa would
download ImageNet/CLIP weights at construction; the same networks are built without them (timm pretrained=False,
backbone_pretrain=False, CLIP from its config), which changes no computation. Runs alternate (pyiqa, Go, ...) and each
side keeps its best round. The Go side is `go test ./reward/<pkg> -run '^$' -bench Score`; for FR metrics "group"
feeds one reference expanded over the batch (the reward's case; pyiqa has no such path: compared with the same pyiqa
number).

Run from the repository root, with pyiqa set up by ../shared/refenv/setup-iqa.sh into OUT_DIR:
  PYTHONPATH=OUT_DIR:<refenv> TIMM_FUSED_ATTN=0 HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_iqa_models.py \
      [--metrics topiq_nr,musiq] [--rounds 2] [--iters 2]
"""
import argparse
import json
import math
import os
import re
import subprocess
import tempfile
import time

import torch

METRICS = {  # pyiqa name -> (Go package, fixture folder)
    'topiq_nr': ('reward/topiq', 'iqa/topiq_nr'),
    'topiq_fr': ('reward/topiq', 'iqa/topiq_fr'),
    'clipiqa+': ('reward/clipiqa', 'iqa/clipiqa+'),
    'musiq': ('reward/musiq', 'iqa/musiq'),
    'maniqa': ('reward/maniqa', 'iqa/maniqa'),
    'afine_fr': ('reward/afine', 'iqa/afine'),
    'afine_nr': ('reward/afine', 'iqa/afine'),
}
AFINE_SECTIONS = {'finetuned_clip': 'clip_model', 'natural': 'net_qhead', 'fidelity': 'net_dhead',
                  'fidelity_scale': 'net_scale_fr', 'natural_scale': 'net_scale_nr', 'adapter': 'adapter'}


def fixture_dir(pkg, folder):
    root = os.environ.get('DP2O_FIXTURES') or os.path.join(pkg, 'testdata')
    return os.path.join(root, folder)


def fixture_file(pkg, folder, rel):
    """A file of the folder, or (as testutil.Fixture) the module root's shared testdata/ copy."""
    p = os.path.normpath(os.path.join(fixture_dir(pkg, folder), rel))
    if os.environ.get('DP2O_FIXTURES') or os.path.exists(p):
        return p
    return os.path.normpath(os.path.join('testdata', folder, rel))


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


def weights(folder, cases, model=None):
    from safetensors.torch import load_file
    model = model or cases['model']
    sd = detinit(json.load(open(os.path.join(folder, model['manifest']))), model['seed'])
    for k, f in (model.get('post_scale') or {}).items():
        sd[k].mul_(f)
    if model.get('fixed'):
        sd.update(load_file(os.path.join(folder, model['fixed'])))
    return sd


def clip_from_config(cfg):
    from pyiqa.archs.clip_model import CLIP
    return CLIP(**cfg).float().eval()


def build(name, folder, cases):
    """The pyiqa metric with the fixture's weights."""
    import pyiqa
    if name.startswith('topiq'):
        m = pyiqa.create_metric(name, device='cpu', pretrained=False, backbone_pretrain=False)
        m.net.load_state_dict(weights(folder, cases), strict=True)
    elif name == 'musiq':
        m = pyiqa.create_metric(name, device='cpu', pretrained=False)
        m.net.load_state_dict(weights(folder, cases), strict=True)
    elif name == 'maniqa':
        import timm
        create = timm.create_model
        timm.create_model = lambda n, pretrained=False, **kw: create(n, pretrained=False, **kw)
        try:
            m = pyiqa.create_metric(name, device='cpu', pretrained=False)
        finally:
            timm.create_model = create
        m.net.load_state_dict(weights(folder, cases), strict=True)
    elif name == 'clipiqa+':
        from pyiqa.archs import clipiqa_arch
        cfg = cases['clip_config']
        clipiqa_arch.load = lambda backbone, device='cpu': clip_from_config(cfg)
        m = pyiqa.create_metric(name, device='cpu', pretrained=False)
        clip_model = m.net.clip_model[0]
        clip_model.load_state_dict(weights(folder, cases), strict=True)
        m.net.prompt_learner = clipiqa_arch.PromptLearner(clip_model)  # prefix/suffix from the loaded embedding
        ctx = weights(folder, cases, dict(cases['model']['prompt_ctx'], post_scale={}, fixed=None))
        m.net.prompt_learner.ctx.data = ctx['prompt_learner.ctx']
    elif name.startswith('afine'):
        from pyiqa.archs import afine_arch
        from pyiqa.archs.afineclip_model import AFINECLIP
        cfg = cases['clip_config']
        afine_arch.load = lambda backbone, device='cpu', jit=False: (AFINECLIP(**cfg).float().eval(), None)
        sd = weights(folder, cases)
        published = {sec: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + '.')}
                     for sec, p in AFINE_SECTIONS.items()}
        path = os.path.join(tempfile.mkdtemp(), 'afine.pth')
        torch.save(published, path)
        m = pyiqa.create_metric(name, device='cpu', pretrained_model_path=path)
    else:
        raise ValueError(name)
    m.eval()
    return m


def case_inputs(name, folder, cases):
    from safetensors.torch import load_file
    pkg, rel = METRICS[name]
    images = load_file(fixture_file(pkg, rel, cases['inputs']))
    c = next(c for c in cases['cases'] if c.get('metric', name) == name)
    if 'ref' in c:
        return images[c['dist']], images[c['ref']], c
    return images[c['image']], None, c


def check(name, m, img, ref, c, folder):
    from safetensors.torch import load_file
    with torch.no_grad():
        got = (m(img.clone(), ref.clone()) if ref is not None else m(img.clone())).item()
    want = load_file(os.path.join(folder, 'io.safetensors'))[c['score']].item()
    assert abs(got - want) <= 1e-4 * abs(want) + 1e-6, (name, got, want)


def time_pyiqa(name, m, img, ref, batch, iters):
    # pyiqa's A-FINE squeezes the batch dim; its Q-Align takes one image per call
    one_at_a_time = name.startswith('afine') or name == 'qalign'
    d = img.expand(batch, -1, -1, -1).contiguous()
    r = ref.expand(batch, -1, -1, -1).contiguous() if ref is not None else None

    def run():
        if one_at_a_time:  # fresh copies: pyiqa normalises its inputs in place
            for i in range(batch):
                m(d[i:i + 1].clone(), r[i:i + 1].clone() if r is not None else None)
        elif r is not None:
            m(d, r)
        else:
            m(d)

    best = float('inf')
    with torch.no_grad():
        run()  # warm-up
        for _ in range(iters):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
    return batch / best


def time_go(pkg, batch, threads, iters):
    env = dict(os.environ, DP2O_BENCH_BATCH=str(batch), DP2O_BENCH_THREADS=str(threads), GOMAXPROCS='1')
    cmd = ['go', 'test', './' + pkg, '-run', '^$', '-bench', 'Score', '-benchtime', f'{iters}x']
    for attempt in range(3):  # a shared checkout may be mid-rebuild of the shim: retry a failed build
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(30)
    else:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}')
    out = r.stdout
    res = {}
    for line in out.splitlines():
        mm = re.match(r'BenchmarkScore(?:/(\S+?)/(\w+))?(?:-\d+)?\s+\d+\s+\d+ ns/op\s+([\d.]+) images/s', line)
        if mm:
            res[(mm.group(1), mm.group(2) or 'nr')] = float(mm.group(3))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--metrics', default=','.join(METRICS))
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--iters', type=int, default=2)
    args = ap.parse_args()
    batch = int(os.environ.get('DP2O_BENCH_BATCH', '1'))
    threads = int(os.environ.get('DP2O_BENCH_THREADS', '1'))
    torch.set_num_threads(threads)
    names = args.metrics.split(',')
    metrics = {}
    for name in names:
        pkg, rel = METRICS[name]
        folder = fixture_dir(pkg, rel)
        cases = json.load(open(os.path.join(folder, 'cases.json')))
        m = build(name, folder, cases)
        img, ref, c = case_inputs(name, folder, cases)
        check(name, m, img, ref, c, folder)
        metrics[name] = (m, img, ref, c)
    py, go = {}, {}
    for _ in range(args.rounds):
        for name, (m, img, ref, _) in metrics.items():
            py[name] = max(py.get(name, 0), time_pyiqa(name, m, img, ref, batch, args.iters))
        for pkg in sorted({METRICS[n][0] for n in names}):
            for (metric, mode), v in time_go(pkg, batch, threads, args.iters).items():
                key = (metric or next(n for n in names if METRICS[n][0] == pkg), mode)
                go[key] = max(go.get(key, 0), v)
    print(f'IQA metrics, batch {batch}, {threads} thread(s), float32 CPU, torch {torch.__version__}')
    print(f'{"metric":10} {"size":>9} {"pyiqa img/s":>12} {"Go img/s":>9} {"Go/py time":>11} {"Go group":>9} {"group/py":>9}')
    for name, (_, img, _, _) in metrics.items():
        mode = 'nr' if name in ('topiq_nr', 'clipiqa+', 'musiq', 'maniqa', 'afine_nr') else 'pairs'
        p, g = py[name], go.get((name, mode), float('nan'))
        gg = go.get((name, 'group'), float('nan'))
        size = f'{img.shape[3]}x{img.shape[2]}'
        print(f'{name:10} {size:>9} {p:12.3f} {g:9.3f} {p / g:11.3f} {gg:9.3f} {p / gg:9.3f}')


if __name__ == '__main__':
    main()
