#!/usr/bin/python3
"""One step of the tiny fixture FluxControlNetPipeline in diffusers, to compare
with flow's BenchmarkPipelineStep on the same libtorch (Debian's python3-torch 1.13).

The step is what FluxControlNetPipeline.__call__ does per timestep: the
ControlNet forward, the transformer forward with the ControlNet block samples,
and FlowMatchEulerDiscreteScheduler.step. Models: the flux fixtures' tiny
FluxTransformer2DModel (flux/transformer) and the ControlNet built with
FluxControlNetModel.from_transformer(num_layers, num_single_layers of
flux/controlnet/config.json) and loaded from flux/controlnet/model.safetensors,
as the fixture pipeline did; inputs: step 0 of flux/pipeline/io.safetensors.
It prints wall-clock and process CPU time per step (the latter is the
steadier number on a shared machine). Before timing it checks the step's noise_pred and latents_out against the fixture.

    PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_flux_pipeline_step.py
    go test ./flow -run '^$' -bench PipelineStep
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from safetensors.torch import load_file

from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetModel, FluxTransformer2DModel


def calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift):
    """The FLUX pipelines' calculate_shift (their module imports transformers, absent here)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def fixtures():
    return os.environ.get("DP2O_FIXTURES") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "flow", "testdata")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    root = os.path.join(fixtures(), "flux")
    rep = json.load(open(os.path.join(root, "pipeline", "report.json")))
    io = load_file(os.path.join(root, "pipeline", "io.safetensors"))
    cc = json.load(open(os.path.join(root, "controlnet", "config.json")))

    transformer = FluxTransformer2DModel.from_pretrained(os.path.join(root, "transformer")).eval()
    tc = transformer.config
    controlnet = FluxControlNetModel.from_transformer(
        transformer, attention_head_dim=tc.attention_head_dim, num_attention_heads=tc.num_attention_heads,
        num_layers=cc["num_layers"], num_single_layers=cc["num_single_layers"])
    controlnet.load_state_dict(load_file(os.path.join(root, "controlnet", "model.safetensors")), strict=True)
    controlnet.eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(root, "scheduler", "scheduler"))

    latents = io["step.0.latents_in"]
    cond = io["control_latents_packed"]
    text, pooled = io["prompt_embeds"], io["pooled_prompt_embeds"]
    text_ids, img_ids = io["text_ids"], io["latent_image_ids"]
    steps = rep["steps"]
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(latents.shape[1], sched.config.base_image_seq_len, sched.config.max_image_seq_len,
                         sched.config.base_shift, sched.config.max_shift)

    def step():
        sched.set_timesteps(sigmas=sigmas, mu=mu)
        t = sched.timesteps[0]
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        guidance = torch.tensor([rep["guidance_scale"]]).expand(latents.shape[0])
        blocks, singles = controlnet(hidden_states=latents, controlnet_cond=cond,
                                     conditioning_scale=rep["controlnet_conditioning_scale"],
                                     timestep=timestep / 1000, guidance=guidance, pooled_projections=pooled,
                                     encoder_hidden_states=text, txt_ids=text_ids, img_ids=img_ids,
                                     return_dict=False)
        v = transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                        pooled_projections=pooled, encoder_hidden_states=text,
                        controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                        txt_ids=text_ids, img_ids=img_ids, return_dict=False,
                        controlnet_blocks_repeat=False)[0]
        return v, sched.step(v, t, latents, return_dict=False)[0]

    with torch.no_grad():
        v, out = step()
        for name, got in (("step.0.noise_pred", v), ("step.0.latents_out", out)):
            d = (got - io[name]).abs().max().item()
            print(f"check {name}: max |diff| {d:.3g}")
            assert d <= 1e-4, name
        default = torch.get_num_threads()
        for n in sorted({1, default}):
            torch.set_num_threads(n)
            step()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.iters):
                step()
            ms = (time.perf_counter() - t0) * 1000 / args.iters
            cpu = (time.process_time() - c0) * 1000 / args.iters
            print(f"threads={n}: {ms:.3f} ms/step, {cpu:.3f} cpu-ms/step ({args.iters} iterations)")


if __name__ == "__main__":
    main()
