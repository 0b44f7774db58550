"""pyiqa's own Q-Align metric (`qalign`) on CPU with the tiny fixture model (fixtures/iqa/qalign).

    make_metric(fixture_dir) -> pyiqa.create_metric('qalign', device='cpu') with the fixture's weights

writes an offline Hugging Face hub-cache snapshot of `q-future/one-align` (the fixture's tiny config.json, the Q-Align
preprocessor_config.json from cases.json, Meta's LLaMA tokenizer.model, a Llama-2-hf style tokenizer_config.json and a
model.safetensors with the dp2o-init-v1 weights of the fixture), applies the fixture README's two float32 patches
(QAlign._get_model_dtype -> float32; the score weight_tensor [5,4,3,2,1] preset in float32) and returns the metric.

The hub cache must be chosen before transformers / huggingface_hub are imported (they read HF_HUB_CACHE at import),
so import this module first: it sets HF_HUB_CACHE (default build/qalign-ref/hub in the repository), HF_HUB_OFFLINE=1,
TIMM_FUSED_ATTN=0 and OPENBLAS_NUM_THREADS=1 unless already set. The tokenizer.model is the one
scripts/llama-tokenizer.sh puts in build/llama (or QALIGN_TOKENIZER_MODEL).

Run (environment from scripts/qalign-ref/setup.sh):
    PYTHONPATH=OUT_DIR /usr/bin/python3 scripts/qalign-ref/qalign_ref.py [FIXTURE_DIR] [--tokenizer PATH] [--iters N]
scores every case of cases.json and prints |pyiqa - fixture| per case, then the time of one forward at 1 thread.
"""
import hashlib
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, '..', '..'))
os.environ.setdefault('HF_HUB_CACHE', os.path.join(REPO, 'build', 'qalign-ref', 'hub'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TIMM_FUSED_ATTN', '0')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')
# Debian's torch links OpenBLAS (pthread build), whose pool is NOT bounded by torch.set_num_threads(): it uses nproc
# threads unless this is set before torch is imported. Default to 1 so a "1 thread" run really is single-threaded.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(HERE))  # scripts/: bench_iqa_models

REPO_ID = 'q-future/one-align'
TOKENIZER_MODEL = os.environ.get('QALIGN_TOKENIZER_MODEL', os.path.join(REPO, 'build', 'llama', 'tokenizer.model'))
FIXTURE = os.path.join(os.environ.get('DP2O_FIXTURES') or os.path.join(REPO, '..', 'shared', 'fixtures'), 'iqa', 'qalign')

# Llama-2-*-hf style tokenizer_config.json (one-align's own file was not available to the fixture generator either;
# the fixture README asserts legacy True/False give the same ids for the Q-Align strings).
_SPECIAL = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
TOKENIZER_CONFIG = {
    'add_bos_token': True,
    'add_eos_token': False,
    'added_tokens_decoder': {str(i): dict(_SPECIAL, content=t, special=True)
                             for i, t in enumerate(['<unk>', '<s>', '</s>'])},
    'bos_token': '<s>',
    'clean_up_tokenization_spaces': False,
    'eos_token': '</s>',
    'legacy': False,
    'model_max_length': 1000000000000000019884624838656,
    'pad_token': None,
    'padding_side': 'right',
    'sp_model_kwargs': {},
    'tokenizer_class': 'LlamaTokenizer',
    'unk_token': '<unk>',
}
SPECIAL_TOKENS_MAP = {'bos_token': dict(_SPECIAL, content='<s>'), 'eos_token': dict(_SPECIAL, content='</s>'),
                      'unk_token': dict(_SPECIAL, content='<unk>')}


def fixture_weights(folder, cases):
    """The fixture's weights: dp2o-init-v1 over the manifest, then the fixed tensors (the 4 abstractor position
    buffers), as every IQA benchmark builds them (scripts/bench_iqa_models.py:weights)."""
    from bench_iqa_models import weights
    return weights(folder, cases)


def write_hub_snapshot(folder, hub_cache=None, tokenizer_model=TOKENIZER_MODEL):
    """Write models--q-future--one-align/{snapshots/<hash>/, refs/main} under hub_cache; returns the snapshot dir."""
    from safetensors.torch import save_file
    hub_cache = hub_cache or os.environ['HF_HUB_CACHE']
    cases = json.load(open(os.path.join(folder, 'cases.json')))
    tokens = json.load(open(os.path.join(folder, 'tokens.json')))
    tok = open(tokenizer_model, 'rb').read()
    got = hashlib.sha256(tok).hexdigest()
    if got != tokens['tokenizer_model_sha256']:
        raise ValueError(f'{tokenizer_model}: sha256 {got} != tokens.json {tokens["tokenizer_model_sha256"]}')
    files = {
        'config.json': open(os.path.join(folder, cases['model']['config']), 'rb').read(),
        'preprocessor_config.json': json.dumps(cases['preprocess']['processor'], indent=2).encode(),
        'tokenizer.model': tok,
        'tokenizer_config.json': json.dumps(TOKENIZER_CONFIG, indent=2).encode(),
        'special_tokens_map.json': json.dumps(SPECIAL_TOKENS_MAP, indent=2).encode(),
    }
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b'\0' + hashlib.sha256(files[name]).digest())
    for name in ('manifest', 'fixed'):  # the weights are a function of these files + the seed
        h.update(open(os.path.join(folder, cases['model'][name]), 'rb').read())
    h.update(str(cases['model']['seed']).encode())
    rev = h.hexdigest()
    root = os.path.join(hub_cache, 'models--' + REPO_ID.replace('/', '--'))
    snap = os.path.join(root, 'snapshots', rev)
    if not os.path.exists(os.path.join(snap, 'model.safetensors')):
        tmp = snap + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, data in files.items():
            with open(os.path.join(tmp, name), 'wb') as f:
                f.write(data)
        save_file(fixture_weights(folder, cases), os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
        shutil.rmtree(snap, ignore_errors=True)
        os.rename(tmp, snap)
    os.makedirs(os.path.join(root, 'refs'), exist_ok=True)
    with open(os.path.join(hub_cache, 'version.txt'), 'w') as f:  # transformers' cache-layout marker (no migration)
        f.write('1')
    with open(os.path.join(root, 'refs', 'main'), 'w') as f:
        f.write(rev)
    return snap


def _check_hub_cache(hub_cache):
    """transformers / huggingface_hub fix the cache directory at import: make sure it is the one we wrote."""
    import huggingface_hub.constants as hc
    import transformers.utils.hub as th
    for name, v in (('huggingface_hub.constants.HF_HUB_CACHE', hc.HF_HUB_CACHE),
                    ('transformers.utils.hub.TRANSFORMERS_CACHE', th.TRANSFORMERS_CACHE)):
        if os.path.realpath(v) != os.path.realpath(hub_cache):
            raise RuntimeError(f'{name} = {v}, not {hub_cache}: import qalign_ref (or set HF_HUB_CACHE) before '
                               'importing transformers / pyiqa')
    if not hc.HF_HUB_OFFLINE:
        raise RuntimeError('HF_HUB_OFFLINE must be 1 before huggingface_hub is imported')


def _patch_added_token():
    """Without the `tokenizers` package transformers falls back to a dataclass AddedToken that is unhashable
    (eq=True) and has no __setstate__; give it those of tokenizers.AddedToken (hash of the content)."""
    import transformers.tokenization_utils_base as tub
    from transformers.utils import is_tokenizers_available
    if is_tokenizers_available():
        return
    A = tub.AddedToken
    if getattr(A, '__hash__', None) is None:
        A.__hash__ = lambda self: hash(self.content)
    if not hasattr(A, '__setstate__'):
        A.__setstate__ = lambda self, state: self.__dict__.update(state)


def make_metric(folder, hub_cache=None, tokenizer_model=TOKENIZER_MODEL, verify_weights=True):
    """pyiqa.create_metric('qalign', device='cpu') on the fixture's tiny model, in float32."""
    hub_cache = hub_cache or os.environ['HF_HUB_CACHE']
    write_hub_snapshot(folder, hub_cache, tokenizer_model)
    import pyiqa
    from pyiqa.archs import qalign_arch
    _check_hub_cache(hub_cache)
    _patch_added_token()
    # Fixture README "Reference environment": the two float32 patches.
    qalign_arch.QAlign._get_model_dtype = staticmethod(lambda dtype: torch.float32)
    metric = pyiqa.create_metric('qalign', device='cpu')
    model = metric.net.model
    model.weight_tensor = torch.tensor([5., 4., 3., 2., 1.], dtype=torch.float32)
    if verify_weights:  # from_pretrained silently random-inits missing keys: check every tensor against the recipe
        cases = json.load(open(os.path.join(folder, 'cases.json')))
        want = fixture_weights(folder, cases)
        got = model.state_dict()
        missing = sorted(set(want) - set(got))
        extra = sorted(k for k in set(got) - set(want) if not k.endswith('rotary_emb.inv_freq'))
        bad = sorted(k for k in want if k in got and not torch.equal(got[k], want[k]))
        if missing or extra or bad:
            raise RuntimeError(f'weights differ from the recipe: missing {missing[:5]}, extra {extra[:5]}, '
                               f'different {bad[:5]}')
        assert all(v.dtype == torch.float32 for v in got.values() if v.is_floating_point())
    return metric


def case_input(folder, cases, c):
    """(1,3,H,W) float32 input of a case (fixture README "Cases"; cases.json `image` / `make`)."""
    from safetensors.torch import load_file
    images = load_file(os.path.normpath(os.path.join(folder, cases['inputs'])))
    if c.get('image'):
        x = images[c['image']]
    else:
        mk = c['make']
        ims = [images[n] for n in mk['images']]
        if mk['op'] == 'mean':
            assert len(ims) == 2
            x = (ims[0] + ims[1]) * 0.5
        elif mk['op'] == 'cat':
            x = torch.cat(ims, dim=mk['dim'])
        else:
            raise ValueError(mk)
    assert list(x.shape) == c['shape'], (c['name'], list(x.shape), c['shape'])
    return x.float().contiguous()


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument('fixture', nargs='?', default=FIXTURE)
    ap.add_argument('--tokenizer', default=TOKENIZER_MODEL)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--iters', type=int, default=5, help='timed forwards per case (best is reported)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    folder = args.fixture
    cases = json.load(open(os.path.join(folder, 'cases.json')))
    io = load_file(os.path.join(folder, 'io.safetensors'))
    t0 = time.perf_counter()
    metric = make_metric(folder, tokenizer_model=args.tokenizer)
    print(f'metric ready in {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, threads '
          f'{torch.get_num_threads()} (OPENBLAS_NUM_THREADS={os.environ.get("OPENBLAS_NUM_THREADS")}), '
          f'hub cache {os.environ["HF_HUB_CACHE"]}')
    net = metric.net
    ok = True
    times = {}
    diffs = []
    print(f'{"case":8} {"pyiqa":>12} {"fixture":>12} {"|diff|":>10} {"tol":>10}  pixel_values max|diff|  ids')
    for c in cases['cases']:
        name = c['name']
        x = case_input(folder, cases, c)
        # side checks (preprocessing and prompt ids come from pyiqa's own code)
        pv = net.preprocess(x.clone())
        want_pv = io[f'{name}.pixel_values']
        got_pv = pv if want_pv.shape == pv.shape else pv[:, :, ::7]
        pv_diff = (got_pv - want_pv).abs().max().item()
        from pyiqa.archs.q_align.modeling_mplug_owl2 import tokenizer_image_token, IMAGE_TOKEN_INDEX
        prompt = json.load(open(os.path.join(folder, 'tokens.json')))['prompt']
        ids = tokenizer_image_token(prompt, net.model.tokenizer, IMAGE_TOKEN_INDEX)
        ids_ok = ids == io['input_ids'][0].tolist() and net.model.preferential_ids_ == io['level_ids'].tolist()
        with torch.no_grad():
            score = metric(x.clone())
        assert score.shape == (1,), score.shape
        got = score.item()
        want = io[c['score']].item()
        tol = 1e-4 * abs(want) + 1e-6
        d = abs(got - want)
        diffs.append(d)
        ok &= d <= tol and ids_ok
        print(f'{name:8} {got:12.8f} {want:12.8f} {d:10.3e} {tol:10.3e}  {pv_diff:.3e}  {"ok" if ids_ok else "DIFF"}',
              flush=True)
        best = float('inf')
        with torch.no_grad():
            for _ in range(args.iters):
                t = time.perf_counter()
                metric(x.clone())
                best = min(best, time.perf_counter() - t)
        times[name] = best
        if name == cases['cases'][0]['name']:  # where the time goes (first case)
            with torch.no_grad():
                tp = tm = float('inf')
                for _ in range(args.iters):
                    t = time.perf_counter()
                    pv = net.preprocess(x.clone())
                    tp = min(tp, time.perf_counter() - t)
                    t = time.perf_counter()
                    net.model.score(images=None, image_tensor=pv)
                    tm = min(tm, time.perf_counter() - t)
            split = f'{name}: preprocess (PIL pad+resize, CLIPImageProcessor) {tp * 1e3:.1f} ms + model.score {tm * 1e3:.1f} ms'
    print('time per image (one metric(x) call incl. preprocessing, best of %d, %d thread(s)): %s' % (
        args.iters, torch.get_num_threads(), ', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in times.items())))
    print('breakdown', split)
    print(f'max |pyiqa - fixture| over cases: {max(diffs):.3e}')
    print('ALL WITHIN TOLERANCE' if ok else 'MISMATCH')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
