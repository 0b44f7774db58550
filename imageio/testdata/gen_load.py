#!/usr/bin/python3
"""Generate the PIL reference data for imageio's Load/Decode tests.

Run with Debian bookworm's Pillow 9.4 (libjpeg-turbo, libwebp 1.2):

    apt-get install -y python3-pil python3-numpy libjpeg-turbo-progs
    /usr/bin/python3 imageio/testdata/gen_load.py

Writes imageio/testdata/load/: the encoded files, and for each
expected/<file>.png, the result of PIL's Image.open(file).convert("RGB")
saved as an 8-bit RGB PNG; cases.json lists them with PIL's mode.
"""
import io
import json
import os
import struct
import subprocess
import zlib

import numpy as np
import PIL
from PIL import Image

assert PIL.__version__ == "9.4.0", PIL.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "load")
W, H = 45, 31


def png_chunk(kind, data):
    c = struct.pack(">I", len(data)) + kind + data
    return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path, arr, color_type, trns=None):
    """A 16-bit PNG (PIL cannot write 16-bit RGB/RGBA): arr is uint16 HxWxC."""
    h, w = arr.shape[:2]
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    if trns is not None:
        data += png_chunk(b"tRNS", trns)
    data += png_chunk(b"IDAT", zlib.compress(rows, 9))
    data += png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def base_rgb(rng):
    y, x = np.mgrid[0:H, 0:W]
    a = np.zeros((H, W, 3), np.float64)
    a[..., 0] = 255.0 * x / (W - 1)
    a[..., 1] = 255.0 * y / (H - 1)
    a[..., 2] = np.where((x // 6 + y // 6) % 2 == 0, 220, 30)
    a[(x - 30) ** 2 + (y - 12) ** 2 < 49] = (250, 30, 40)
    a[:, 7] = (255, 255, 255)
    a[20:22, :] = (0, 0, 90)
    a += rng.normal(0, 10, a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def main():
    rng = np.random.default_rng(4242)
    os.makedirs(os.path.join(OUT, "expected"), exist_ok=True)
    rgb = base_rgb(rng)
    im = Image.fromarray(rgb, "RGB")
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[:5, :] = 0  # colour under fully transparent pixels must survive
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    gray = im.convert("L")
    files = []

    def save(name, img, **kw):
        img.save(os.path.join(OUT, name), **kw)
        files.append(name)

    # PNG
    save("rgb.png", im)
    save("rgba.png", rgba)
    save("gray.png", gray)
    save("gray_trns.png", gray, transparency=128)
    save("rgb_trns.png", im, transparency=(255, 255, 255))
    save("la.png", Image.merge("LA", (gray, Image.fromarray(alpha))))
    pal = im.quantize(colors=16)
    save("pal.png", pal)
    save("pal4bit.png", pal, bits=4)
    save("pal_trns.png", pal, transparency=3)
    save("bw.png", gray.convert("1"))
    g16 = (np.arange(W * H, dtype=np.uint32).reshape(H, W) * 41 % 1200).astype(np.uint16)
    save("gray16.png", Image.fromarray(g16))  # PIL mode I;16 → "I" when read
    write_png16(os.path.join(OUT, "gray16_trns.png"), g16, 0, trns=struct.pack(">H", 41))
    files.append("gray16_trns.png")
    c16 = rgb.astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape).astype(np.uint16)
    write_png16(os.path.join(OUT, "rgb16.png"), c16, 2)
    files.append("rgb16.png")
    a16 = np.dstack([c16, alpha.astype(np.uint16) * 257])
    write_png16(os.path.join(OUT, "rgba16.png"), a16, 6)
    files.append("rgba16.png")

    # JPEG (libjpeg-turbo)
    save("q90_444.jpg", im, quality=90, subsampling=0)
    save("q90_422.jpg", im, quality=90, subsampling=1)
    save("q90_420.jpg", im, quality=90, subsampling=2)
    save("q75_420_prog.jpg", im, quality=75, subsampling=2, progressive=True)
    save("q95_420_even.jpg", im.crop((0, 0, 44, 30)), quality=95, subsampling=2)
    save("gray.jpg", gray, quality=90)
    save("cmyk.jpg", im.convert("CMYK"), quality=90)
    # Subsamplings PIL cannot write: 4:4:0 (h1v2) and 4:1:1 (h4v1), by cjpeg.
    ppm = io.BytesIO()
    im.save(ppm, "PPM")
    for name, sample in (("q90_440.jpg", "1x2"), ("q90_411.jpg", "4x1")):
        data = subprocess.run(["cjpeg", "-quality", "90", "-sample", sample],
                              input=ppm.getvalue(), stdout=subprocess.PIPE, check=True).stdout
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        files.append(name)

    # BMP
    save("rgb.bmp", im)
    save("pal.bmp", pal)
    save("gray.bmp", gray)
    save("rgba.bmp", rgba)

    # TIFF
    save("rgb.tif", im)
    save("rgb_lzw.tif", im, compression="tiff_lzw")
    save("rgba.tif", rgba)
    save("gray.tif", gray)
    save("gray16.tif", Image.fromarray(g16))
    save("cmyk.tif", im.convert("CMYK"))
    save("pal.tif", pal)

    # WebP (libwebp)
    save("lossy.webp", im, quality=80)
    save("lossy_alpha.webp", rgba, quality=80)
    save("lossless.webp", im, lossless=True)
    save("lossless_alpha.webp", rgba, lossless=True)
    save("lossy_even.webp", im.crop((0, 0, 44, 30)), quality=90)

    # GIF: a transparent index whose stored colour is not black, and a
    # logical screen larger than the frame (header patched after saving).
    save("trns.gif", pal, transparency=3)
    buf = io.BytesIO()
    pal.save(buf, "GIF")
    g = bytearray(buf.getvalue())
    g[6:10] = struct.pack("<HH", W + 6, H + 4)
    with open(os.path.join(OUT, "screen.gif"), "wb") as f:
        f.write(g)
    files.append("screen.gif")

    cases = []
    for name in files:
        src = Image.open(os.path.join(OUT, name))
        mode = src.mode
        out = src.convert("RGB")
        Image.fromarray(np.asarray(out), "RGB").save(os.path.join(OUT, "expected", name + ".png"))
        cases.append({"file": name, "mode": mode, "w": out.size[0], "h": out.size[1]})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"pillow": PIL.__version__, "cases": cases}, f, indent=1)
        f.write("\n")
    print(len(cases), "files")


if __name__ == "__main__":
    main()
