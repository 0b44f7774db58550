#!/usr/bin/python3
"""Times the step of BenchmarkUNetControlNetStep in plain PyTorch.

One sampling step of the tiny fixture models (ControlNet forward, then the
UNet forward with its residuals; batch 2, latents 16x16, control 128x128)
under torch.no_grad(), with 1 thread and with the default thread count, so
that the Go port can be compared with Python on the same libtorch (Debian's
python3-torch 1.13 links the libtorch1.13 that libtorch-dev ships).

The models are re-implemented here with torch.nn.functional (no diffusers)
and load the same safetensors fixtures, parsed with json + struct +
torch.frombuffer (the safetensors package may be absent). Before timing, the
script checks its outputs against the fixture's reference outputs.

Run from diffusion/unet:  /usr/bin/python3 testdata/bench_step.py [--iters N]
With --full (and a CUDA PyTorch) it times BenchmarkUNetFullSize's step
instead: the full-size SD2-base UNet + ControlNet with random weights,
float16, batch 2, 512x512.
"""

import argparse
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.environ.get("DP2O_FIXTURES") or HERE

DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def load_safetensors(path):
    """Reads a safetensors file into a dict of CPU tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        buf = bytearray(data[base + a:base + b])
        t = torch.frombuffer(buf, dtype=dtype) if len(buf) else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


class Model:
    """Functional UNet / ControlNet over a diffusers state dict."""

    def __init__(self, sd, cfg):
        self.sd, self.cfg = sd, cfg
        self.groups = cfg["norm_num_groups"]
        self.eps = cfg["norm_eps"]
        heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
        n = len(cfg["block_out_channels"])
        self.heads = heads if isinstance(heads, list) else [heads] * n
        self.linear_proj = cfg.get("use_linear_projection", False)
        # Like the Go port: the exact math order on the CPU, PyTorch's fused
        # attention (where it has one) on CUDA.
        self.fused = next(iter(sd.values())).is_cuda and hasattr(F, "scaled_dot_product_attention")

    def w(self, k):
        return self.sd[k]

    def conv(self, p, x, stride=1, padding=None):
        w = self.w(p + ".weight")
        if padding is None:
            padding = (w.shape[-1] - 1) // 2
        return F.conv2d(x, w, self.sd.get(p + ".bias"), stride=stride, padding=padding)

    def linear(self, p, x):
        return F.linear(x, self.w(p + ".weight"), self.sd.get(p + ".bias"))

    def gn(self, p, x, eps):
        return F.group_norm(x, self.groups, self.w(p + ".weight"), self.w(p + ".bias"), eps)

    def ln(self, p, x):
        return F.layer_norm(x, x.shape[-1:], self.w(p + ".weight"), self.w(p + ".bias"), 1e-5)

    def time_embedding(self, t, batch):
        if t.dim() == 0:
            t = t[None]
        t = t.expand(batch)
        dim = self.cfg["block_out_channels"][0]
        half = dim // 2
        dev = self.w("conv_in.weight").device
        exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=dev) / (half - self.cfg["freq_shift"])
        emb = t.to(dev)[:, None].float() * torch.exp(exponent)[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        if self.cfg["flip_sin_to_cos"]:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        emb = emb.to(self.w("conv_in.weight").dtype)
        return self.linear("time_embedding.linear_2", F.silu(self.linear("time_embedding.linear_1", emb)))

    def resnet(self, p, x, temb):
        h = self.conv(p + ".conv1", F.silu(self.gn(p + ".norm1", x, self.eps)))
        h = h + self.linear(p + ".time_emb_proj", F.silu(temb))[:, :, None, None]
        h = self.conv(p + ".conv2", F.silu(self.gn(p + ".norm2", h, self.eps)))
        if p + ".conv_shortcut.weight" in self.sd:
            x = self.conv(p + ".conv_shortcut", x)
        return x + h

    def attention(self, p, x, ctx, heads):
        b = x.shape[0]
        q = self.linear(p + ".to_q", x)
        k = self.linear(p + ".to_k", ctx)
        v = self.linear(p + ".to_v", ctx)
        d = q.shape[-1] // heads
        q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1) @ v
        o = o.transpose(1, 2).reshape(b, -1, heads * d)
        return self.linear(p + ".to_out.0", o)

    def transformer(self, p, x, text, heads):
        b, c, hh, ww = x.shape
        res = x
        h = self.gn(p + ".norm", x, 1e-6)
        if self.linear_proj:
            h = self.linear(p + ".proj_in", h.permute(0, 2, 3, 1).reshape(b, hh * ww, c))
        else:
            h = self.conv(p + ".proj_in", h).permute(0, 2, 3, 1).reshape(b, hh * ww, -1)
        i = 0
        while p + ".transformer_blocks.%d.norm1.weight" % i in self.sd:
            q = p + ".transformer_blocks.%d" % i
            h = self.attention(q + ".attn1", self.ln(q + ".norm1", h), self.ln(q + ".norm1", h), heads) + h
            h = self.attention(q + ".attn2", self.ln(q + ".norm2", h), text, heads) + h
            a, gate = self.linear(q + ".ff.net.0.proj", self.ln(q + ".norm3", h)).chunk(2, dim=-1)
            h = self.linear(q + ".ff.net.2", a * F.gelu(gate)) + h
            i += 1
        if self.linear_proj:
            h = self.linear(p + ".proj_out", h).reshape(b, hh, ww, -1).permute(0, 3, 1, 2).contiguous()
        else:
            h = self.conv(p + ".proj_out", h.reshape(b, hh, ww, -1).permute(0, 3, 1, 2).contiguous())
        return h + res

    def down_path(self, h, temb, text):
        skips = [h]
        for i in range(len(self.cfg["block_out_channels"])):
            p = "down_blocks.%d" % i
            j = 0
            while p + ".resnets.%d.norm1.weight" % j in self.sd:
                h = self.resnet(p + ".resnets.%d" % j, h, temb)
                if p + ".attentions.%d.norm.weight" % j in self.sd:
                    h = self.transformer(p + ".attentions.%d" % j, h, text, self.heads[i])
                skips.append(h)
                j += 1
            if p + ".downsamplers.0.conv.weight" in self.sd:
                h = self.conv(p + ".downsamplers.0.conv", h, stride=2, padding=self.cfg["downsample_padding"])
                skips.append(h)
        return h, skips

    def mid(self, h, temb, text):
        h = self.resnet("mid_block.resnets.0", h, temb)
        h = self.transformer("mid_block.attentions.0", h, text, self.heads[-1])
        return self.resnet("mid_block.resnets.1", h, temb)

    def unet(self, sample, t, text, down_res, mid_res):
        temb = self.time_embedding(t, sample.shape[0])
        h, skips = self.down_path(self.conv("conv_in", sample), temb, text)
        skips = [s + r for s, r in zip(skips, down_res)]
        h = self.mid(h, temb, text) + mid_res
        n = len(self.cfg["block_out_channels"])
        up_factor = 2 ** (n - 1)
        forward_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        heads = list(reversed(self.heads))
        for i in range(n):
            p = "up_blocks.%d" % i
            j = 0
            while p + ".resnets.%d.norm1.weight" % j in self.sd:
                h = self.resnet(p + ".resnets.%d" % j, torch.cat([h, skips.pop()], dim=1), temb)
                if p + ".attentions.%d.norm.weight" % j in self.sd:
                    h = self.transformer(p + ".attentions.%d" % j, h, text, heads[i])
                j += 1
            if p + ".upsamplers.0.conv.weight" in self.sd:
                if forward_size:
                    h = F.interpolate(h, size=skips[-1].shape[2:], mode="nearest")
                else:
                    h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.conv(p + ".upsamplers.0.conv", h)
        h = F.silu(self.gn("conv_norm_out", h, self.eps))
        return self.conv("conv_out", h)

    def controlnet(self, sample, t, text, cond, scale):
        temb = self.time_embedding(t, sample.shape[0])
        h = self.conv("conv_in", sample)
        c = F.silu(self.conv("controlnet_cond_embedding.conv_in", cond))
        i = 0
        while "controlnet_cond_embedding.blocks.%d.weight" % i in self.sd:
            c = F.silu(self.conv("controlnet_cond_embedding.blocks.%d" % i, c, stride=1 + i % 2, padding=1))
            i += 1
        h = h + self.conv("controlnet_cond_embedding.conv_out", c)
        h, skips = self.down_path(h, temb, text)
        h = self.mid(h, temb, text)
        down = [self.conv("controlnet_down_blocks.%d" % i, s) * scale for i, s in enumerate(skips)]
        return down, self.conv("controlnet_mid_block", h) * scale


def read_cfg(p):
    with open(p) as f:
        return json.load(f)


def random_state_dict(keys_json, dtype, dev, gen):
    """Random weights for the keys of a keys.json, scaled as the Go
    benchmark's randomInit: norm weights 1, matrices and kernels
    U(+-1/sqrt(fan_in)), biases U(+-0.02)."""
    sd = {}
    for name, shape in read_cfg(keys_json)["tensors"].items():
        t = torch.empty(shape, dtype=dtype, device=dev)
        if len(shape) >= 2:
            bound = 1 / math.sqrt(t.numel() // shape[0])
            t.uniform_(-bound, bound, generator=gen)
        elif name.endswith(".weight"):
            t.fill_(1)
        else:
            t.uniform_(-0.02, 0.02, generator=gen)
        sd[name] = t
    return sd


def full_size(iters):
    """BenchmarkUNetFullSize in PyTorch: SD2-base UNet + ControlNet, random
    weights, float16, batch 2, 512x512, on CUDA."""
    dev, dtype = torch.device("cuda"), torch.float16
    gen = torch.Generator(dev).manual_seed(0)
    keys = os.path.join(FIX, "sd2/keys")
    unet = Model(random_state_dict(os.path.join(keys, "unet/keys.json"), dtype, dev, gen),
                 read_cfg(os.path.join(keys, "unet/config.json")))
    cn = Model(random_state_dict(os.path.join(keys, "controlnet/keys.json"), dtype, dev, gen),
               read_cfg(os.path.join(keys, "controlnet/config.json")))
    sample = torch.randn(2, 4, 64, 64, generator=gen, dtype=dtype, device=dev)
    t = torch.tensor([500, 500], device=dev)
    text = torch.randn(2, 77, 1024, generator=gen, dtype=dtype, device=dev)
    cond = torch.rand(2, 3, 512, 512, generator=gen, dtype=dtype, device=dev)

    def step():
        down, mid = cn.controlnet(sample, t, text, cond, 1.0)
        return unet.unet(sample, t, text, down, mid)

    with torch.no_grad():
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(iters):
            out = step()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1000 / iters
    peak = torch.cuda.max_memory_allocated() / 2 ** 20
    print("torch %s, %s: full-size step %.2f ms/step, peak %.0f MiB (%d steps; output finite: %s)"
          % (torch.__version__, torch.cuda.get_device_name(), ms, peak, iters, bool(torch.isfinite(out).all())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--full", action="store_true", help="time the full-size CUDA step of BenchmarkUNetFullSize instead")
    args = ap.parse_args()
    if args.full:
        full_size(args.iters)
        return
    default_threads = torch.get_num_threads()

    unet = Model(load_safetensors(os.path.join(FIX, "sd2/unet/diffusion_pytorch_model.safetensors")),
                 read_cfg(os.path.join(FIX, "sd2/unet/config.json")))
    cn = Model(load_safetensors(os.path.join(FIX, "sd2/controlnet/diffusers/diffusion_pytorch_model.safetensors")),
               read_cfg(os.path.join(FIX, "sd2/controlnet/diffusers/config.json")))
    io = load_safetensors(os.path.join(FIX, "sd2/controlnet/io.safetensors"))
    ref = load_safetensors(os.path.join(FIX, "sd2/unet/io_controlnet.safetensors"))
    sample, t, text = io["sample"], io["timesteps"], io["encoder_hidden_states"]
    cond = io["controlnet_cond_u8"].float() / 255

    def step():
        down, mid = cn.controlnet(sample, t, text, cond, 1.0)
        return unet.unet(sample, t, text, down, mid)

    with torch.no_grad():
        out = step()
        diff = (out - ref["out_sample"]).abs().max().item()
        print("torch %s; max |out - fixture out_sample| = %.3g" % (torch.__version__, diff))
        assert diff < 1e-4, "the re-implementation does not match the fixture"
        for threads in (1, default_threads):
            torch.set_num_threads(threads)
            for _ in range(3):
                step()
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            ms = (time.perf_counter() - start) * 1000 / args.iters
            print("threads=%d%s: %.2f ms/step (%d steps)"
                  % (threads, " (default)" if threads == default_threads else "", ms, args.iters))


if __name__ == "__main__":
    main()
