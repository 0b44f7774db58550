"""Reference values of PSNR and SSIM as pyiqa computes them, for reward/testdata/fidelity/.

Writes small test images (RGB, odd sizes, grayscale, RGBA, 16-bit grayscale, tiny) with PIL, reads them back
with pyiqa's own loader (imread2tensor(path, rgb=True): PIL convert('RGB') + to_tensor), and scores pairs with
pyiqa.create_metric(...) (psnr, psnry, ssim, ssimc and the Y-of-YCbCr variants). The same numbers are
recomputed by an independent torch port of pyiqa's psnr()/ssim() below, and the script fails if the two
disagree; without pyiqa importable it stores the port's values (the JSON says which).

Run (pyiqa set up with ../shared/refenv/setup-iqa.sh into OUT_DIR):
  PYTHONPATH=OUT_DIR:<refenv> TIMM_FUSED_ATTN=0 HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/iqa_psnr_ssim.py \
      reward/testdata/fidelity
"""
import hashlib
import io
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

torch.set_num_threads(1)


# ---------------------------------------------------------------- images
def make_images(out):
    rng = np.random.RandomState(20240611)

    def texture(h, w):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([
            128 + 90 * np.sin(xx / 7.0) * np.cos(yy / 11.0),
            128 + 80 * np.cos((xx + yy) / 9.0),
            100 + 60 * np.sin(yy / 5.0) + xx,
        ], -1)
        base += rng.normal(0, 12, base.shape)
        return np.clip(np.round(base), 0, 255).astype(np.uint8)

    imgs = {}
    ref = Image.fromarray(texture(56, 72), 'RGB')
    imgs['ref'] = ref
    imgs['blur'] = ref.filter(ImageFilter.GaussianBlur(radius=1.5))
    buf = io.BytesIO()
    ref.save(buf, format='JPEG', quality=20)
    imgs['jpeg'] = Image.open(io.BytesIO(buf.getvalue())).convert('RGB')
    noisy = np.asarray(ref).astype(np.float64) + rng.normal(0, 20, (56, 72, 3))
    imgs['noise'] = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), 'RGB')
    odd = Image.fromarray(texture(29, 37), 'RGB')
    imgs['odd_ref'] = odd
    imgs['odd_blur'] = odd.filter(ImageFilter.GaussianBlur(radius=1))
    imgs['gray_ref'] = ref.convert('L')
    imgs['gray_blur'] = imgs['blur'].convert('L')
    rgba = ref.convert('RGBA')
    a = np.asarray(rgba).copy()
    a[..., 3] = (np.arange(72)[None, :] * 3 + np.arange(56)[:, None]) % 256
    imgs['rgba'] = Image.fromarray(a, 'RGBA')
    g16 = (np.asarray(imgs['gray_ref']).astype(np.int32) * 2 - 40).clip(0, 400).astype(np.uint16)
    imgs['gray16'] = Image.fromarray(g16, 'I;16')
    imgs['tiny_a'] = Image.fromarray(texture(1, 1), 'RGB')
    imgs['tiny_b'] = Image.fromarray(texture(1, 1), 'RGB')
    imgs['small_a'] = Image.fromarray(texture(7, 5), 'RGB')
    imgs['small_b'] = imgs['small_a'].filter(ImageFilter.GaussianBlur(radius=1))
    paths = {}
    for k, im in imgs.items():
        p = os.path.join(out, k + '.png')
        im.save(p)
        paths[k] = p
    return paths


PAIRS = [
    ('blur', 'ref'), ('jpeg', 'ref'), ('noise', 'ref'), ('ref', 'ref'), ('odd_blur', 'odd_ref'),
    ('gray_blur', 'gray_ref'), ('rgba', 'ref'), ('gray16', 'gray_ref'), ('tiny_a', 'tiny_b'), ('small_b', 'small_a'),
]

METRICS = [
    ('psnr', {}),
    ('psnry', {}),
    ('ssim', {}),
    ('ssimc', {}),
    ('psnr', {'test_y_channel': True, 'color_space': 'ycbcr'}),
    ('ssim', {'test_y_channel': True, 'color_space': 'ycbcr'}),
]
DEFAULTS = {'psnr': False, 'psnry': True, 'ssim': True, 'ssimc': False}


# ---------------------------------------------------------------- independent port of pyiqa's psnr/ssim
def y_channel(x, out_range, space):
    if space == 'yiq':
        w = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]]).t().to(x)
        y = torch.matmul(x.permute(0, 2, 3, 1), w).permute(0, 3, 1, 2)
    else:
        w = torch.tensor([[65.481, -37.797, 112.0], [128.553, -74.203, -93.786], [24.966, 112.0, -18.214]]).to(x)
        b = torch.tensor([16, 128, 128]).view(1, 3, 1, 1).to(x)
        y = (torch.matmul(x.permute(0, 2, 3, 1), w).permute(0, 3, 1, 2) + b) / 255.0
    y = y[:, [0]] * out_range
    if out_range >= 255:
        y = y.round()
    return y


def port_psnr(x, y, ych, space):
    if ych:
        x, y = y_channel(x, 1.0, space), y_channel(y, 1.0, space)
    mse = torch.mean((x - y) ** 2, dim=[1, 2, 3])
    return 10 * torch.log10(1.0 / (mse + 1e-8))


def window(size=11, sigma=1.5):
    m = (size - 1.0) / 2.0
    yy, xx = np.ogrid[-m:m + 1, -m:m + 1]
    h = np.exp(-(xx * xx + yy * yy) / (2.0 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    h /= h.sum()
    return torch.from_numpy(h).float()


def port_ssim(x, y, ych, space):
    def pre(t):
        t = y_channel(t, 255, space) if ych else t * 255
        return t.round().to(torch.float64)

    x, y = pre(x), pre(y)
    c = x.shape[1]
    win = window().repeat(c, 1, 1, 1).to(x)
    f = lambda t: F.conv2d(t, win, groups=c)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = f(x), f(y)
    s1 = f(x * x) - mu1 ** 2
    s2 = f(y * y) - mu2 ** 2
    s12 = f(x * y) - mu1 * mu2
    cs = F.relu((2 * s12 + c2) / (s1 + s2 + c2))
    return (((2 * mu1 * mu2 + c1) / (mu1 ** 2 + mu2 ** 2 + c1)) * cs).mean([1, 2, 3])


def port(name, opts, x, y):
    ych = opts.get('test_y_channel', DEFAULTS[name])
    space = opts.get('color_space', 'yiq')
    if name.startswith('psnr'):
        return port_psnr(x, y, ych, space)
    return port_ssim(x, y, ych, space)


def load(path):
    im = Image.open(path).convert('RGB')
    a = torch.from_numpy(np.array(im, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return a.to(torch.float32).div(255).unsqueeze(0)


# ---------------------------------------------------------------- main
def main(out):
    os.makedirs(out, exist_ok=True)
    paths = make_images(out)
    try:
        import pyiqa
        from pyiqa.utils.img_util import imread2tensor
        source = 'pyiqa ' + pyiqa.__version__
    except ImportError:
        pyiqa = None
        source = 'independent port (pyiqa not importable)'
    tensors, images = {}, {}
    for k, p in paths.items():
        t = load(p)
        if pyiqa is not None:
            t2 = imread2tensor(p, rgb=True).unsqueeze(0)
            assert torch.equal(t, t2), k
        tensors[k] = t
        images[k] = {'file': os.path.basename(p), 'shape': list(t.shape),
                     'sha256_f32': hashlib.sha256(t.numpy().astype('<f4').tobytes()).hexdigest()}
    cases, worst = [], 0.0
    for name, opts in METRICS:
        metric = pyiqa.create_metric(name, device='cpu', **opts) if pyiqa is not None else None
        for dist, ref in PAIRS:
            x, y = tensors[dist], tensors[ref]
            entry = {'metric': name, 'opts': opts, 'dist': dist, 'ref': ref}
            if name.startswith('ssim') and min(x.shape[-2:]) < 11:
                entry['error'] = 'image smaller than the 11x11 window'
                if metric is not None:
                    try:
                        metric(x, y)
                        raise SystemExit(f'{name} {dist}: pyiqa accepted a {list(x.shape)} image')
                    except RuntimeError:
                        pass
                cases.append(entry)
                continue
            p = port(name, opts, x, y).item()
            v = metric(x, y).item() if metric is not None else p
            rel = abs(v - p) / max(abs(v), 1e-12)
            worst = max(worst, rel)
            entry['score'] = v
            entry['port_rel_diff'] = rel
            cases.append(entry)
    if worst > 1e-6:
        raise SystemExit(f'port and pyiqa disagree: worst relative difference {worst:.3g}')
    json.dump({'source': source, 'torch': torch.__version__, 'images': images, 'cases': cases,
               'worst_port_rel_diff': worst}, open(os.path.join(out, 'expected.json'), 'w'), indent=1)
    print(f'{len(cases)} cases from {source}; port vs pyiqa worst relative difference {worst:.3g}')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'reward/testdata/fidelity')
