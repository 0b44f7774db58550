#!/usr/bin/env python3
"""Paper plan of data-parallel scaling (1 -> 8 GPUs) for DP2O ControlNet training.

Reads the full-size ControlNet parameter counts from the key manifests
(diffusion/unet/testdata/sd2/keys/controlnet/keys.json,
flow/transformer/testdata/flux/keys/flux_controlnet_cflux/keys.json), takes
the gradient as float32 (the trainer keeps float32 master weights), and models
one optimizer step as

    compute(N) = pairs_per_step / N * seconds_per_pair     (no collective inside)
    allreduce(N) = 2 (N-1)/N * gradient_bytes / bus_bandwidth  (ring, once per step)
    efficiency(N) = compute(N) / (compute(N) + allreduce(N))

since torch/dist averages the gradients once per optimizer step, after the
last accumulated micro-batch, without overlapping the backward pass.
Every bandwidth and step time here is an ASSUMPTION (flags), not a measurement.

Usage: python3 scripts/dist_plan.py [--sec-per-pair-sd2 0.25] [--sec-per-pair-flux 1.0]
"""
import argparse
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MANIFESTS = {
    "C-SD2 ControlNet": "diffusion/unet/testdata/sd2/keys/controlnet/keys.json",
    "C-FLUX ControlNet": "flow/transformer/testdata/flux/keys/flux_controlnet_cflux/keys.json",
}
# Assumed large-message all-reduce bus bandwidths (NCCL's busbw), GB/s.
LINKS = {
    "NCCL, 8x H100 SXM NVLink/NVSwitch (assumed 300 GB/s)": 300e9,
    "NCCL, 8x GPU PCIe 4.0, no NVLink (assumed 15 GB/s)": 15e9,
    "Gloo, CPU tensors over 25 GbE TCP (assumed 2 GB/s)": 2e9,
}


def params(path):
    with open(os.path.join(ROOT, path)) as f:
        d = json.load(f)
    shapes = d.get("tensors") or d.get("keys")
    n = 0
    for s in shapes.values():
        c = 1
        for x in s:
            c *= x
        n += c
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-per-step", type=int, default=1024, help="the paper's global batch (pairs)")
    ap.add_argument("--sec-per-pair-sd2", type=float, default=0.25,
                    help="ASSUMED one-GPU seconds per pair (policy fwd+bwd on winner and loser, reference fwd), SD2 512^2")
    ap.add_argument("--sec-per-pair-flux", type=float, default=1.0,
                    help="ASSUMED one-GPU seconds per pair, C-FLUX 512^2")
    a = ap.parse_args()
    spp = {"C-SD2 ControlNet": a.sec_per_pair_sd2, "C-FLUX ControlNet": a.sec_per_pair_flux}
    for model, path in MANIFESTS.items():
        n = params(path)
        size = 4 * n
        print(f"\n## {model}: {n:,} parameters, float32 gradient {size / 1e9:.3f} GB "
              f"({(size + (25 << 20) - 1) // (25 << 20)} buckets of 25 MiB)")
        print(f"compute per step on one GPU: {a.pairs_per_step} pairs x {spp[model]} s = "
              f"{a.pairs_per_step * spp[model]:.0f} s (assumed)")
        print("| link | N | all-reduce / step | compute / step | efficiency | speed-up |")
        print("| --- | --- | --- | --- | --- | --- |")
        for link, bw in LINKS.items():
            for N in (1, 2, 4, 8):
                ar = 2 * (N - 1) / N * size / bw
                comp = a.pairs_per_step / N * spp[model]
                eff = comp / (comp + ar)
                print(f"| {link} | {N} | {ar * 1e3:.0f} ms | {comp:.1f} s | {eff * 100:.2f}% | {N * eff:.2f}x |")
        # --shard_optimizer (ZeRO stage 1): each rank broadcasts its updated
        # weights, so each GPU receives (N-1)/N of them once per step, and
        # keeps 1/N of AdamW's two float32 moments (8 bytes per weight).
        N = 8
        bc = (N - 1) / N * size / list(LINKS.values())[0]
        print(f"--shard_optimizer, N=8: weights' broadcast {bc * 1e3:.0f} ms per step on NVLink; AdamW moments "
              f"{8 * n / 1e9:.2f} GB per GPU whole, about {8 * n / N / 1e9:.2f} GB sharded")
        # --shard_gradients (ZeRO stage 2): every micro-batch's backward pass
        # reduces the gradient to the owners (a reduce moves about the
        # gradient's size over each GPU's link: NCCL's busbw = algbw), and
        # each GPU keeps 1/N of the float32 gradients. Not overlapped with
        # the backward pass here (the reducer does overlap it).
        links = list(LINKS.items())
        per_pass = {name.split(",")[1].strip().split(" (")[0]: size / bw for name, bw in links[:2]}
        mb = a.pairs_per_step // N  # single-pair micro-batches per GPU and step
        parts = "; ".join(f"{link}: {t * 1e3:.0f} ms per pass, {mb * t:.1f} s per step "
                          f"({spp[model] / (spp[model] + t) * 100:.1f}% efficiency without overlap)" for link, t in per_pass.items())
        print(f"--shard_gradients, N=8, {mb} single-pair passes per GPU and step: {parts}; float32 gradients "
              f"{size / 1e9:.2f} GB per GPU whole, about {size / N / 1e9:.2f} GB sharded")
        # One all-reduce per micro-batch instead (no accumulation, 1 pair/GPU):
        ar = 2 * (N - 1) / N * size / list(LINKS.values())[0]
        print(f"worst case, one all-reduce per single-pair micro-batch on NVLink, N=8: "
              f"{ar * 1e3:.1f} ms against {spp[model] * 1e3:.0f} ms compute -> {spp[model] / (spp[model] + ar) * 100:.1f}%")


if __name__ == "__main__":
    main()
