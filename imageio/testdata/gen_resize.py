#!/usr/bin/python3
"""Generate the Pillow reference data for imageio's resize tests.

Run with Debian bookworm's Pillow 9.4 (the version the official DP2O-SR
scripts were run with):

    apt-get install -y python3-pil python3-numpy
    /usr/bin/python3 imageio/testdata/gen_resize.py

Writes imageio/testdata/resize/:
  inputs/<name>.png   the RGB test images (8-bit RGB PNG, lossless)
  outputs.bin.gz      the small expected outputs, raw RGB, concatenated
  cases.json          one entry per (input, size, filter): the expected
                      output's SHA-256, and its offset in outputs.bin when
                      stored there
  sweep.json          SHA-256 of Pillow's outputs for generated inputs
                      (lcg_image, rebuilt by the Go test) at random sizes
"""
import gzip
import hashlib
import json
import os

import numpy as np
import PIL
from PIL import Image

assert PIL.__version__ == "9.4.0", PIL.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "resize")
STORE_LIMIT = 6000  # outputs up to this many bytes are stored in full

FILTERS = {
    "NEAREST": Image.NEAREST,
    "LANCZOS": Image.LANCZOS,
    "BILINEAR": Image.BILINEAR,
    "BICUBIC": Image.BICUBIC,
    "BOX": Image.BOX,
    "HAMMING": Image.HAMMING,
}


def noise(rng, w, h):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def structured(rng, w, h):
    y, x = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), np.float64)
    a[..., 0] = 255.0 * x / max(w - 1, 1)                  # ramp
    a[..., 1] = np.where((x // 4 + y // 4) % 2 == 0, 250, 5)  # checkerboard
    a[..., 2] = np.where(x > w // 2, 255, 0)                # hard edge
    a[h // 3: h // 3 + 2, :, :] = 255                       # thin white line
    a[:, w // 5, :] = 0                                     # thin black line
    a += rng.normal(0, 12, a.shape)                         # noise
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def smooth(rng, w, h):
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    a = np.stack([
        128 + 100 * np.sin(6.1 * x + 2.3 * y),
        128 + 90 * np.cos(4.7 * y - 1.1 * x * x),
        128 + 110 * np.sin(9.0 * x * y + 0.4),
    ], axis=-1)
    a[(x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04] = (250, 20, 30)  # a disc
    a += rng.normal(0, 3, a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def lcg_image(seed, w, h):
    """Test image from a 31-bit LCG, rebuilt identically by the Go test.

    Even seeds give noise; odd seeds a noisy diagonal ramp with edges."""
    x = seed
    out = bytearray(3 * w * h)
    for i in range(3 * w * h):
        x = (x * 1103515245 + 12345) % (1 << 31)
        r = (x >> 16) & 255
        if seed % 2:
            p = i // 3
            px, py = p % w, p // w
            v = (px * 9 + py * 5 + (i % 3) * 60) % 256
            if (px // 5 + py // 3) % 4 == 0:
                v = 255 - v
            r = (v + (r & 15)) % 256
        out[i] = r
    return np.frombuffer(bytes(out), np.uint8).reshape(h, w, 3)


def sweep(rng):
    """Random sizes: (seed, w, h) inputs, each resized to random sizes with
    every filter; only the SHA-256 of each output is kept."""
    cases = []
    for seed in range(1, 81):
        w, h = (int(v) for v in rng.integers(1, 70, 2))
        im = Image.fromarray(lcg_image(seed, w, h), "RGB")
        for j in range(2):
            ow, oh = (int(v) for v in rng.integers(1, 200, 2))
            if j == 1 and seed % 3 == 0:
                ow = w  # vertical pass only
            if j == 1 and seed % 3 == 1:
                oh = h  # horizontal pass only
            for fname, f in FILTERS.items():
                raw = np.asarray(im.resize((ow, oh), f)).tobytes()
                cases.append([seed, w, h, ow, oh, fname, hashlib.sha256(raw).hexdigest()])
    return cases


def main():
    rng = np.random.default_rng(20250512)
    inputs = {
        "noise37x23": noise(rng, 37, 23),
        "struct64x48": structured(rng, 64, 48),
        "noise13x91": noise(rng, 13, 91),
        "smooth128": smooth(rng, 128, 128),
        "extreme5x3": np.array([[[0, 255, 0], [255, 0, 255], [0, 0, 0], [255, 255, 255], [0, 255, 255]],
                                [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 0]],
                                [[0, 0, 0], [255, 255, 255], [0, 0, 0], [255, 255, 255], [0, 0, 0]]], np.uint8),
    }
    sizes = {
        "noise37x23": [(111, 69), (17, 50), (9, 5), (37, 50), (80, 23), (1, 1), (36, 22), (38, 24), (74, 46)],
        "struct64x48": [(17, 50), (256, 192), (21, 16), (64, 47), (100, 48), (3, 200), (512, 8), (63, 49)],
        "noise13x91": [(52, 364), (7, 33), (13, 30), (40, 91), (91, 13), (2, 2)],
        "smooth128": [(512, 512), (500, 333), (64, 64), (127, 129), (96, 128), (42, 42)],
        "extreme5x3": [(20, 12), (2, 1), (11, 7), (5, 9)],
    }
    os.makedirs(os.path.join(OUT, "inputs"), exist_ok=True)
    blob = bytearray()
    cases = []
    for name, arr in inputs.items():
        im = Image.fromarray(arr, "RGB")
        im.save(os.path.join(OUT, "inputs", name + ".png"))
        # The stored PNG must round-trip exactly.
        assert np.array_equal(np.asarray(Image.open(os.path.join(OUT, "inputs", name + ".png"))), arr)
        for (w, h) in sizes[name]:
            for fname, f in FILTERS.items():
                out = np.asarray(im.resize((w, h), f))
                assert out.shape == (h, w, 3)
                raw = out.tobytes()
                c = {"input": name, "w": w, "h": h, "filter": fname,
                     "sha256": hashlib.sha256(raw).hexdigest()}
                if len(raw) <= STORE_LIMIT:
                    c["offset"] = len(blob)
                    blob += raw
                cases.append(c)
    # The default filter of Image.resize for RGB is BICUBIC, and the
    # same-size call returns a copy.
    im = Image.fromarray(inputs["noise37x23"], "RGB")
    assert np.array_equal(np.asarray(im.resize((111, 69))), np.asarray(im.resize((111, 69), Image.BICUBIC)))
    assert np.array_equal(np.asarray(im.resize((37, 23))), inputs["noise37x23"])

    swept = sweep(np.random.default_rng(99))
    with open(os.path.join(OUT, "sweep.json"), "w") as f:
        # [seed, input w, input h, output w, output h, filter, sha256]
        f.write('{"pillow": "%s", "cases": [\n' % PIL.__version__)
        f.write(",\n".join(json.dumps(c) for c in swept))
        f.write("\n]}\n")

    with gzip.GzipFile(os.path.join(OUT, "outputs.bin.gz"), "wb", mtime=0) as f:
        f.write(bytes(blob))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"pillow": PIL.__version__, "cases": cases}, f, indent=0)
        f.write("\n")
    print(len(cases), "cases,", len(blob), "bytes stored")


if __name__ == "__main__":
    main()
