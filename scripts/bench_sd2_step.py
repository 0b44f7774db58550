#!/usr/bin/python3
"""Times one C-SD2 sampling step (ControlNet, then the UNet with its
residuals, under torch.no_grad()) with diffusers, the library a user runs
instead of this project, on the libtorch the Go shim links (Debian's
python3-torch 1.13).

    PYTHONPATH=/path/to/refenv HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_sd2_step.py [--full] [--size 256]

(see ../shared/refenv: diffusers 0.32.2 on torch 1.13). The Go side of the
comparison, in the same units:

    go test ./diffusion/unet -run '^$' -bench 'UNetControlNetStep/threads=1$'
    DP2O_BENCH_FULL=1 go test ./diffusion/unet -run '^$' -bench UNetFullSize -benchtime 3x

Default: the tiny fixture models (diffusion/unet/testdata/sd2/unet and
sd2/controlnet/diffusers, or $DP2O_FIXTURES) on the fixture's inputs, first
checked against the fixture's outputs. --full: the full-size SD2-base UNet
(config of sd2/keys/unet/config.json) and ControlNetModel.from_unet, with
random weights, float32, batch 2, --size² pixels. One intra-op thread unless
--threads is given. Prints ms per step in wall time and in process CPU time
(the latter is what to compare on a loaded machine).
"""
import argparse
import json
import os
import struct
import time

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIX = os.environ.get("DP2O_FIXTURES") or os.path.join(REPO, "diffusion", "unet", "testdata")


def load_safetensors(path):
    """Reads a safetensors file into a dict of CPU tensors."""
    dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "U8": torch.uint8}
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = bytearray(data[8 + n + a:8 + n + b])
        t = torch.frombuffer(buf, dtype=dtypes[info["dtype"]]) if buf else torch.empty(0, dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def tiny():
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, "sd2", "unet")).eval()
    cn = ControlNetModel.from_pretrained(os.path.join(FIX, "sd2", "controlnet", "diffusers")).eval()
    io = load_safetensors(os.path.join(FIX, "sd2", "controlnet", "io.safetensors"))
    sample, ts, text = io["sample"], io["timesteps"], io["encoder_hidden_states"]
    cond = io["controlnet_cond_u8"].float() / 255
    # The fixture's case 0 (conditioning scale 1) as a check that the models loaded.
    with torch.no_grad():
        down, mid = cn(sample, ts, text, controlnet_cond=cond, conditioning_scale=1.0, return_dict=False)
    err = (mid - io["case0.mid_block_res_sample"]).abs().max().item()
    assert err < 1e-4, f"controlnet mid residual differs from the fixture by {err}"
    return unet, cn, sample, ts, text, cond


def full(size):
    with open(os.path.join(FIX, "sd2", "keys", "unet", "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).eval()
    cn = ControlNetModel.from_unet(unet).eval()
    lat = size // 8
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, lat, lat, generator=g)
    ts = torch.tensor([500, 500])
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    cond = torch.rand(2, 3, size, size, generator=g)
    return unet, cn, sample, ts, text, cond


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="full-size SD2-base UNet + ControlNet, random weights")
    ap.add_argument("--size", type=int, default=256, help="image side for --full (multiple of 8)")
    ap.add_argument("--iters", type=int, default=0, help="timed steps (default 20 tiny, 3 full)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet, cn, sample, ts, text, cond = full(args.size) if args.full else tiny()
    iters = args.iters or (3 if args.full else 20)

    def step():
        down, mid = cn(sample, ts, text, controlnet_cond=cond, conditioning_scale=1.0, return_dict=False)
        return unet(sample, ts, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    with torch.no_grad():
        step()  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            out = step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    what = f"full-size {args.size}x{args.size}" if args.full else "tiny fixture"
    print(f"diffusers {what} threads={args.threads}: {wall / iters * 1e3:.2f} ms/step, "
          f"{cpu / iters * 1e3:.2f} cpu-ms/step (output {tuple(out.shape)}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
