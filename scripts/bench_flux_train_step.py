#!/usr/bin/python3
"""One C-FLUX ControlNet training step in diffusers, plain and with gradient
checkpointing, to compare with the Go port's BenchmarkTrainStepMemory.

Builds what flow/transformer's BenchmarkTrainStepMemory builds, on the same
libtorch (Debian's python3-torch 1.13):

- diffusers' FluxTransformer2DModel with the published FLUX.1-dev config
  (flow/transformer/testdata/flux/keys/flux_transformer/config.json, or
  $DP2O_FIXTURES/flux/keys/...) narrowed to DP2O_BENCH_HEADS heads (8) with
  DP2O_BENCH_DOUBLE + DP2O_BENCH_SINGLE blocks (4 + 4), float32,
  "dp2o-init-v1" deterministic weights (fixtures/DETINIT.md), frozen;
- FluxControlNetModel.from_transformer(num_layers=2, num_single_layers=0),
  trainable;
- DP2O_BENCH_BATCH (2) samples of DP2O_BENCH_IMAGE² (512) with
  DP2O_BENCH_TEXT (256) text tokens, drawn in the Go benchmark's order.

One step: ControlNet forward, transformer forward with its residuals,
mean(v²) backward into the ControlNet. Each case (plain, then with
enable_gradient_checkpointing on both models: diffusers' per-block
torch.utils.checkpoint) runs in a fresh process, measured as the Go side
measures: the peak resident set (VmHWM, reset with clear_refs) above the
resident set before the step, and the step's process CPU and wall time.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_flux_train_step.py
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 go test ./flow/transformer -run '^$' -bench TrainStepMemory -benchtime 1x
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v else default


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def run_case(checkpointing, threads):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_flux import INPUT_SEED, WEIGHT_SEED, config_path, detinit_
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    torch.set_num_threads(threads)
    with open(config_path()) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    cfg.update(num_attention_heads=env_int("DP2O_BENCH_HEADS", 8), num_layers=env_int("DP2O_BENCH_DOUBLE", 4),
               num_single_layers=env_int("DP2O_BENCH_SINGLE", 4))
    batch, image, text = env_int("DP2O_BENCH_BATCH", 2), env_int("DP2O_BENCH_IMAGE", 512), env_int("DP2O_BENCH_TEXT", 256)
    transformer = FluxTransformer2DModel(**cfg)
    detinit_(transformer, WEIGHT_SEED)
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=2, num_single_layers=0,
        attention_head_dim=cfg["attention_head_dim"], num_attention_heads=cfg["num_attention_heads"])
    transformer.requires_grad_(False)
    controlnet.train()
    if checkpointing:
        transformer.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()

    gen = torch.Generator().manual_seed(INPUT_SEED)
    grid = image // 16
    L = grid * grid
    x = torch.randn(batch, L, cfg["in_channels"], generator=gen)
    cond = torch.randn(batch, L, cfg["in_channels"], generator=gen)
    enc = torch.randn(batch, text, cfg["joint_attention_dim"], generator=gen)
    pooled = torch.randn(batch, cfg["pooled_projection_dim"], generator=gen)
    img_ids = torch.zeros(grid, grid, 3)
    img_ids[..., 1] = img_ids[..., 1] + torch.arange(grid)[:, None]
    img_ids[..., 2] = img_ids[..., 2] + torch.arange(grid)[None, :]
    img_ids = img_ids.reshape(L, 3)
    txt_ids = torch.zeros(text, 3)
    t = torch.full((batch,), 0.5)
    g = torch.full((batch,), 3.5)

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status_kb("VmRSS")
    cpu0, t0 = time.process_time(), time.time()
    blocks, singles = controlnet(hidden_states=x, controlnet_cond=cond, conditioning_scale=1.0, timestep=t,
                                 guidance=g, pooled_projections=pooled, encoder_hidden_states=enc,
                                 txt_ids=txt_ids, img_ids=img_ids, return_dict=False)
    out = transformer(hidden_states=x, timestep=t, guidance=g, pooled_projections=pooled,
                      encoder_hidden_states=enc, controlnet_block_samples=blocks,
                      controlnet_single_block_samples=singles, txt_ids=txt_ids, img_ids=img_ids,
                      return_dict=False)[0]
    loss = out.square().mean()
    loss.backward()
    cpu, wall = time.process_time() - cpu0, time.time() - t0
    peak = status_kb("VmHWM") - base
    return {"peak_mib": peak / 1024, "cpu_ms": cpu * 1000, "wall_ms": wall * 1000, "loss": loss.item(),
            "setup": f"width {cfg['num_attention_heads'] * cfg['attention_head_dim']}, "
                     f"{cfg['num_layers']}+{cfg['num_single_layers']} blocks, ControlNet 2 blocks, batch {batch}, "
                     f"{L} image + {text} text tokens, torch {torch.__version__}"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    ap.add_argument("--case", choices=["plain", "checkpointed"], help="run one case in this process (internal)")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case == "checkpointed", args.threads)))
        return
    for case in ["plain", "checkpointed"]:
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"diffusers {case} ({r['setup']}): peak {r['peak_mib']:.0f} MiB, {r['cpu_ms']:.0f} cpu-ms/step, "
              f"{r['wall_ms']:.0f} ms/step, loss {r['loss']:.6f}")


if __name__ == "__main__":
    main()
