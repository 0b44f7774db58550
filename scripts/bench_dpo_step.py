#!/usr/bin/python3
"""Times one HPO-weighted Diffusion-DPO optimiser step with diffusers' models,
the library a user runs instead of this project, on the libtorch the Go shim
links (Debian's python3-torch 1.13). The Go side, in the same units:

    OPENBLAS_NUM_THREADS=1 go test ./preference -run '^$' -bench DPOStep -benchtime 20x
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_dpo_step.py

Both build the tiny fixture models of preference/testdata (or
$DP2O_FIXTURES): SD2 — UNet2DConditionModel + ControlNetModel.from_unet with
the flat model.safetensors; FLUX — FluxTransformer2DModel +
FluxControlNetModel.from_transformer. The reference is a deep copy of the
policy; the step is the train_<backbone> fixture's order of operations
(noising, policy forward, reference forward under no_grad, weighted DPO loss,
backward, clip_grad_norm_, AdamW, zero_grad) on step 0's inputs, one intra-op
thread. Step 0's loss is checked against the fixture first. Prints ms per
step (wall and process CPU) and pairs per second.
"""
import argparse
import copy
import json
import os
import struct
import time

import torch
import torch.nn.functional as F
from diffusers import (ControlNetModel, DDPMScheduler, FluxControlNetModel, FluxTransformer2DModel,
                       UNet2DConditionModel)

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.environ.get("DP2O_FIXTURES") or os.path.join(os.path.dirname(HERE), "preference", "testdata")


def load_safetensors(path):
    dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
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


def dpo_loss(model, ref, target, weight, beta):
    p = model.shape[0] // 2
    dims = list(range(1, model.dim()))
    mm = ((model.float() - target) ** 2).mean(dim=dims)
    mr = ((ref.float() - target) ** 2).mean(dim=dims)
    inside = -0.5 * beta * ((mm[:p] - mm[p:]) - (mr[:p] - mr[p:]))
    return (weight * -F.logsigmoid(inside)).sum() / weight.sum()


def sd2(meta):
    unet = UNet2DConditionModel.from_pretrained(os.path.join(FIX, "sd2", "unet")).eval().requires_grad_(False)
    with open(os.path.join(FIX, "sd2", "controlnet", "diffusers", "config.json")) as f:
        widths = json.load(f)["conditioning_embedding_out_channels"]
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(widths))
    cn.load_state_dict(load_safetensors(os.path.join(FIX, "sd2", "controlnet", "model.safetensors")))
    cn.train()
    ref = copy.deepcopy(cn).eval().requires_grad_(False)
    sched = DDPMScheduler.from_pretrained(os.path.join(FIX, "sd2", "scheduler"))
    x = load_safetensors(os.path.join(FIX, "preference", "train_sd2", "inputs.safetensors"))
    s = {k[len("step.0."):]: v for k, v in x.items() if k.startswith("step.0.")}
    x0 = torch.cat([s["x0_w"], s["x0_l"]])
    eps = torch.cat([s["noise"], s["noise"]])
    t = torch.cat([s["timesteps"], s["timesteps"]])
    ehs = torch.cat([s["encoder_hidden_states"]] * 2)
    ctrl = torch.cat([s["control"]] * 2)

    def predict(c, xt):
        down, mid = c(xt, t, encoder_hidden_states=ehs, controlnet_cond=ctrl, conditioning_scale=1.0, return_dict=False)
        return unet(xt, t, encoder_hidden_states=ehs, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample

    def forward():
        xt = sched.add_noise(x0, eps, t)
        model = predict(cn, xt)
        with torch.no_grad():
            r = predict(ref, xt)
        return dpo_loss(model, r, eps, s["weight"], meta["dpo_beta"])

    return cn, forward, s["weight"].shape[0]


def flux(meta):
    tr = FluxTransformer2DModel.from_pretrained(os.path.join(FIX, "flux", "transformer")).eval().requires_grad_(False)
    with open(os.path.join(FIX, "flux", "controlnet", "config.json")) as f:
        ccfg = json.load(f)
    cn = FluxControlNetModel.from_transformer(tr, num_layers=ccfg["num_layers"], num_single_layers=0,
                                              attention_head_dim=tr.config.attention_head_dim,
                                              num_attention_heads=tr.config.num_attention_heads)
    cn.load_state_dict(load_safetensors(os.path.join(FIX, "flux", "controlnet", "model.safetensors")))
    cn.train()
    ref = copy.deepcopy(cn).eval().requires_grad_(False)
    x = load_safetensors(os.path.join(FIX, "preference", "train_flux", "inputs.safetensors"))
    s = {k[len("step.0."):]: v for k, v in x.items() if k.startswith("step.0.")}
    x0 = torch.cat([s["x0_w"], s["x0_l"]])
    eps = torch.cat([s["noise"], s["noise"]])
    sig = torch.cat([s["sigma"], s["sigma"]]).view(-1, 1, 1)
    ts = torch.cat([s["timestep"], s["timestep"]])
    g = torch.full((ts.shape[0],), float(x["guidance"]))
    pe, pooled = torch.cat([s["prompt_embeds"]] * 2), torch.cat([s["pooled_prompt_embeds"]] * 2)
    ctrl = torch.cat([s["control"]] * 2)

    def predict(c, xt):
        blocks, _ = c(hidden_states=xt, controlnet_cond=ctrl, conditioning_scale=1.0, timestep=ts, guidance=g,
                      pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=x["txt_ids"], img_ids=x["img_ids"],
                      return_dict=False)
        return tr(hidden_states=xt, timestep=ts, guidance=g, pooled_projections=pooled, encoder_hidden_states=pe,
                  controlnet_block_samples=blocks, controlnet_single_block_samples=None, txt_ids=x["txt_ids"],
                  img_ids=x["img_ids"], return_dict=False)[0]

    def forward():
        xt = (1 - sig) * x0 + sig * eps
        model = predict(cn, xt)
        with torch.no_grad():
            r = predict(ref, xt)
        return dpo_loss(model, r, eps - x0, s["weight"], meta["dpo_beta"])

    return cn, forward, s["weight"].shape[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", choices=["sd2", "flux", "both"], default="both")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in (["sd2", "flux"] if args.backbone == "both" else [args.backbone]):
        with open(os.path.join(FIX, "preference", "train_" + name, "train.json")) as f:
            meta = json.load(f)
        cn, forward, pairs = (sd2 if name == "sd2" else flux)(meta)
        o = meta["optimizer"]
        opt = torch.optim.AdamW(cn.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                weight_decay=o["weight_decay"], foreach=False)

        def step():
            loss = forward()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(cn.parameters(), meta["clip_grad_norm"]["max_norm"])
            opt.step()
            opt.zero_grad(set_to_none=False)
            return loss

        loss0 = step().item()  # warm-up, and step 0 checked against the fixture
        assert abs(loss0 - meta["per_step"][0]["loss"]) < 1e-5, f"{name}: step-0 loss {loss0}, fixture {meta['per_step'][0]['loss']}"
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
            step()
        wall, cpu = (time.perf_counter() - t0) / args.iters, (time.process_time() - c0) / args.iters
        print(f"diffusers DPO step {name} threads={args.threads}: {wall * 1e3:.2f} ms/step, {cpu * 1e3:.2f} cpu-ms/step, "
              f"{pairs / wall:.2f} pairs/s (torch {torch.__version__})")


if __name__ == "__main__":
    main()
