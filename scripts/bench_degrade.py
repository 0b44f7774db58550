"""Side-by-side benchmark of the first-order degradation in PyTorch (ResShift's own code).

Times ResShift's degrade_fun op sequence (first order: filter2D, F.interpolate(scale_factor),
random_add_{gaussian,poisson}_noise_pt, DiffJPEG, final resize + sinc + DiffJPEG in either order,
rounding) on a 512x512 float32 image, one torch thread, over seeds 0..N-1 with the testing config
(configs/degradation_testing_realesrgan.yaml), kernels drawn as RealESRGANDataset draws them.
Compare with `OMP_NUM_THREADS=1 go test ./preference/degrade -run '^$' -bench Degrade512`.

ResShift is not vendored: point RESSHIFT_DIR at a checkout of github.com/zsyOAOA/ResShift.
OpenCV is not needed on this path (stubbed).

    RESSHIFT_DIR=~/ResShift OMP_NUM_THREADS=1 /usr/bin/python3 scripts/bench_degrade.py
"""
import importlib.util
import math
import os
import random
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

root = os.environ.get("RESSHIFT_DIR")
if not root:
    sys.exit("set RESSHIFT_DIR to a ResShift checkout")
sys.modules["cv2"] = types.ModuleType("cv2")  # imported at the top, unused on this path


def load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


deg = load("degradations", "basicsr/data/degradations.py")
jpeg = load("diffjpeg", "basicsr/utils/diffjpeg.py")
ipu = load("img_process_util", "basicsr/utils/img_process_util.py")

opt = dict(blur_kernel_size=13, kernel_prob=[0.6, 0.4, 0, 0, 0, 0], sinc_prob=0.1, blur_sigma=[0.2, 0.8],
           betag_range=[1.0, 1.5], betap_range=[1, 1.2], blur_kernel_size2=7, final_sinc_prob=0.2)
cfg = dict(sf=4, resize_prob=[0.2, 0.7, 0.1], resize_range=[0.5, 1.5], gaussian_noise_prob=0.5, noise_range=[1, 15],
           poisson_scale_range=[0.05, 0.3], gray_noise_prob=0.4, jpeg_range=[70, 95], jpeg_range2=[80, 100])
kinds = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']


def kernels():
    ks = random.choice(range(3, opt["blur_kernel_size"], 2))
    if np.random.uniform() < opt["sinc_prob"]:
        k = deg.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), ks, pad_to=False)
    else:
        k = deg.random_mixed_kernels(kinds, opt["kernel_prob"], ks, opt["blur_sigma"], opt["blur_sigma"],
                                     [-math.pi, math.pi], opt["betag_range"], opt["betap_range"], noise_range=None)
    p = (opt["blur_kernel_size"] - ks) // 2
    k = np.pad(k, ((p, p), (p, p)))
    if np.random.uniform() < opt["final_sinc_prob"]:
        ks = random.choice(range(3, opt["blur_kernel_size2"], 2))
        sinc = torch.FloatTensor(deg.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), ks,
                                                             pad_to=opt["blur_kernel_size2"]))
    else:
        sinc = torch.zeros(opt["blur_kernel_size2"], opt["blur_kernel_size2"])
        sinc[opt["blur_kernel_size2"] // 2, opt["blur_kernel_size2"] // 2] = 1
    return torch.FloatTensor(k), sinc


jpeger = jpeg.DiffJPEG(differentiable=False)


def degrade(x, k1, sinc):
    h, w = x.shape[2:]
    out = ipu.filter2D(x, k1)
    ud = random.choices(['up', 'down', 'keep'], cfg["resize_prob"])[0]
    s = random.uniform(1, cfg["resize_range"][1]) if ud == 'up' else random.uniform(cfg["resize_range"][0], 1) if ud == 'down' else 1
    out = F.interpolate(out, scale_factor=s, mode=random.choice(['area', 'bilinear', 'bicubic']))
    if random.random() < cfg["gaussian_noise_prob"]:
        out = deg.random_add_gaussian_noise_pt(out, sigma_range=cfg["noise_range"], clip=True, rounds=False,
                                               gray_prob=cfg["gray_noise_prob"])
    else:
        out = deg.random_add_poisson_noise_pt(out, scale_range=cfg["poisson_scale_range"], gray_prob=cfg["gray_noise_prob"],
                                              clip=True, rounds=False)
    q = out.new_zeros(out.size(0)).uniform_(*cfg["jpeg_range"])
    out = jpeger(torch.clamp(out, 0, 1), quality=q)
    random.random()  # the second-order gate
    size = (h // cfg["sf"], w // cfg["sf"])
    if random.random() < 0.5:
        out = ipu.filter2D(F.interpolate(out, size=size, mode=random.choice(['area', 'bilinear', 'bicubic'])), sinc)
        q = out.new_zeros(out.size(0)).uniform_(*cfg["jpeg_range2"])
        out = jpeger(torch.clamp(out, 0, 1), quality=q)
    else:
        q = out.new_zeros(out.size(0)).uniform_(*cfg["jpeg_range2"])
        out = jpeger(torch.clamp(out, 0, 1), quality=q)
        out = ipu.filter2D(F.interpolate(out, size=size, mode=random.choice(['area', 'bilinear', 'bicubic'])), sinc)
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.


def main():
    n = int(os.environ.get("N", "20"))
    torch.manual_seed(1)
    x = torch.rand(1, 3, 512, 512)
    work = []
    for seed in range(n):
        random.seed(seed)
        np.random.seed(seed)
        work.append((seed, kernels()))
    with torch.no_grad():
        for seed, (k1, sinc) in work[:2]:  # warm-up
            degrade(x, k1, sinc)
        t = time.perf_counter()
        for seed, (k1, sinc) in work:
            random.seed(seed)
            torch.manual_seed(seed)
            degrade(x, k1, sinc)
        dt = (time.perf_counter() - t) / n
    print(f"python degrade_fun 512x512 (testing config, {n} seeds, {torch.get_num_threads()} thread(s)): {dt * 1000:.1f} ms/image")


if __name__ == "__main__":
    main()
