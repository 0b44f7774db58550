"""Q-Align throughput: pyiqa's own `qalign` metric vs the Go port (reward/qalign), side by side on the same libtorch.

Both sides score the first case of the qalign fixture with the tiny fixture model (real image size, patch grid, query
count and prompt length; small widths and depths), float32, CPU, DP2O_BENCH_THREADS libtorch threads (default 1; the
OpenBLAS pool is bounded too). pyiqa's metric is `pyiqa.create_metric('qalign', device='cpu')` loading
q-future/one-align from an offline hub snapshot of the fixture weights (scripts/qalign-ref/qalign_ref.py), checked
against every fixture score first, so both sides time the same computation. pyiqa scores one image per call: a batch
of N is N calls; the Go side scores the N images in one call (`go test ./reward/qalign -run '^$' -bench Score` with
DP2O_BENCH_BATCH=N). Both include preprocessing. Runs alternate (pyiqa, Go, ...) and each side keeps its best round.
On the shared 2-core machine pyiqa's speed changed from one run to the next (10.4 to 18.5 images/s, also pinned to
one core with taskset) while Go's stayed within 25-28: quote the range of several runs.

Set up once (git directories of the projects; see scripts/qalign-ref/setup.sh), from the repository root:
  scripts/llama-tokenizer.sh
  scripts/qalign-ref/setup.sh PYIQA_GIT TRANSFORMERS_GIT HUB_GIT TIMM_GIT EINOPS_GIT CLIP_GIT build/qalign-ref/env
Then:
  PYTHONPATH=build/qalign-ref/env /usr/bin/python3 scripts/bench_qalign.py [--batches 1,4] [--rounds 3] [--iters 3]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, 'qalign-ref'), HERE]
os.environ.setdefault('OPENBLAS_NUM_THREADS', os.environ.get('DP2O_BENCH_THREADS', '1'))
import qalign_ref  # noqa: E402  (first: it fixes the hub cache and thread settings before torch / transformers load)
import torch  # noqa: E402
from bench_iqa_models import time_go, time_pyiqa  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('fixture', nargs='?', default=qalign_ref.FIXTURE)
    ap.add_argument('--batches', default='1,4')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--iters', type=int, default=3)
    args = ap.parse_args()
    threads = int(os.environ.get('DP2O_BENCH_THREADS', '1'))
    torch.set_num_threads(threads)
    import json
    from safetensors.torch import load_file
    cases = json.load(open(os.path.join(args.fixture, 'cases.json')))
    io = load_file(os.path.join(args.fixture, 'io.safetensors'))
    metric = qalign_ref.make_metric(args.fixture)
    for c in cases['cases']:  # pyiqa on this environment reproduces the fixture: the same computation is timed
        with torch.no_grad():
            got = metric(qalign_ref.case_input(args.fixture, cases, c)).item()
        want = io[c['score']].item()
        assert abs(got - want) <= 1e-4 * abs(want) + 1e-6, (c['name'], got, want)
    x = qalign_ref.case_input(args.fixture, cases, cases['cases'][0])
    batches = [int(b) for b in args.batches.split(',')]
    py, go = {}, {}
    for _ in range(args.rounds):
        for b in batches:
            py[b] = max(py.get(b, 0), time_pyiqa('qalign', metric, x, None, b, args.iters))
            for _, v in time_go('reward/qalign', b, threads, args.iters).items():
                go[b] = max(go.get(b, 0), v)
    print(f'Q-Align (tiny fixture model, image {x.shape[3]}x{x.shape[2]}), {threads} thread(s), float32 CPU, '
          f'torch {torch.__version__}, best of {args.rounds} rounds x {args.iters} iterations')
    print(f'{"batch":>5} {"pyiqa img/s":>12} {"Go img/s":>9} {"Go/py time":>11}')
    for b in batches:
        g = go.get(b, float('nan'))
        print(f'{b:5d} {py[b]:12.2f} {g:9.2f} {py[b] / g:11.3f}')


if __name__ == '__main__':
    main()
