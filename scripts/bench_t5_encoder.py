#!/usr/bin/python3
"""Times the T5 encoder forward of BenchmarkEncoder (flow/t5) in PyTorch.

The fixture's tiny T5EncoderModel (flux/t5_encoder) runs each input case of
io.safetensors (last_hidden_state only, under torch.no_grad(), one intra-op
thread; wall time and process CPU time, best of 5 rounds), so that the Go port can be compared with Python on the same
libtorch (Debian's python3-torch 1.13 links the libtorch1.13 that
libtorch-dev ships).

transformers is not installed in the reference environment, so the encoder
is written here with torch ops in the order transformers 4.47's modules run
them (T5LayerNorm, T5Attention without a mask, T5DenseGatedActDense with
NewGELUActivation, the shared position bias); the script first checks its
outputs against the fixture's reference tensors. Weights are read from
model.safetensors, or rebuilt from the row-sparse model.safetensors.sparse
that the repository stores.

Run from the repository root:
  /usr/bin/python3 scripts/bench_t5_encoder.py [--iters N] [--fixtures DIR]
and compare with
  go test ./flow/t5 -run '^$' -bench 'Encoder$'
"""

import argparse
import json
import math
import os
import struct
import time

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out, meta = {}, header.get("__metadata__", {})
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = bytearray(data[base + a:base + b])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out, meta


def load_weights(folder):
    full = os.path.join(folder, "model.safetensors")
    if os.path.exists(full):
        return load_safetensors(full)[0]
    sd, meta = load_safetensors(full + ".sparse")
    for key, shape in json.loads(meta["sparse_rows"]).items():
        rows, ids = sd.pop(key + ".rows"), sd.pop(key + ".ids")
        table = torch.zeros(shape, dtype=rows.dtype)
        table[ids] = rows
        sd[key] = table
    return sd


def rms_norm(x, w, eps):
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if w.dtype in (torch.float16, torch.bfloat16):
        x = x.to(w.dtype)
    return w * x


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def bucket(rel, num_buckets, max_distance):
    num_buckets //= 2
    out = (rel > 0).to(torch.long) * num_buckets
    rel = torch.abs(rel)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return out + torch.where(is_small, rel, large)


class Encoder:
    def __init__(self, cfg, sd):
        self.cfg, self.sd = cfg, sd
        assert cfg.get("feed_forward_proj") == "gated-gelu", "the script runs T5 v1.1 (gated-gelu) configs"

    def forward(self, ids):
        cfg, sd = self.cfg, self.sd
        eps, heads, dkv = cfg["layer_norm_epsilon"], cfg["num_heads"], cfg["d_kv"]
        h = torch.nn.functional.embedding(ids, sd["shared.weight"])
        b, n = ids.shape
        pos = torch.arange(n, dtype=torch.long)
        rel = pos[None, :] - pos[:, None]
        table = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        bias = torch.nn.functional.embedding(
            bucket(rel, cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"]), table)
        bias = bias.permute([2, 0, 1]).unsqueeze(0)
        for i in range(cfg["num_layers"]):
            p = f"encoder.block.{i}.layer."
            x = rms_norm(h, sd[p + "0.layer_norm.weight"], eps)
            lin = lambda t, k: torch.nn.functional.linear(t, sd[p + k + ".weight"])
            q = lin(x, "0.SelfAttention.q").view(b, -1, heads, dkv).transpose(1, 2)
            k = lin(x, "0.SelfAttention.k").view(b, -1, heads, dkv).transpose(1, 2)
            v = lin(x, "0.SelfAttention.v").view(b, -1, heads, dkv).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(3, 2))
            scores += bias
            w = torch.softmax(scores.float(), dim=-1).type_as(scores)
            a = torch.matmul(w, v).transpose(1, 2).contiguous().view(b, -1, heads * dkv)
            h = h + lin(a, "0.SelfAttention.o")
            x = rms_norm(h, sd[p + "1.layer_norm.weight"], eps)
            f = gelu_new(lin(x, "1.DenseReluDense.wi_0")) * lin(x, "1.DenseReluDense.wi_1")
            h = h + lin(f, "1.DenseReluDense.wo")
        return rms_norm(h, sd["encoder.final_layer_norm.weight"], eps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--fixtures", default=os.environ.get("DP2O_FIXTURES") or "flow/t5/testdata")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = os.path.join(args.fixtures, "flux", "t5_encoder")
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    enc = Encoder(cfg, load_weights(folder))
    io, _ = load_safetensors(os.path.join(folder, "io.safetensors"))
    cases = sorted({k.split(".")[0] for k in io if k.endswith(".input_ids")})
    with torch.no_grad():
        for c in cases:
            ids, want = io[c + ".input_ids"], io[c + ".last_hidden_state"]
            diff = (enc.forward(ids) - want).abs().max().item()
            assert diff <= 1e-4, f"{c}: max |diff| {diff} against the fixture"
            for _ in range(3):
                enc.forward(ids)
            best, best_cpu = math.inf, math.inf
            for _ in range(5):  # best of 5 rounds of iters, against a busy machine
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(args.iters):
                    enc.forward(ids)
                best = min(best, (time.perf_counter() - start) / args.iters)
                best_cpu = min(best_cpu, (time.process_time() - cpu) / args.iters)
            print(f"{c} {list(ids.shape)} threads=1: {best * 1000:.3f} ms/op, {best_cpu * 1000:.3f} cpu-ms/op"
                  f" (max |diff| vs fixture {diff:.2g})")


if __name__ == "__main__":
    main()
