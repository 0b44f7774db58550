#!/usr/bin/env python3
"""Build an alternate flux/ fixture set (transformer, controlnet, vae, scheduler, clip_l) with the public layout.

    PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/altfixtures/gen_flux.py OUT_DIR [--public DIR]

Writes OUT_DIR/flux/{transformer,controlnet,vae,scheduler,clip_l} from a tiny diffusers
FluxTransformer2DModel / FluxControlNetModel.from_transformer / AutoencoderKL and
FlowMatchEulerDiscreteScheduler whose depths, head
sizes, RoPE axes, text widths, batch, token counts, timesteps and seeds all
differ from the public set, with the file names, tensor names and dtypes the
public READMEs describe. Weights follow DETINIT ("dp2o-init-v1") with another
seed; the ControlNet's zero layers are re-drawn as the public README says.
Every other flux/ folder is copied from the public set — NOTE: flux/pipeline
was made with the public transformer and ControlNet, so it only matches the
public set (run ./flow/transformer, ./flow/scheduler, ./diffusion/vae and
./diffusion/clip, not ./flow, on this set).
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

torch.set_num_threads(1)

ap = argparse.ArgumentParser(description="alternate flux/ fixture set")
ap.add_argument("out")
ap.add_argument("--public", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "fixtures", "flux"))
ap.add_argument("--variant", default="a", choices=["a", "b"])
ARGS = ap.parse_args()
OUT = os.path.join(os.path.abspath(ARGS.out), "flux")
PUB = os.path.abspath(ARGS.public)

CONFIG = dict(patch_size=1, in_channels=64, num_layers=5, num_single_layers=3, attention_head_dim=12,
              num_attention_heads=3, joint_attention_dim=20, pooled_projection_dim=12, guidance_embeds=True,
              axes_dims_rope=[2, 4, 6])
CN_LAYERS, CN_SINGLE = 3, 0
SEED, REINIT_SEED, INPUT_SEED = 4400, 4401, 4402
B, GRID, T = 2, (3, 5), 7
TIMESTEP, GUIDANCE = [0.4, 0.9], [3.5, 3.5]
SCALES = [1.0, 0.45]
VAE = dict(block_out_channels=[6, 12, 24, 24], layers_per_block=2, norm_num_groups=3, latent_channels=16,
           scaling_factor=0.41, shift_factor=-0.07, sample_size=96)
VAE_SEED, VAE_INPUT_SEED, VAE_NOISE_SEED = 5100, 5101, 5102
VAE_IMAGE = (2, 48, 32)     # batch, H, W of the encode input
VAE_LATENT = (1, 5, 3)      # batch, h, w of the decode input
PACK_LATENT = (3, 6, 10)    # batch, h, w of the packing input (even sides)
CLIP_L = dict(hidden_size=12, num_hidden_layers=3, num_attention_heads=3, intermediate_size=20, seed=3100,
              cases=["ram_tags_city", "apostrophes", "exact_76_tokens", "empty", "emoji"])
SCHED = dict(cases={"flux_768x768_30": (768, 768, 30), "flux_h520_w200_9": (520, 200, 9),
                    "flux_h2048_w1024_12": (2048, 1024, 12), "pipeline_h32_w80_5": (32, 80, 5)},
             step_case="flux_768x768_30", step_indices=[0, 7, 28, 29], tokens=5, channels=32,
             scale_noise_indices=[0, 15, 29], batch=3, loop_steps=4, seed=2124)
if ARGS.variant == "b":
    CONFIG.update(num_layers=4, num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
                  joint_attention_dim=24, pooled_projection_dim=6, axes_dims_rope=[4, 2, 2])
    CN_LAYERS = 4
    SEED, REINIT_SEED, INPUT_SEED = 4500, 4501, 4502
    B, GRID, T = 1, (6, 2), 13
    TIMESTEP, GUIDANCE = [0.05], [1.0]
    SCALES = [1.0, 1.6]
    VAE = dict(block_out_channels=[8, 8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
               scaling_factor=1.5, shift_factor=0.2, sample_size=64)
    VAE_SEED, VAE_INPUT_SEED, VAE_NOISE_SEED = 5200, 5201, 5202
    VAE_IMAGE = (1, 20, 28)
    VAE_LATENT = (2, 6, 4)
    PACK_LATENT = (1, 4, 2)
    CLIP_L = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=24, seed=3200,
                  cases=["very_long_truncated"])
    SCHED = dict(cases={"pipeline_h16_w16_1": (16, 16, 1), "flux_h1008_w1040_50": (1008, 1040, 50),
                        "flux_64x64_2": (64, 64, 2)},
                 step_case="flux_h1008_w1040_50", step_indices=[49, 3], tokens=11, channels=16,
                 scale_noise_indices=[49], batch=1, loop_steps=2, seed=2224)

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxControlNetModel, FluxTransformer2DModel  # noqa: E402
from diffusers.models.attention_processor import FluxAttnProcessor2_0  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipref import CLIPText  # noqa: E402


def save(t, path, metadata=None):
    save_file({k: v.detach().contiguous() for k, v in t.items()}, path, metadata)


def dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def detinit(model, seed):
    """DETINIT "dp2o-init-v1" (../DETINIT.md) over the model's state dict."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    new = {}
    for k in sorted(sd):
        v = sd[k]
        if not v.is_floating_point():
            new[k] = torch.zeros_like(v)
            continue
        r = torch.randn(v.shape, generator=g, dtype=torch.float32)
        if k.endswith("running_var"):
            r = 1 + 0.1 * r.abs()
        elif r.dim() >= 2:
            r = r / math.sqrt(float(np.prod(v.shape[1:])))
        elif r.dim() == 1 and (k.endswith("weight") or k.endswith("gamma") or k.endswith("scale")):
            r = 1 + 0.1 * r
        else:
            r = 0.02 * r
        new[k] = r.to(v.dtype)
    model.load_state_dict(new, strict=True)


class Taps:
    def __init__(self):
        self.out, self.handles = {}, []

    def on(self, module, fn):
        self.handles.append(module.register_forward_hook(lambda m, i, o: fn(o)))

    def close(self):
        for h in self.handles:
            h.remove()


def common_taps(model, prefix, taps):
    o = taps.out
    tp = {"n": 0}

    def time_proj(x):
        o[prefix + ("time_proj.timestep" if tp["n"] == 0 else "time_proj.guidance")] = x.clone()
        tp["n"] += 1
    taps.on(model.time_text_embed.time_proj, time_proj)
    for n in ["timestep_embedder", "guidance_embedder", "text_embedder"]:
        taps.on(getattr(model.time_text_embed, n), lambda x, n=n: o.__setitem__(prefix + n, x.clone()))
    taps.on(model.time_text_embed, lambda x: o.__setitem__(prefix + "time_text_embed", x.clone()))
    taps.on(model.x_embedder, lambda x: o.__setitem__(prefix + "x_embedder", x.clone()))
    taps.on(model.context_embedder, lambda x: o.__setitem__(prefix + "context_embedder", x.clone()))

    def pos(x):
        o[prefix + "pos_embed.cos"], o[prefix + "pos_embed.sin"] = x[0].clone(), x[1].clone()
    taps.on(model.pos_embed, pos)
    for i, blk in enumerate(model.transformer_blocks):
        def dbl(x, i=i):
            o[f"{prefix}transformer_blocks.{i}.encoder_hidden_states"] = x[0].clone()
            o[f"{prefix}transformer_blocks.{i}.hidden_states"] = x[1].clone()
        taps.on(blk, dbl)


# FluxControlNetPipeline's static latent helpers, as diffusers 0.32.2 writes them (the pipeline module imports
# transformers, which is not installed here).
def pack_latents(latents, batch_size, num_channels_latents, height, width):
    latents = latents.view(batch_size, num_channels_latents, height // 2, 2, width // 2, 2)
    latents = latents.permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(batch_size, (height // 2) * (width // 2), num_channels_latents * 4)


def unpack_latents(latents, height, width, vae_scale_factor):
    batch_size, num_patches, channels = latents.shape
    height = 2 * (int(height) // (vae_scale_factor * 2))
    width = 2 * (int(width) // (vae_scale_factor * 2))
    latents = latents.view(batch_size, height // 2, width // 2, channels // 4, 2, 2)
    latents = latents.permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch_size, channels // (2 * 2), height, width)


def prepare_latent_image_ids(batch_size, height, width, device, dtype):
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    hh, ww, cc = ids.shape
    return ids.reshape(hh * ww, cc).to(device=device, dtype=dtype)


def gen_vae():
    """flux/vae: a tiny AutoencoderKL with the FLUX VAE structure (no quant convs, shift factor) and the
    pipeline's latent helpers (FluxControlNetPipeline's static _pack_latents / _unpack_latents /
    _prepare_latent_image_ids, transcribed above)."""
    # The transcribed helpers reproduce the public fixture's packing and ids.
    pub = load_file(os.path.join(PUB, "vae", "io.safetensors"))
    pz = pub["pack_input"]
    pp = pack_latents(pz, *pz.shape)
    assert torch.equal(pp, pub["packed"]) and torch.equal(unpack_latents(pp, pz.shape[2] * 8, pz.shape[3] * 8, 8), pz)
    assert torch.equal(prepare_latent_image_ids(pz.shape[0], pz.shape[2] // 2, pz.shape[3] // 2, "cpu", torch.float32),
                       pub["latent_image_ids"])

    d = os.path.join(OUT, "vae")
    if os.path.isdir(d):
        shutil.rmtree(d)
    n = len(VAE["block_out_channels"])
    cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
               up_block_types=["UpDecoderBlock2D"] * n, act_fn="silu", latents_mean=None, latents_std=None,
               force_upcast=True, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True, **VAE)
    vae = AutoencoderKL(**cfg)
    detinit(vae, VAE_SEED)
    vae.eval()
    from diffusers.models.attention_processor import AttnProcessor2_0
    vae.set_attn_processor(AttnProcessor2_0())
    vae.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(VAE_INPUT_SEED)
    B, H, W = VAE_IMAGE
    image = torch.rand(B, 3, H, W, generator=g) * 2 - 1
    b, h, w = VAE_LATENT
    z = torch.randn(b, VAE["latent_channels"], h, w, generator=g)
    pb, ph, pw = PACK_LATENT
    pack_in = torch.randn(pb, VAE["latent_channels"], ph, pw, generator=g)
    taps = Taps()
    for name in ["encoder.conv_in", "encoder.mid_block", "encoder.conv_out", "decoder.conv_in", "decoder.mid_block"]:
        taps.on(vae.get_submodule(name), lambda x, name=name: taps.out.__setitem__("inter." + name, x.clone()))
    for i, blk in enumerate(vae.encoder.down_blocks):
        taps.on(blk, lambda x, i=i: taps.out.__setitem__(f"inter.encoder.down_blocks.{i}", x.clone()))
    for i, blk in enumerate(vae.decoder.up_blocks):
        taps.on(blk, lambda x, i=i: taps.out.__setitem__(f"inter.decoder.up_blocks.{i}", x.clone()))
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(VAE_NOISE_SEED))
        sample = dist.sample(torch.Generator().manual_seed(VAE_NOISE_SEED))
        dec = vae.decode(z).sample
    taps.close()
    assert torch.equal(sample, dist.mean + dist.std * noise)
    sf, sh = VAE["scaling_factor"], VAE["shift_factor"]
    packed = pack_latents(pack_in, pb, VAE["latent_channels"], ph, pw)
    vsf = 2 ** (n - 1)
    unpacked = unpack_latents(packed, ph * vsf, pw * vsf, vsf)
    assert torch.equal(unpacked, pack_in)
    ids = prepare_latent_image_ids(pb, ph // 2, pw // 2, torch.device("cpu"), torch.float32)
    t = dict(taps.out)
    t.update({"image": image, "decode_input": z, "decode_output": dec, "latent_mean": dist.mean,
              "latent_logvar": dist.logvar, "latent_std": dist.std, "posterior_noise": noise, "posterior_sample": sample,
              "control_latents": (sample - sh) * sf, "decode_input_from_transformer_space": z / sf + sh,
              "pack_input": pack_in, "packed": packed, "latent_image_ids": ids})
    save(t, os.path.join(d, "io.safetensors"))
    v64 = vae.double()
    with torch.no_grad():
        d64 = v64.encode(image.double()).latent_dist
        dec64 = v64.decode(z.double()).sample
    vae.float()
    dec_d = (dec64.float() - dec).abs().max().item()
    dump_json({"seed": VAE_SEED, "params": sum(p.numel() for p in vae.parameters()),
               "config": {k: v for k, v in cfg.items()}, "attn_processor": "AttnProcessor2_0",
               "f64_mean_max_abs": (d64.mean.float() - dist.mean).abs().max().item(),
               "f64_logvar_max_abs": (d64.logvar.float() - dist.logvar).abs().max().item(),
               "f64_decode_max_abs": dec_d, "f64_decode_rel": dec_d / dec.abs().max().item(),
               "absmax_mean": dist.mean.abs().max().item(), "absmax_logvar": dist.logvar.abs().max().item(),
               "absmax_decode": dec.abs().max().item()}, os.path.join(d, "report.json"))
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(f"# vae — ALTERNATE set\n\nWritten by `scripts/altfixtures/gen_flux.py` (variant {ARGS.variant}); same "
                f"layout and tensor names as the public folder. AutoencoderKL {VAE}, DETINIT seed {VAE_SEED}; image "
                f"{VAE_IMAGE}, decode latent {VAE_LATENT}, packing input {PACK_LATENT}; inputs seed {VAE_INPUT_SEED}, "
                f"posterior generator {VAE_NOISE_SEED}.\n")


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.16):
    """pipeline_flux.calculate_shift of diffusers 0.32.2 (the module imports transformers)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def pipeline_schedule(folder, height, width, steps):
    """What FluxControlNetPipeline.__call__ does to the scheduler for an image of height×width."""
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder)
    seq = (int(height) // 16) * (int(width) // 16)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    c = sched.config
    mu = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.16))
    sched.set_timesteps(sigmas=sigmas, mu=mu, device="cpu")
    return sched, seq, mu


def schedule_tensors(sched, name):
    ts = sched.timesteps
    div = ts.to(torch.float32) / 1000
    return {name + ".sigmas": sched.sigmas.clone(), name + ".timesteps": ts.clone(), name + ".timestep_div_1000": div,
            name + ".timestep_seen_by_model": div * 1000,
            name + ".timestep_seen_by_model_fp16": (ts.to(torch.float16) / 1000) * 1000}


def gen_scheduler():
    """flux/scheduler: FLUX.1-dev's scheduler config (copied) driven as the pipeline drives it, other cases."""
    d = os.path.join(OUT, "scheduler")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "scheduler"))
    cfg_dir = os.path.join(d, "scheduler")
    shutil.copy(os.path.join(PUB, "scheduler", "scheduler", "scheduler_config.json"), cfg_dir)
    # The transcription reproduces the public cases bit for bit.
    with open(os.path.join(PUB, "scheduler", "report.json")) as f:
        prep = json.load(f)
    pio = load_file(os.path.join(PUB, "scheduler", "io.safetensors"))
    for name, c in prep["cases"].items():
        sched, seq, mu = pipeline_schedule(cfg_dir, c["height"], c["width"], c["num_inference_steps"])
        assert seq == c["image_seq_len"] and mu == c["mu"]
        for k, v in schedule_tensors(sched, name).items():
            assert torch.equal(v, pio[k]), k

    t, cases = {}, {}
    init = FlowMatchEulerDiscreteScheduler.from_pretrained(cfg_dir)
    t["init.sigmas"], t["init.timesteps"] = init.sigmas.clone(), init.timesteps.clone()
    for name, (h, w, n) in SCHED["cases"].items():
        sched, seq, mu = pipeline_schedule(cfg_dir, h, w, n)
        t.update(schedule_tensors(sched, name))
        rt = (sched.timesteps / 1000 * 1000 != sched.timesteps).sum().item()
        cases[name] = {"height": h, "width": w, "image_seq_len": seq, "num_inference_steps": n, "mu": mu,
                       "exp_mu_float32": float(np.float32(math.exp(mu))), "timestep_roundtrip_mismatches": rt}
    g = torch.Generator().manual_seed(SCHED["seed"])
    shape = (1, SCHED["tokens"], SCHED["channels"])
    h, w, n = SCHED["cases"][SCHED["step_case"]]
    for i in SCHED["step_indices"]:
        x = torch.randn(shape, generator=g)
        v = torch.randn(shape, generator=g)
        p = f"step.{i}."
        for suffix, xx, vv in [("", x, v), ("_fp16", x.half(), v.half())]:
            sched, _, _ = pipeline_schedule(cfg_dir, h, w, n)
            sched.set_begin_index(i)
            out = sched.step(vv, sched.timesteps[i], xx, return_dict=False)[0]
            t.update({p + "sample" + suffix: xx, p + "model_output" + suffix: vv, p + "prev_sample" + suffix: out})
    sched, _, _ = pipeline_schedule(cfg_dir, h, w, n)
    x = torch.randn(shape, generator=g)
    t["loop.x0"] = x
    for k in range(SCHED["loop_steps"]):
        v = torch.randn(shape, generator=g)
        x = sched.step(v, sched.timesteps[k], x, return_dict=False)[0]
        t[f"loop.model_output.{k}"], t[f"loop.x{k + 1}"] = v, x
    B = SCHED["batch"]
    nshape = (B, SCHED["tokens"], SCHED["channels"])
    x0 = torch.randn(nshape, generator=g)
    eps = torch.randn(nshape, generator=g)
    t["scale_noise.sample"], t["scale_noise.noise"] = x0, eps
    for i in SCHED["scale_noise_indices"]:
        sched, _, _ = pipeline_schedule(cfg_dir, h, w, n)
        ts = sched.timesteps[i].repeat(B)
        t[f"scale_noise.{i}.timestep"] = ts
        t[f"scale_noise.{i}.output"] = sched.scale_noise(x0, ts, eps)
    idx = torch.randint(0, len(init.sigmas), (B,), generator=g)
    sigma = init.sigmas[idx].to(torch.float32)
    sg = sigma.view(B, 1, 1)
    t.update({"train.sigma": sigma, "train.x_sigma": (1.0 - sg) * x0 + sg * eps, "train.target_v": eps - x0})
    save(t, os.path.join(d, "io.safetensors"))
    dump_json({"step_case": SCHED["step_case"], "step_case_mu": cases[SCHED["step_case"]]["mu"],
               "step_indices": SCHED["step_indices"], "tokens": SCHED["tokens"],
               "scale_noise_indices": SCHED["scale_noise_indices"], "cases": cases}, os.path.join(d, "report.json"))
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(f"# scheduler — ALTERNATE set\n\nWritten by `scripts/altfixtures/gen_flux.py` (variant {ARGS.variant}): "
                f"diffusers FlowMatchEulerDiscreteScheduler with FLUX.1-dev's config (copied), driven as "
                f"FluxControlNetPipeline does (transcribed; checked bit for bit on the public cases). Cases "
                f"{SCHED['cases']}; steps at {SCHED['step_indices']} of {SCHED['step_case']}, tensors "
                f"(1, {SCHED['tokens']}, {SCHED['channels']}), seed {SCHED['seed']}.\n")


def gen_clip_l():
    """flux/clip_l: tiny quick_gelu CLIPTextModel (FLUX's text_encoder), DETINIT weights, ids of
    ../../sd2/clip_tokenizer/cases.json in the CLIP-L convention (pad = eos)."""
    d = os.path.join(OUT, "clip_l")
    shutil.rmtree(d)
    shutil.copytree(os.path.join(PUB, "clip_l", "tokenizer"), os.path.join(d, "tokenizer"))
    with open(os.path.join(PUB, "clip_l", "config.json")) as f:
        cfg = json.load(f)
    cfg.update({k: CLIP_L[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")})
    cfg["projection_dim"] = CLIP_L["hidden_size"]
    dump_json(cfg, os.path.join(d, "config.json"))
    m = CLIPText(cfg).eval()
    detinit(m, CLIP_L["seed"])
    save(m.state_dict(), os.path.join(d, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(os.path.dirname(PUB), "sd2", "clip_tokenizer", "cases.json")) as f:
        cs = {c["name"]: c for c in json.load(f)["cases"]}
    ids = torch.tensor([cs[n]["ids_clip_l"] for n in CLIP_L["cases"]], dtype=torch.int64)
    with torch.no_grad():
        last, pooled, hs = m(ids)
        l64, p64, _ = m.double()(ids)
    m.float()
    t = {"input_ids": ids, "eos_index": ids.argmax(-1), "last_hidden_state": last, "pooler_output": pooled}
    for i, h in enumerate(hs):
        t[f"hidden_states.{i}"] = h
    save(t, os.path.join(d, "io.safetensors"))
    with open(os.path.join(PUB, "clip_l", "report.json")) as f:
        sha = json.load(f)["flux_tokenizer_files_sha256"]
    dl = (l64.float() - last).abs().max().item()
    dump_json({"seed": CLIP_L["seed"], "params": sum(p.numel() for p in m.parameters()), "case_names": CLIP_L["cases"],
               "texts": [cs[n]["text"] for n in CLIP_L["cases"]], "f64_last_max_abs": dl,
               "f64_last_rel": dl / last.abs().max().item(), "f64_pooled_max_abs": (p64.float() - pooled).abs().max().item(),
               "absmax_last": last.abs().max().item(), "flux_tokenizer_files_sha256": sha}, os.path.join(d, "report.json"))
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(f"# clip_l — ALTERNATE set\n\nWritten by `scripts/altfixtures/gen_flux.py` (variant {ARGS.variant}): "
                f"CLIPTextModel re-implementation (quick_gelu) {dict((k, v) for k, v in CLIP_L.items() if k != 'cases')}, "
                f"DETINIT weights; rows = cases {CLIP_L['cases']} of ../../sd2/clip_tokenizer/cases.json.\n")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for name in sorted(os.listdir(PUB)):
        if name in ("transformer", "controlnet", "vae", "scheduler"):
            continue
        src = os.path.join(PUB, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(OUT, name))

    # The DETINIT transcription reproduces the public transformer's weights from its seed.
    with open(os.path.join(PUB, "transformer", "report.json")) as f:
        prep = json.load(f)
    ptr = FluxTransformer2DModel(**prep["config"])
    detinit(ptr, prep["seed"])
    pw = load_file(os.path.join(PUB, "transformer", "diffusion_pytorch_model.safetensors"))
    assert set(pw) == set(ptr.state_dict()) and all(torch.equal(v, pw[k]) for k, v in ptr.state_dict().items())
    del ptr, pw

    tr = FluxTransformer2DModel(**CONFIG)
    detinit(tr, SEED)
    tr.eval()
    tr.set_attn_processor(FluxAttnProcessor2_0())
    td = os.path.join(OUT, "transformer")
    tr.save_pretrained(td, safe_serialization=True)

    g = torch.Generator().manual_seed(INPUT_SEED)
    h, w = GRID
    L = h * w
    D = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
    hidden = torch.randn(B, L, CONFIG["in_channels"], generator=g)
    text = torch.randn(B, T, CONFIG["joint_attention_dim"], generator=g)
    pooled = torch.randn(B, CONFIG["pooled_projection_dim"], generator=g)
    cond = torch.randn(B, L, CONFIG["in_channels"], generator=g)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = img_ids[..., 1] + torch.arange(h)[:, None]
    img_ids[..., 2] = img_ids[..., 2] + torch.arange(w)[None, :]
    img_ids = img_ids.reshape(L, 3)
    txt_ids = torch.zeros(T, 3)
    timestep = torch.tensor(TIMESTEP, dtype=torch.float32)
    guidance = torch.tensor(GUIDANCE, dtype=torch.float32)
    inputs = dict(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep,
                  guidance=guidance, img_ids=img_ids, txt_ids=txt_ids)

    # ControlNet: from_transformer, zero layers re-drawn.
    cn = FluxControlNetModel.from_transformer(tr, num_layers=CN_LAYERS, num_single_layers=CN_SINGLE,
                                              attention_head_dim=CONFIG["attention_head_dim"],
                                              num_attention_heads=CONFIG["num_attention_heads"])
    reinit = ["controlnet_x_embedder"] + [f"controlnet_blocks.{i}" for i in range(CN_LAYERS)]
    rg = torch.Generator().manual_seed(REINIT_SEED)
    with torch.no_grad():
        for n in reinit:
            m = cn.get_submodule(n)
            m.weight.copy_(0.5 * torch.randn(m.weight.shape, generator=rg) / math.sqrt(m.weight.shape[1]))
            m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=rg))
    cn.eval()
    cn.set_attn_processor(FluxAttnProcessor2_0())
    cd = os.path.join(OUT, "controlnet")
    os.makedirs(cd)
    cn.save_pretrained(cd, safe_serialization=True)
    save(cn.state_dict(), os.path.join(cd, "model.safetensors"))
    tr_keys = set(tr.state_dict())
    cn_keys = sorted(cn.state_dict())
    copied = [k for k in cn_keys if k in tr_keys]
    new_keys = [k for k in cn_keys if k not in tr_keys]

    cio = dict(inputs)
    cio["controlnet_cond"] = cond
    cio["conditioning_scales"] = torch.tensor(SCALES, dtype=torch.float32)
    samples = []
    for si, sc in enumerate(SCALES):
        taps = Taps()
        if si == 0:
            common_taps(cn, "inter.", taps)
            taps.on(cn.controlnet_x_embedder, lambda x: taps.out.__setitem__("inter.controlnet_x_embedder", x.clone()))
            for i, blk in enumerate(cn.controlnet_blocks):
                taps.on(blk, lambda x, i=i: taps.out.__setitem__(f"inter.controlnet_blocks.{i}", x.clone()))
        with torch.no_grad():
            out = cn(hidden_states=hidden, controlnet_cond=cond, conditioning_scale=sc, encoder_hidden_states=text,
                     pooled_projections=pooled, timestep=timestep, img_ids=img_ids, txt_ids=txt_ids,
                     guidance=guidance, return_dict=False)
        taps.close()
        cio.update(taps.out)
        blocks = out[0]
        assert out[1] is None
        for i, b in enumerate(blocks):
            cio[f"scale_{si}.controlnet_block_samples.{i}"] = b
        samples.append(list(blocks))
    save(cio, os.path.join(cd, "io.safetensors"))

    def f64(model, call):
        m = model.double()
        with torch.no_grad():
            r = call(m, {k: v.double() if v.is_floating_point() else v for k, v in cio.items()})
        model.float()
        return r

    def cn_call(m, x):
        o = m(hidden_states=x["hidden_states"], controlnet_cond=x["controlnet_cond"], conditioning_scale=1.0,
              encoder_hidden_states=x["encoder_hidden_states"], pooled_projections=x["pooled_projections"],
              timestep=x["timestep"], img_ids=x["img_ids"], txt_ids=x["txt_ids"], guidance=x["guidance"], return_dict=False)
        return torch.cat([b.flatten() for b in o[0]])
    ref = torch.cat([b.flatten() for b in samples[0]])
    d64 = (f64(cn, cn_call).float() - ref).abs().max().item()
    # The flat file loads strictly into a fresh from_transformer and gives the same samples.
    cn2 = FluxControlNetModel.from_transformer(tr, num_layers=CN_LAYERS, num_single_layers=CN_SINGLE,
                                               attention_head_dim=CONFIG["attention_head_dim"],
                                               num_attention_heads=CONFIG["num_attention_heads"])
    cn2.load_state_dict(load_file(os.path.join(cd, "model.safetensors")), strict=True)
    cn2.eval()
    cn2.set_attn_processor(FluxAttnProcessor2_0())
    with torch.no_grad():
        assert torch.equal(cn_call(cn2, cio), ref)
    dump_json({"seed": SEED, "reinit_seed": REINIT_SEED, "params": sum(p.numel() for p in cn.parameters()),
               "num_layers": CN_LAYERS, "num_single_layers": CN_SINGLE, "keys_copied_from_transformer": len(copied),
               "keys_new": new_keys, "reinitialised": reinit, "f64_samples_max_abs": d64,
               "f64_samples_rel": d64 / ref.abs().max().item(), "absmax_samples": ref.abs().max().item()},
              os.path.join(cd, "report.json"))

    # Transformer: plain and with the scale-0 ControlNet samples.
    tio = dict(inputs)
    outs = {}
    for case, cs in [("plain", None), ("controlnet", samples[0])]:
        taps = Taps()
        p = case + "."
        common_taps(tr, p, taps)
        for i, blk in enumerate(tr.single_transformer_blocks):
            taps.on(blk, lambda x, i=i, p=p: taps.out.__setitem__(f"{p}single_transformer_blocks.{i}", x.clone()))
        taps.on(tr.norm_out, lambda x, p=p: taps.out.__setitem__(p + "norm_out", x.clone()))
        with torch.no_grad():
            o = tr(hidden_states=hidden, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep,
                   img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, controlnet_block_samples=cs,
                   controlnet_blocks_repeat=False, return_dict=False)[0]
        taps.close()
        tio.update(taps.out)
        tio[p + "output"] = o
        outs[case] = o
    interval = int(np.ceil(CONFIG["num_layers"] / CN_LAYERS))
    index = [i // interval for i in range(CONFIG["num_layers"])]
    tio["controlnet.injection_index"] = torch.tensor(index, dtype=torch.int64)
    for i, s in enumerate(samples[0]):
        tio[f"controlnet.controlnet_block_samples.{i}"] = s
    save(tio, os.path.join(td, "io.safetensors"))

    def tr_call(m, x, cs):
        return m(hidden_states=x["hidden_states"], encoder_hidden_states=x["encoder_hidden_states"],
                 pooled_projections=x["pooled_projections"], timestep=x["timestep"], img_ids=x["img_ids"],
                 txt_ids=x["txt_ids"], guidance=x["guidance"], controlnet_block_samples=cs,
                 controlnet_blocks_repeat=False, return_dict=False)[0]
    p64 = (f64(tr, lambda m, x: tr_call(m, x, None)).float() - outs["plain"]).abs().max().item()
    c64 = (f64(tr, lambda m, x: tr_call(m, x, [s.double() for s in samples[0]])).float() - outs["controlnet"]).abs().max().item()
    dump_json({"seed": SEED, "params": sum(p.numel() for p in tr.parameters()), "config": CONFIG, "interval": interval,
               "injection_index": index, "f64_plain_max_abs": p64,
               "f64_plain_rel": p64 / outs["plain"].abs().max().item(), "f64_controlnet_max_abs": c64,
               "f64_controlnet_rel": c64 / outs["controlnet"].abs().max().item(),
               "absmax_plain": outs["plain"].abs().max().item(), "absmax_controlnet": outs["controlnet"].abs().max().item(),
               "controlnet_effect_max_abs": (outs["plain"] - outs["controlnet"]).abs().max().item(),
               "attention_impl": "F.scaled_dot_product_attention (torch 1.13: math path)"},
              os.path.join(td, "report.json"))
    for d, what in [(td, f"FluxTransformer2DModel {CONFIG}, DETINIT seed {SEED}"),
                    (cd, f"FluxControlNetModel.from_transformer(num_layers={CN_LAYERS}, num_single_layers={CN_SINGLE}), "
                         f"zero layers re-drawn with seed {REINIT_SEED}")]:
        with open(os.path.join(d, "README.md"), "w") as f:
            f.write(f"# {os.path.basename(d)} — ALTERNATE set\n\nWritten by `scripts/altfixtures/gen_flux.py` "
                    f"(variant {ARGS.variant}); same layout and tensor names as the public folder (see its README). "
                    f"{what}. Inputs: batch {B}, packed grid {h}x{w}, {T} text tokens, timestep {TIMESTEP}, guidance "
                    f"{GUIDANCE}, input seed {INPUT_SEED}; ControlNet scales {SCALES}.\n")
    gen_vae()
    gen_scheduler()
    gen_clip_l()
    print("wrote", OUT)


if __name__ == "__main__":
    main()
