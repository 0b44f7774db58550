#!/usr/bin/python3
"""One FLUX + ControlNet sampling step in diffusers, to compare with the Go port.

Builds what flow/transformer's BenchmarkFluxControlNetStep builds, on the same
libtorch (Debian's python3-torch 1.13):

- diffusers' FluxTransformer2DModel with the published FLUX.1-dev config
  (flow/transformer/testdata/flux/keys/flux_transformer/config.json, or
  $DP2O_FIXTURES/flux/keys/...), truncated to 2 double + 2 single blocks,
  float32, with "dp2o-init-v1" deterministic weights (fixtures/DETINIT.md);
- FluxControlNetModel.from_transformer(num_layers=2, num_single_layers=0),
  as DP²O-SR builds its ControlNet;
- 512² inputs (1024 image tokens, 512 text tokens) drawn in the same order
  from a generator with the same seed.

It times the step (ControlNet forward, then the transformer with the
residuals) with one intra-op thread (--threads) and prints ms/step and the
output's mean |v| and sum, which the Go benchmark logs too.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_flux.py
    OPENBLAS_NUM_THREADS=1 go test ./flow/transformer -run '^$' -bench FluxControlNetStep -benchtime 1x

(libtorch does not set OpenBLAS's own thread count, which defaults to the number of cores.)
"""
import argparse
import json
import math
import os
import resource
import time

import torch

from diffusers import FluxControlNetModel, FluxTransformer2DModel

# Keep in step with flow/transformer/bench_test.go.
DOUBLE, SINGLE, CONTROL_LAYERS = 2, 2, 2
IMAGE, TEXT_TOKENS = 512, 512
WEIGHT_SEED, INPUT_SEED = 1234, 5678
SIGMA, GUIDANCE = 1.0, 2.5


def config_path():
    root = os.environ.get("DP2O_FIXTURES") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "flow", "transformer", "testdata")
    return os.path.join(root, "flux", "keys", "flux_transformer", "config.json")


def detinit_(model, seed):
    """dp2o-init-v1: keys in byte-wise order, randn in float32, scaled."""
    gen = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k in sorted(sd, key=lambda s: s.encode()):
        t = sd[k]
        r = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        if k.endswith("running_var"):
            r = 1 + 0.1 * r.abs()
        elif r.dim() >= 2:
            r = r / math.sqrt(math.prod(t.shape[1:]))
        elif r.dim() == 1 and (k.endswith("weight") or k.endswith("gamma") or k.endswith("scale")):
            r = 1 + 0.1 * r
        else:
            r = 0.02 * r
        t.copy_(r.to(t.dtype))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1, help="timed steps")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    with open(config_path()) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    cfg.update(num_layers=DOUBLE, num_single_layers=SINGLE)
    t0 = time.time()
    transformer = FluxTransformer2DModel(**cfg).eval()
    detinit_(transformer, WEIGHT_SEED)
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=CONTROL_LAYERS, num_single_layers=0,
        attention_head_dim=cfg["attention_head_dim"], num_attention_heads=cfg["num_attention_heads"]).eval()
    print(f"built the models in {time.time() - t0:.1f} s")

    gen = torch.Generator().manual_seed(INPUT_SEED)
    grid = IMAGE // 16
    L = grid * grid
    x = torch.randn(1, L, cfg["in_channels"], generator=gen)
    cond = torch.randn(1, L, cfg["in_channels"], generator=gen)
    text = torch.randn(1, TEXT_TOKENS, cfg["joint_attention_dim"], generator=gen)
    pooled = torch.randn(1, cfg["pooled_projection_dim"], generator=gen)
    img_ids = torch.zeros(grid, grid, 3)
    img_ids[..., 1] = img_ids[..., 1] + torch.arange(grid)[:, None]
    img_ids[..., 2] = img_ids[..., 2] + torch.arange(grid)[None, :]
    img_ids = img_ids.reshape(L, 3)
    txt_ids = torch.zeros(TEXT_TOKENS, 3)
    t = torch.tensor([SIGMA])
    g = torch.tensor([GUIDANCE])

    def step():
        blocks, singles = controlnet(hidden_states=x, controlnet_cond=cond, conditioning_scale=1.0, timestep=t,
                                     guidance=g, pooled_projections=pooled, encoder_hidden_states=text,
                                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)
        return transformer(hidden_states=x, timestep=t, guidance=g, pooled_projections=pooled,
                           encoder_hidden_states=text, controlnet_block_samples=blocks,
                           controlnet_single_block_samples=singles, txt_ids=txt_ids, img_ids=img_ids,
                           return_dict=False)[0]

    for _ in range(args.warmup):
        step()
    start, cpu0, t0 = time.time(), time.process_time(), os.times()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.steps):
        out = step()
    t1 = os.times()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // args.steps
    print(f"per step: user {(t1.user - t0.user) / args.steps:.2f} s, system {(t1.system - t0.system) / args.steps:.2f} s, "
          f"minor page faults {faults}")
    ms = (time.time() - start) * 1000 / args.steps
    cpu_ms = (time.process_time() - cpu0) * 1000 / args.steps
    # CPU time of the process: on a shared machine the wall time includes waiting for a core.
    print(f"python threads={args.threads} FluxControlNetStep {ms:.0f} ms/step {cpu_ms:.0f} cpu-ms/step")
    print(f"output {list(out.shape)} mean|v| {out.abs().mean().item():.6f} sum {out.sum().item():.6f}")


if __name__ == "__main__":
    main()
