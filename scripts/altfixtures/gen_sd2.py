#!/usr/bin/env python3
"""Build an alternate sd2/ fixture set with the layout of the public one.

    PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/altfixtures/gen_sd2.py OUT_DIR [--variant a|b] [--public DIR]

Writes OUT_DIR/sd2/{unet,controlnet,vae,clip_text,pipeline,scheduler} from tiny models
whose configs, shapes, seeds and channel lists all differ from the public set
(--public, default ../shared/fixtures/sd2 beside the repository), with the file names, tensor
names and dtypes that the public folders' READMEs describe. The folders that
must stay the same (the real CLIP tokenizer, the full-size key layouts, the
colour fix) are copied; the scheduler keeps SD2-base's config with other step
counts, chains, shapes and seeds.
Computation: torch 1.13 CPU, float32, one thread, diffusers 0.32.2 modules
(`UNet2DConditionModel`, `ControlNetModel.from_unet`, `AutoencoderKL`, the
schedulers, and `StableDiffusionControlNetPipeline.__call__` transcribed because
its module imports transformers); the CLIP text model is the same minimal
re-implementation of transformers' eager CLIPTextModel that the public README
describes (transformers is not installed here).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)

import argparse  # noqa: E402

ap = argparse.ArgumentParser(description="alternate sd2/ fixture set")
ap.add_argument("out", help="output root (sd2/ is written under it)")
ap.add_argument("--public", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "fixtures", "sd2"), help="the public sd2/ folder (copied parts, cases.json)")
ap.add_argument("--variant", default="a", choices=["a", "b"],
                help="a: other channels/heads/groups/shapes/seeds; b: also other depths (1 resnet per UNet block, "
                     "2 transformer layers, 3-block VAE and ControlNet embedding: scale factor 4)")
ARGS = ap.parse_args()
OUT = os.path.abspath(ARGS.out)
PUB = os.path.abspath(ARGS.public)
SD2 = os.path.join(OUT, "sd2")

# ---------------------------------------------------------------- settings
# Everything below differs from the public set on purpose.
UNET_CONFIG = dict(
    sample_size=24,
    in_channels=4,
    out_channels=4,
    block_out_channels=(12, 24, 24, 36),
    layers_per_block=2,
    attention_head_dim=(3, 2, 4, 3),  # heads per down block (diffusers' SD2 naming)
    cross_attention_dim=48,  # = the CLIP text hidden size (the pipeline feeds one into the other)
    norm_num_groups=6,
    norm_eps=1e-5,
    use_linear_projection=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    transformer_layers_per_block=1,
    upcast_attention=False,
    only_cross_attention=False,
    downsample_padding=1,
    act_fn="silu",
)
SEEDS = dict(unet=700, unet_norm=701, unet_io=702, cn=703, cn_zero=704, cn_io=705,
             vae=710, vae_norm=711, vae_io=712, vae_posterior=713, clip=1700, control_img=720,
             pipeline=4321)
SEQ = 33  # text length of the UNet / ControlNet io (the pipeline uses the tokenizer's 77)
MAIN = dict(batch=3, h=24, w=16, timesteps=[999, 437, 0])
ODD = dict(batch=2, h=11, w=7, timestep=321)
CN_EMB = [6, 10, 20, 40]
CN_SCALES = [1.0, 0.3]  # case0 must be 1.0: unet/io_controlnet uses its residuals
VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(6, 12, 24, 24),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=3,
    sample_size=96,  # tiling keeps sizes only when sample_size is a multiple of 32 (diffusers rounding)
    scaling_factor=0.13025,
    force_upcast=True,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
)
VAE_IMAGE = (2, 40, 56)   # batch, H, W of the encode input
VAE_LATENT = (2, 7, 5)    # batch, h, w of the decode input
CLIP = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=61)
CLIP_CASES = ["ram_tags_food", "exclamation_issue_4153", "exact_76_tokens", "photo_prompt"]
PIPE = dict(prompts=["ram_tags_city", "ram_tags_animal", "mixed_case"], negative="negative_prompt",
            steps=3, guidance=5.0, cond_scale=0.8, height=48, width=40)
COLORFIX = dict(h=37, w=70, seed=750)
SCHED = dict(step_counts=[33, 13, 4], ddpm_chain=5, ddim_chain=6, single_from=33, single_index=[0, 16, 32],
             shape=(3, 4, 6, 10), noise_shape=(5, 4, 5, 7), noise_timesteps=[0, 999, 500, 77, 1],
             input_seed=3030, chain_seed=3031, single_seed=3032)


if ARGS.variant == "b":
    UNET_CONFIG.update(block_out_channels=(16, 16, 32, 32), layers_per_block=1, attention_head_dim=(2, 4, 2, 4),
                       transformer_layers_per_block=2, norm_num_groups=8, cross_attention_dim=40, sample_size=20)
    SEEDS = {k: v + 50 for k, v in SEEDS.items()}
    MAIN = dict(batch=1, h=12, w=20, timesteps=[640])
    ODD = dict(batch=3, h=5, w=9, timestep=17)
    CN_EMB = [4, 8, 12]  # 2 stride-2 convs: control at 4x the latent size, as the 3-block VAE
    CN_SCALES = [1.0, 1.7]
    VAE_CONFIG.update(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                      block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4, sample_size=64,
                      scaling_factor=0.5)
    VAE_IMAGE = (1, 36, 20)
    VAE_LATENT = (3, 4, 6)
    CLIP = dict(hidden_size=40, num_hidden_layers=4, num_attention_heads=5, intermediate_size=50)
    CLIP_CASES = ["single_word", "very_long_truncated"]
    PIPE = dict(prompts=["ram_tags_landscape"], negative="empty", steps=5, guidance=2.0, cond_scale=1.2,
                height=32, width=40)
    COLORFIX = dict(h=96, w=33, seed=850)
    SCHED = dict(step_counts=[1, 2, 64, 999], ddpm_chain=2, ddim_chain=3, single_from=64, single_index=[63, 1],
                 shape=(1, 4, 3, 3), noise_shape=(2, 4, 2, 3), noise_timesteps=[250, 998],
                 input_seed=3130, chain_seed=3131, single_seed=3132)

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipref import CLIPText  # noqa: E402

VERSIONS = f"torch {torch.__version__}, diffusers {diffusers.__version__}, CPU, float32, one thread"


def mkdir(*p):
    d = os.path.join(SD2, *p)
    os.makedirs(d, exist_ok=True)
    return d


def save(tensors, path):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)


def dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def readme(folder, text):
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(f"# {os.path.basename(folder)} — ALTERNATE set\n\nSet: **alternate**, written by "
                f"`scripts/altfixtures/gen_sd2.py` ({VERSIONS}). Same layout, file names, tensor names and "
                f"dtypes as the public folder of the same name (see its README for the meaning of each tensor); "
                f"other configs, shapes and seeds.\n\n{text}\n")


def redraw_norms(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def set_sdpa(model):
    model.set_attn_processor(AttnProcessor2_0())


class Taps:
    """Forward hooks that store module outputs under names."""

    def __init__(self):
        self.out, self.handles = {}, []

    def add(self, module, fn):
        self.handles.append(module.register_forward_hook(lambda m, i, o: fn(self.out, o)))

    def one(self, module, name):
        self.add(module, lambda d, o, n=name: d.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach().clone()))

    def close(self):
        for h in self.handles:
            h.remove()


def f64_diff(model, inputs, ref, call):
    m64 = model.to(torch.float64)
    with torch.no_grad():
        o = call(m64, *[x.double() if x.is_floating_point() else x for x in inputs])
    model.to(torch.float32)
    return float((o.float() - ref).abs().max())


# ---------------------------------------------------------------- UNet
def unet_taps(unet, with_down=True):
    t = Taps()
    for n in ["conv_in", "conv_norm_out", "conv_act", "conv_out", "time_proj", "time_embedding", "mid_block"]:
        if n in ("conv_in", "time_proj", "time_embedding") and not with_down:
            continue
        t.one(getattr(unet, n), n)
    if with_down:
        for i, b in enumerate(unet.down_blocks):
            def fn(d, o, i=i):
                d[f"down_blocks.{i}.hidden"] = o[0].detach().clone()
                for j, r in enumerate(o[1]):
                    d[f"down_blocks.{i}.res.{j}"] = r.detach().clone()
            t.add(b, fn)
    for i, b in enumerate(unet.up_blocks):
        t.one(b, f"up_blocks.{i}")
    return t


def gen_unet():
    torch.manual_seed(SEEDS["unet"])
    unet = UNet2DConditionModel(**UNET_CONFIG)
    redraw_norms(unet, SEEDS["unet_norm"])
    unet.eval()
    set_sdpa(unet)
    d = mkdir("unet")
    unet.save_pretrained(d, safe_serialization=True)

    g = torch.Generator().manual_seed(SEEDS["unet_io"])
    C = UNET_CONFIG["in_channels"]
    X = UNET_CONFIG["cross_attention_dim"]
    B, H, W = MAIN["batch"], MAIN["h"], MAIN["w"]
    main_in = dict(sample=torch.randn(B, C, H, W, generator=g), timesteps=torch.tensor(MAIN["timesteps"], dtype=torch.int64),
                   encoder_hidden_states=torch.randn(B, SEQ, X, generator=g))
    b, h, w = ODD["batch"], ODD["h"], ODD["w"]
    odd_in = dict(sample=torch.randn(b, C, h, w, generator=g), timesteps=torch.tensor(ODD["timestep"], dtype=torch.int64),
                  encoder_hidden_states=torch.randn(b, SEQ, X, generator=g))
    report = {"unet_params": sum(p.numel() for p in unet.parameters()), "unet_attn_processor": "AttnProcessor2_0"}
    call = lambda m, s, t, e: m(s, t, e).sample  # noqa: E731
    for name, inp in [("main", main_in), ("odd", odd_in)]:
        taps = unet_taps(unet)
        with torch.no_grad():
            out = unet(inp["sample"], inp["timesteps"], inp["encoder_hidden_states"]).sample
        taps.close()
        tensors = dict(inp)
        tensors.update(taps.out)
        tensors["out_sample"] = out
        save(tensors, os.path.join(d, f"io_{name}.safetensors"))
        report[f"unet_{name}_f64_max_abs"] = f64_diff(unet, [inp["sample"], inp["timesteps"], inp["encoder_hidden_states"]], out, call)
    report["unet_main_out_absmax"] = float(load_file(os.path.join(d, "io_main.safetensors"))["out_sample"].abs().max())
    return unet, main_in, report


def gen_controlnet(unet, main_in, report_unet):
    torch.manual_seed(SEEDS["cn"])
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CN_EMB)
    g = torch.Generator().manual_seed(SEEDS["cn_zero"])
    reinit = ["controlnet_cond_embedding.conv_out"] + [f"controlnet_down_blocks.{i}" for i in range(len(cn.controlnet_down_blocks))] + ["controlnet_mid_block"]
    with torch.no_grad():
        for n in reinit:
            m = cn.get_submodule(n)
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (0.5 / fan_in ** 0.5))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    cn.eval()
    set_sdpa(cn)
    d = mkdir("controlnet")
    cn.save_pretrained(os.path.join(d, "diffusers"), safe_serialization=True)
    save(cn.state_dict(), os.path.join(d, "model.safetensors"))

    factor = 2 ** (len(CN_EMB) - 1)
    B, _, H, W = main_in["sample"].shape
    g = torch.Generator().manual_seed(SEEDS["cn_io"])
    cond_u8 = torch.randint(0, 256, (B, 3, H * factor, W * factor), generator=g, dtype=torch.int64).to(torch.uint8)
    cond = cond_u8.float() / 255
    tensors = {"controlnet_cond_u8": cond_u8, "sample": main_in["sample"], "timesteps": main_in["timesteps"],
               "encoder_hidden_states": main_in["encoder_hidden_states"]}
    report = {"controlnet_params": sum(p.numel() for p in cn.parameters()), "controlnet_reinitialised": reinit}
    cases = []
    for ci, scale in enumerate(CN_SCALES):
        taps = Taps()
        if ci == 0:
            for n in ["controlnet_cond_embedding", "conv_in", "time_embedding", "mid_block"]:
                taps.one(cn.get_submodule(n), "inter." + n)
            for i, b in enumerate(cn.down_blocks):
                taps.one(b, f"inter.down_blocks.{i}.hidden")
        with torch.no_grad():
            down, mid = cn(main_in["sample"], main_in["timesteps"], main_in["encoder_hidden_states"], cond,
                           conditioning_scale=scale, return_dict=False)
        taps.close()
        tensors.update(taps.out)
        tensors[f"case{ci}.conditioning_scale"] = torch.tensor(scale, dtype=torch.float32)
        for i, r in enumerate(down):
            tensors[f"case{ci}.down_block_res_samples.{i}"] = r
        tensors[f"case{ci}.mid_block_res_sample"] = mid
        cases.append((down, mid))

        def call(m, s, e, c, t=main_in["timesteps"], scale=scale):
            dd, mm = m(s, t, e, c, conditioning_scale=scale, return_dict=False)
            return torch.cat([x.flatten() for x in list(dd) + [mm]])
        ref = torch.cat([x.flatten() for x in list(down) + [mid]])
        report[f"controlnet_case{ci}_f64_max_abs"] = f64_diff(cn, [main_in["sample"], main_in["encoder_hidden_states"], cond], ref, call)
        report[f"controlnet_case{ci}_absmax"] = float(ref.abs().max())
    save(tensors, os.path.join(d, "io.safetensors"))
    # Cross-check: the flat file loads strictly into from_unet and gives the same residuals.
    torch.manual_seed(0)
    cn2 = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CN_EMB)
    cn2.load_state_dict(load_file(os.path.join(d, "model.safetensors")), strict=True)
    cn2.eval()
    set_sdpa(cn2)
    with torch.no_grad():
        d2, m2 = cn2(main_in["sample"], main_in["timesteps"], main_in["encoder_hidden_states"], cond, return_dict=False)
    assert all(torch.equal(a, b) for a, b in zip(list(d2) + [m2], list(cases[0][0]) + [cases[0][1]]))
    dump_json(report, os.path.join(d, "report.json"))

    # unet/io_controlnet: io_main inputs plus the case0 (scale 1.0) residuals.
    down, mid = cases[0]
    taps = unet_taps(unet, with_down=False)
    with torch.no_grad():
        out = unet(main_in["sample"], main_in["timesteps"], main_in["encoder_hidden_states"],
                   down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    taps.close()
    t2 = {"sample": main_in["sample"], "timesteps": main_in["timesteps"], "encoder_hidden_states": main_in["encoder_hidden_states"],
          "mid_block_additional_residual": mid, "out_sample": out}
    for i, r in enumerate(down):
        t2[f"down_block_additional_residuals.{i}"] = r
    t2.update(taps.out)
    ud = os.path.join(SD2, "unet")
    save(t2, os.path.join(ud, "io_controlnet.safetensors"))

    def ucall(m, s, e, *res):
        return m(s, main_in["timesteps"], e, down_block_additional_residuals=list(res[:-1]), mid_block_additional_residual=res[-1]).sample
    report_unet["unet_controlnet_f64_max_abs"] = f64_diff(unet, [main_in["sample"], main_in["encoder_hidden_states"]] + list(down) + [mid], out, ucall)
    main_out = load_file(os.path.join(ud, "io_main.safetensors"))["out_sample"]
    report_unet["unet_controlnet_minus_main_max_abs"] = float((out - main_out).abs().max())
    dump_json(report_unet, os.path.join(ud, "report.json"))
    cfg = UNET_CONFIG
    readme(ud, f"UNet2DConditionModel config: block_out_channels {list(cfg['block_out_channels'])}, attention_head_dim "
               f"{list(cfg['attention_head_dim'])}, cross_attention_dim {cfg['cross_attention_dim']}, norm_num_groups "
               f"{cfg['norm_num_groups']}, sample_size {cfg['sample_size']}; seeds model {SEEDS['unet']}, norms "
               f"{SEEDS['unet_norm']}, inputs {SEEDS['unet_io']}. io_main: batch {MAIN['batch']}, latent "
               f"{MAIN['h']}x{MAIN['w']}, timesteps {MAIN['timesteps']}, text length {SEQ}; io_odd: batch {ODD['batch']}, "
               f"latent {ODD['h']}x{ODD['w']}, 0-dim timestep {ODD['timestep']}; io_controlnet: the io_main inputs plus "
               f"the case0 residuals of ../controlnet/io.safetensors.\n\nTolerance as in the public README: "
               f"`1e-5 + 1e-5·|ref|` (out_sample), `2e-5 + 1e-5·|ref|` (intermediates).")
    readme(d, f"ControlNetModel.from_unet(../unet, conditioning_embedding_out_channels={CN_EMB}), torch.manual_seed({SEEDS['cn']}); "
              f"zero layers re-drawn with manual_seed({SEEDS['cn_zero']}). io: the inputs of ../unet/io_main, control "
              f"{tuple(cond_u8.shape)} uint8 NCHW from manual_seed({SEEDS['cn_io']}), cases with conditioning_scale "
              f"{CN_SCALES}.\n\nTolerance `1e-5 + 1e-5·|ref|`.")
    return cn


# ---------------------------------------------------------------- VAE
def gen_vae():
    torch.manual_seed(SEEDS["vae"])
    vae = AutoencoderKL(**VAE_CONFIG)
    redraw_norms(vae, SEEDS["vae_norm"])
    vae.eval()
    set_sdpa(vae)
    d = mkdir("vae")
    vae.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(SEEDS["vae_io"])
    B, H, W = VAE_IMAGE
    image = torch.rand(B, 3, H, W, generator=g) * 2 - 1
    b, h, w = VAE_LATENT
    z = torch.randn(b, VAE_CONFIG["latent_channels"], h, w, generator=g)
    taps = Taps()
    for n in ["encoder.conv_in", "encoder.mid_block", "encoder.conv_norm_out", "encoder.conv_out", "quant_conv",
              "post_quant_conv", "decoder.conv_in", "decoder.mid_block"]:
        taps.one(vae.get_submodule(n), "inter." + n)
    for i, blk in enumerate(vae.encoder.down_blocks):
        taps.one(blk, f"inter.encoder.down_blocks.{i}")
    for i, blk in enumerate(vae.decoder.up_blocks):
        taps.one(blk, f"inter.decoder.up_blocks.{i}")
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(SEEDS["vae_posterior"]))
        sample = dist.sample(torch.Generator().manual_seed(SEEDS["vae_posterior"]))
        dec = vae.decode(z).sample
    taps.close()
    assert torch.equal(sample, dist.mean + dist.std * noise)
    t = dict(taps.out)
    t.update({"image": image, "decode_input": z, "decode_output": dec, "latent_mean": dist.mean, "latent_logvar": dist.logvar,
              "latent_std": dist.std, "latent_mean_scaled": dist.mean * VAE_CONFIG["scaling_factor"],
              "posterior_generator_seed": torch.tensor(SEEDS["vae_posterior"], dtype=torch.int64),
              "posterior_noise": noise, "posterior_sample": sample})
    save(t, os.path.join(d, "io.safetensors"))
    vae64 = vae.to(torch.float64)
    with torch.no_grad():
        d64 = vae64.encode(image.double()).latent_dist
        dec64 = vae64.decode(z.double()).sample
    vae.to(torch.float32)
    dump_json({"params": sum(p.numel() for p in vae.parameters()), "attn_processor": "AttnProcessor2_0",
               "f64_mean": float((d64.mean.float() - dist.mean).abs().max()),
               "f64_logvar": float((d64.logvar.float() - dist.logvar).abs().max()),
               "f64_decode": float((dec64.float() - dec).abs().max()),
               "absmax_mean": float(dist.mean.abs().max()), "absmax_logvar": float(dist.logvar.abs().max()),
               "absmax_decode": float(dec.abs().max())}, os.path.join(d, "report.json"))
    readme(d, f"AutoencoderKL config: block_out_channels {list(VAE_CONFIG['block_out_channels'])}, layers_per_block "
              f"{VAE_CONFIG['layers_per_block']}, norm_num_groups {VAE_CONFIG['norm_num_groups']}, sample_size "
              f"{VAE_CONFIG['sample_size']}, scaling_factor {VAE_CONFIG['scaling_factor']}; seeds model {SEEDS['vae']}, "
              f"norms {SEEDS['vae_norm']}, inputs {SEEDS['vae_io']}, posterior {SEEDS['vae_posterior']}. image "
              f"{tuple(image.shape)}, decode_input {tuple(z.shape)}.\n\nTolerance `1e-5 + 1e-5·|ref|`.")
    return vae


# ---------------------------------------------------------------- CLIP text (transformers' eager CLIPTextModel)
def clip_config(act):
    return {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
            "eos_token_id": 2, "hidden_act": act, "hidden_size": CLIP["hidden_size"], "initializer_factor": 1.0,
            "initializer_range": 0.02, "intermediate_size": CLIP["intermediate_size"], "layer_norm_eps": 1e-05,
            "max_position_embeddings": 77, "model_type": "clip_text_model",
            "num_attention_heads": CLIP["num_attention_heads"], "num_hidden_layers": CLIP["num_hidden_layers"],
            "pad_token_id": 1, "projection_dim": 512, "torch_dtype": "float32", "transformers_version": "4.47.0",
            "vocab_size": 49408}


def build_clip(act):
    m = CLIPText(clip_config(act))
    g = torch.Generator().manual_seed(SEEDS["clip"])
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "token_embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "position_embedding" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return m.eval()


def cases():
    with open(os.path.join(PUB, "clip_tokenizer", "cases.json")) as f:
        return {c["name"]: c for c in json.load(f)["cases"]}


def gen_clip():
    d = mkdir("clip_text")
    cs = cases()
    models = {}
    cross = {}
    for act, key in [("gelu", "ids_sd2"), ("quick_gelu", "ids_clip_l")]:
        m = build_clip(act)
        models[act] = m
        sub = os.path.join(d, act)
        os.makedirs(sub, exist_ok=True)
        dump_json(clip_config(act), os.path.join(sub, "config.json"))
        ids = torch.tensor([cs[n][key] for n in CLIP_CASES], dtype=torch.int64)
        with torch.no_grad():
            last, pooled, hs = m(ids)
            l64, p64, _ = m.double()(ids)
        m.float()
        t = {"input_ids": ids, "last_hidden_state": last, "pooler_output": pooled}
        if act == "gelu":
            for i, h in enumerate(hs):
                t[f"hidden_states.{i}"] = h
        save(t, os.path.join(sub, "io.safetensors"))
        cross[act] = {"f64_last": float((l64.float() - last).abs().max()), "f64_pooled": float((p64.float() - pooled).abs().max()),
                      "eos_positions": ids.argmax(-1).tolist(), "absmax": float(last.abs().max())}
    sd = models["gelu"].state_dict()
    assert all(torch.equal(sd[k], v) for k, v in models["quick_gelu"].state_dict().items())
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    dump_json(cross, os.path.join(d, "crosscheck.json"))
    readme(d, f"CLIPTextModel re-implementation (eager), hidden_size {CLIP['hidden_size']}, num_hidden_layers "
              f"{CLIP['num_hidden_layers']}, num_attention_heads {CLIP['num_attention_heads']}, intermediate_size "
              f"{CLIP['intermediate_size']}, vocab 49408, max_position 77; weights from manual_seed({SEEDS['clip']}). "
              f"Prompts (rows, case names of ../clip_tokenizer/cases.json): {', '.join(CLIP_CASES)}. No open_clip "
              f"cross-check in this set.\n\nTolerance `1e-5 + 1e-5·|ref|`.")
    return models["gelu"]


# ---------------------------------------------------------------- pipeline
def gen_pipeline(te, unet, cn, vae):
    from PIL import Image

    d = mkdir("pipeline")
    cs = cases()
    B, H, W = len(PIPE["prompts"]), PIPE["height"], PIPE["width"]
    prompts = [cs[n]["text"] for n in PIPE["prompts"]]
    neg = [cs[PIPE["negative"]]["text"]] * B
    pids = torch.tensor([cs[n]["ids_sd2"] for n in PIPE["prompts"]], dtype=torch.int64)
    nids = torch.tensor([cs[PIPE["negative"]]["ids_sd2"]] * B, dtype=torch.int64)
    with torch.no_grad():
        pe = te(pids)[0]
        ne = te(nids)[0]
    # Smooth random control images (bilinear upsampling of a coarse random grid plus a little noise), 8-bit.
    g = torch.Generator().manual_seed(SEEDS["control_img"])
    coarse = torch.rand(B, 3, H // 8, W // 8, generator=g)
    ctrl = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    ctrl = ctrl + 0.1 * torch.rand(B, 3, H, W, generator=g)
    ctrl_u8 = (ctrl.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    images = [Image.fromarray(ctrl_u8[b].numpy(), "RGB") for b in range(B)]

    # StableDiffusionControlNetPipeline.__call__ of diffusers 0.32.2 (its module needs transformers, which is
    # not installed here), transcribed for this configuration: one ControlNet, guess_mode False, CFG on,
    # prompt_embeds / negative_prompt_embeds given, output_type "np", no safety checker.
    sched = DDPMScheduler.from_pretrained(os.path.join(SD2, "scheduler"))
    vsf = 2 ** (len(vae.config.block_out_channels) - 1)
    image_processor = VaeImageProcessor(vae_scale_factor=vsf)
    control_image_processor = VaeImageProcessor(vae_scale_factor=vsf, do_convert_rgb=True, do_normalize=False)
    generator = torch.Generator("cpu").manual_seed(SEEDS["pipeline"])
    rec, order = {}, []
    with torch.no_grad():
        prompt_embeds = torch.cat([ne, pe])
        image = control_image_processor.preprocess(images, height=H, width=W).to(dtype=torch.float32)
        image = image.repeat_interleave(1, dim=0)
        image = torch.cat([image] * 2)
        sched.set_timesteps(PIPE["steps"], device="cpu")
        timesteps = sched.timesteps
        shape = (B, unet.config.in_channels, H // vsf, W // vsf)
        latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        order.append("prepare_latents")
        rec["initial_latents"] = latents.clone()
        latents = latents * sched.init_noise_sigma
        controlnet_keep = [1.0 - float(0.0 > i / len(timesteps) or (i + 1) / len(timesteps) > 1.0) for i in range(len(timesteps))]
        orig = sched.step.__func__.__globals__["randn_tensor"]

        def tap(*a, **k):
            x = orig(*a, **k)
            order.append("scheduler.step")
            rec[f"step.{len(order) - 2}.variance_noise"] = x.clone()
            return x
        sched.step.__func__.__globals__["randn_tensor"] = tap
        for i, t in enumerate(timesteps):
            latent_model_input = torch.cat([latents] * 2)
            latent_model_input = sched.scale_model_input(latent_model_input, t)
            cond_scale = PIPE["cond_scale"] * controlnet_keep[i]
            down, mid = cn(latent_model_input, t, encoder_hidden_states=prompt_embeds, controlnet_cond=image,
                           conditioning_scale=cond_scale, guess_mode=False, return_dict=False)
            rec[f"step.{i}.controlnet_mid_block_res_sample"] = mid
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds, timestep_cond=None,
                              cross_attention_kwargs=None, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, added_cond_kwargs=None, return_dict=False)[0]
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + PIPE["guidance"] * (noise_pred_text - noise_pred_uncond)
            rec[f"step.{i}.noise_pred_uncond"] = noise_pred_uncond
            rec[f"step.{i}.noise_pred_text"] = noise_pred_text
            rec[f"step.{i}.noise_pred_guided"] = noise_pred
            latents = sched.step(noise_pred, t, latents, generator=generator, return_dict=False)[0]
            rec[f"step.{i}.latents"] = latents
        sched.step.__func__.__globals__["randn_tensor"] = orig
        z = latents / vae.config.scaling_factor
        rec["decode_input"] = z
        img = vae.decode(z, return_dict=False, generator=generator)[0]
        np_images = image_processor.postprocess(img, output_type="np", do_denormalize=[True] * img.shape[0])
    image_np = torch.from_numpy(np.ascontiguousarray(np_images)).float()
    image_u8 = torch.from_numpy((np_images * 255).round().astype("uint8"))
    timesteps = timesteps.clone().to(torch.int64)
    rec.update({"control_images_u8": ctrl_u8, "image_np": image_np, "image_u8": image_u8, "timesteps": timesteps,
                "prompt_input_ids": pids, "negative_prompt_input_ids": nids, "prompt_embeds": pe, "negative_prompt_embeds": ne})
    save(rec, os.path.join(d, "io.safetensors"))
    # Replay: the recorded draws are successive randn calls of one fresh generator.
    rg = torch.Generator().manual_seed(SEEDS["pipeline"])
    names = ["initial_latents"] + [f"step.{i}.variance_noise" for i in range(PIPE["steps"])]
    verified = all(torch.equal(torch.randn(rec[n].shape, generator=rg), rec[n]) for n in names)
    assert verified
    h, w = H // vsf, W // vsf
    dump_json({"prompt": prompts, "negative_prompt": neg, "num_inference_steps": PIPE["steps"],
               "guidance_scale": PIPE["guidance"], "controlnet_conditioning_scale": PIPE["cond_scale"],
               "seed": SEEDS["pipeline"], "generator": "cpu", "batch_size": B, "height": H, "width": W,
               "latent_height": h, "latent_width": w, "output_type": "np",
               "vae_scaling_factor": VAE_CONFIG["scaling_factor"],
               "components": {"tokenizer": "../clip_tokenizer", "text_encoder_weights": "../clip_text/model.safetensors",
                              "text_encoder_config": "../clip_text/gelu/config.json", "unet": "../unet",
                              "controlnet_config": "../controlnet/diffusers/config.json",
                              "controlnet_weights": "../controlnet/model.safetensors", "vae": "../vae",
                              "scheduler": "../scheduler"},
               "timesteps": timesteps.tolist(), "rng_draws_in_order": names}, os.path.join(d, "params.json"))
    dump_json({"timesteps": timesteps.tolist(), "draw_order": order, "rng_order_verified": verified,
               "image_np_range": [float(image_np.min()), float(image_np.max())]}, os.path.join(d, "report.json"))
    readme(d, f"StableDiffusionControlNetPipeline.__call__ of diffusers {diffusers.__version__} (transcribed: its module imports transformers, not installed here) on the sibling tiny components of this "
              f"set; prompts = cases {PIPE['prompts']} of ../clip_tokenizer/cases.json, negative = case "
              f"{PIPE['negative']}; the prompt embeddings were computed from the cases' `ids_sd2` with ../clip_text "
              f"(gelu) and passed as prompt_embeds (no transformers tokenizer here: same tokenizer files, same ids). "
              f"{PIPE['steps']} steps, guidance {PIPE['guidance']}, conditioning scale {PIPE['cond_scale']}, seed "
              f"{SEEDS['pipeline']}, image {H}x{W}, batch {B}. Tolerances as in the public README.")


# ---------------------------------------------------------------- scheduler
def gen_scheduler():
    import diffusers.schedulers.scheduling_ddpm as sd

    d = mkdir("scheduler")
    shutil.copy(os.path.join(PUB, "scheduler", "scheduler_config.json"), d)
    ddpm = DDPMScheduler.from_pretrained(d)
    ddim = DDIMScheduler.from_pretrained(d)
    eff = lambda s: {k: v for k, v in s.config.items() if not k.startswith("_")}  # noqa: E731
    g = torch.Generator().manual_seed(SCHED["input_seed"])
    t = {"betas": ddpm.betas, "alphas_cumprod": ddpm.alphas_cumprod,
         "ddim_final_alpha_cumprod": ddim.final_alpha_cumprod.to(torch.float32).reshape(()),
         "num_inference_steps": torch.tensor(SCHED["step_counts"], dtype=torch.int64)}
    meta = {"ddpm_effective_config": eff(ddpm), "ddim_effective_config": eff(ddim), "timesteps": {}, "ddpm_steps": [],
            "ddim_steps": []}
    for k, n in enumerate(SCHED["step_counts"]):
        ddpm.set_timesteps(n)
        t[f"timesteps.{k}"] = ddpm.timesteps.to(torch.int64).clone()
        meta["timesteps"][str(n)] = ddpm.timesteps.tolist()

    drawn = []
    orig = sd.randn_tensor

    def tap(*a, **kw):
        x = orig(*a, **kw)
        drawn.append(x.clone())
        return x
    sd.randn_tensor = tap

    def ddpm_meta(chain, index, ts):
        prev = int(ddpm.previous_timestep(ts))
        a = ddpm.alphas_cumprod[ts]
        ap = ddpm.alphas_cumprod[prev] if prev >= 0 else ddpm.one
        return {"chain": chain, "index": index, "timestep": ts, "prev_t": prev, "alpha_prod_t": float(a),
                "alpha_prod_t_prev": float(ap), "variance": float(ddpm._get_variance(ts))}

    # DDPM chain
    shape = SCHED["shape"]
    n = SCHED["ddpm_chain"]
    ddpm.set_timesteps(n)
    x = torch.randn(shape, generator=g)
    t["ddpm_chain.initial_sample"] = x
    t["ddpm_chain.num_inference_steps"] = torch.tensor(n, dtype=torch.int64)
    t["ddpm_chain.timesteps"] = ddpm.timesteps.to(torch.int64).clone()
    t["ddpm_chain.generator_seed"] = torch.tensor(SCHED["chain_seed"], dtype=torch.int64)
    gen = torch.Generator().manual_seed(SCHED["chain_seed"])
    for i, ts in enumerate(ddpm.timesteps):
        eps = torch.randn(shape, generator=g)
        out = ddpm.step(eps, ts, x, generator=gen)
        p = f"ddpm_chain.{i}."
        t.update({p + "sample": x, p + "model_output": eps, p + "prev_sample": out.prev_sample,
                  p + "pred_original_sample": out.pred_original_sample, p + "variance_noise": drawn.pop()})
        meta["ddpm_steps"].append(ddpm_meta("ddpm_chain", i, int(ts)))
        x = out.prev_sample
    # DDPM single steps
    n = SCHED["single_from"]
    ddpm.set_timesteps(n)
    t["ddpm_single.num_inference_steps"] = torch.tensor(n, dtype=torch.int64)
    t["ddpm_single.generator_seed"] = torch.tensor(SCHED["single_seed"], dtype=torch.int64)
    gen = torch.Generator().manual_seed(SCHED["single_seed"])
    for j, idx in enumerate(SCHED["single_index"]):
        ts = ddpm.timesteps[idx]
        x = torch.randn(shape, generator=g)
        eps = torch.randn(shape, generator=g)
        out = ddpm.step(eps, ts, x, generator=gen)
        p = f"ddpm_single.{j}."
        t.update({p + "index": torch.tensor(idx, dtype=torch.int64), p + "timestep": ts.to(torch.int64).clone().reshape(()),
                  p + "sample": x, p + "model_output": eps, p + "prev_sample": out.prev_sample,
                  p + "pred_original_sample": out.pred_original_sample, p + "variance_noise": drawn.pop()})
        meta["ddpm_steps"].append(ddpm_meta(f"ddpm_single.{j} ({n} steps)", idx, int(ts)))
    sd.randn_tensor = orig
    assert not drawn
    # DDIM chain (eta 0)
    n = SCHED["ddim_chain"]
    ddim.set_timesteps(n)
    x = torch.randn(shape, generator=g)
    t["ddim_chain.initial_sample"] = x
    t["ddim_chain.num_inference_steps"] = torch.tensor(n, dtype=torch.int64)
    t["ddim_chain.timesteps"] = ddim.timesteps.to(torch.int64).clone()
    for i, ts in enumerate(ddim.timesteps):
        eps = torch.randn(shape, generator=g)
        out = ddim.step(eps, ts, x, eta=0.0)
        p = f"ddim_chain.{i}."
        t.update({p + "sample": x, p + "model_output": eps, p + "prev_sample": out.prev_sample,
                  p + "pred_original_sample": out.pred_original_sample})
        prev = int(ts) - ddim.config.num_train_timesteps // n
        ap = ddim.alphas_cumprod[prev] if prev >= 0 else ddim.final_alpha_cumprod
        meta["ddim_steps"].append({"index": i, "timestep": int(ts), "prev_timestep": prev, "alpha_prod_t_prev": float(ap)})
        x = out.prev_sample
    # add_noise / get_velocity
    x0 = torch.randn(SCHED["noise_shape"], generator=g)
    eps = torch.randn(SCHED["noise_shape"], generator=g)
    tt = torch.tensor(SCHED["noise_timesteps"], dtype=torch.int64)
    t.update({"add_noise.original_samples": x0, "add_noise.noise": eps, "add_noise.timesteps": tt,
              "add_noise.noisy_samples": ddpm.add_noise(x0, eps, tt), "get_velocity.velocity": ddpm.get_velocity(x0, eps, tt)})
    save(t, os.path.join(d, "io.safetensors"))
    dump_json(meta, os.path.join(d, "meta.json"))
    readme(d, f"DDPMScheduler / DDIMScheduler (diffusers {diffusers.__version__}) from SD2-base's scheduler_config.json "
              f"(copied): step counts {SCHED['step_counts']}, DDPM chain of {SCHED['ddpm_chain']} steps (generator "
              f"{SCHED['chain_seed']}), single steps at indices {SCHED['single_index']} of {SCHED['single_from']} "
              f"(generator {SCHED['single_seed']}), DDIM chain of {SCHED['ddim_chain']} steps, shape {SCHED['shape']}, "
              f"add_noise/get_velocity {SCHED['noise_shape']} at {SCHED['noise_timesteps']}; inputs from generator "
              f"{SCHED['input_seed']}. Tolerances as in the public README.")


# ---------------------------------------------------------------- colour fix
def gen_colorfix():
    """The adain / wavelet colour fix of DP²O-SR (utils_self/wavelet_color_fix.py, from StableSR), written out as
    the public README describes it, on another synthetic pair."""
    d = mkdir("colorfix")
    H, W = COLORFIX["h"], COLORFIX["w"]
    g = torch.Generator().manual_seed(COLORFIX["seed"])
    coarse = torch.rand(1, 3, max(H // 8, 2), max(W // 8, 2), generator=g)
    src = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    tgt = 0.7 * src + torch.tensor([0.12, -0.05, 0.08]).view(1, 3, 1, 1) + 0.05 * torch.randn(1, 3, H, W, generator=g)
    sat = torch.rand(1, 1, H, W, generator=g)
    tgt = torch.where(sat < 0.01, torch.zeros_like(tgt), torch.where(sat > 0.99, torch.ones_like(tgt), tgt))
    src_u8 = (src.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).contiguous()
    tgt_u8 = (tgt.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).contiguous()

    def to_tensor(u8):  # torchvision ToTensor
        return u8.permute(2, 0, 1).contiguous().to(torch.float32).div(255).unsqueeze(0)

    def to_image(x):  # torchvision ToPILImage on a float tensor: mul(255).byte(), HWC
        return x.squeeze(0).clamp(0.0, 1.0).mul(255).byte().permute(1, 2, 0).contiguous()

    def mean_std(f, eps=1e-5):
        b, c = f.shape[:2]
        var = f.view(b, c, -1).var(dim=2) + eps
        return f.view(b, c, -1).mean(dim=2).view(b, c, 1, 1), var.sqrt().view(b, c, 1, 1)

    def blur(x, r):
        k = torch.tensor([[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]], dtype=x.dtype)
        k = k[None, None].repeat(3, 1, 1, 1)
        return F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), k, groups=3, dilation=r)

    def decompose(x, levels=5):
        high = torch.zeros_like(x)
        for i in range(levels):
            low = blur(x, 2 ** i)
            high += x - low
            x = low
        return high, low

    def fix(s, t):
        sm, ss = mean_std(s)
        tm, ts = mean_std(t)
        adain = (t - tm.expand(t.shape)) / ts.expand(t.shape) * ss.expand(t.shape) + sm.expand(t.shape)
        th, _ = decompose(t)
        _, sl = decompose(s)
        return adain, th + sl

    # This transcription reproduces the public fixture (made with the official file) bit for bit.
    pub = load_file(os.path.join(PUB, "colorfix", "io.safetensors"))
    pa, pw = fix(to_tensor(pub["source_u8"]), to_tensor(pub["target_u8"]))
    assert torch.equal(pa, pub["adain.result_float"]) and torch.equal(pw, pub["wavelet.result_float"])
    assert torch.equal(to_image(pa), pub["adain.result_u8"]) and torch.equal(to_image(pw), pub["wavelet.result_u8"])

    s, t = to_tensor(src_u8), to_tensor(tgt_u8)
    sm, ss = mean_std(s)
    tm, ts = mean_std(t)
    adain = (t - tm.expand(t.shape)) / ts.expand(t.shape) * ss.expand(t.shape) + sm.expand(t.shape)
    th, _ = decompose(t)
    _, sl = decompose(s)
    wave = th + sl
    out = {"source_u8": src_u8, "target_u8": tgt_u8, "adain.source_mean": sm, "adain.source_std": ss,
           "adain.target_mean": tm, "adain.target_std": ts, "adain.result_float": adain, "adain.result_u8": to_image(adain),
           "wavelet.target_high": th, "wavelet.source_low": sl, "wavelet.result_float": wave,
           "wavelet.result_u8": to_image(wave)}
    save(out, os.path.join(d, "io.safetensors"))

    def rounding_differs(x):
        x = x.squeeze(0).clamp(0, 1).mul(255)
        return int((x.round() != x.floor()).sum())
    dump_json({"official_rev": None, "official_bit_identical": None, "H": H, "W": W,
               "adain_pixels_where_round_differs": rounding_differs(adain),
               "wavelet_pixels_where_round_differs": rounding_differs(wave),
               "adain_clamped_fraction": float(((adain < 0) | (adain > 1)).float().mean()),
               "wavelet_clamped_fraction": float(((wave < 0) | (wave > 1)).float().mean())},
              os.path.join(d, "report.json"))
    readme(d, f"adain / wavelet colour fix as the public README describes it (the generator checks that it reproduces "
              f"the public fixture, made with the official file, bit for bit), synthetic pair {H}x{W} from generator "
              f"{COLORFIX['seed']}.")


def copy_public(name):
    dst = os.path.join(SD2, name)
    if os.path.lexists(dst):
        shutil.rmtree(dst) if os.path.isdir(dst) and not os.path.islink(dst) else os.remove(dst)
    src = os.path.join(PUB, name)
    if os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)


def main():
    os.makedirs(SD2, exist_ok=True)
    for name in ["clip_tokenizer", "keys", "README.md", "determinism.json"]:
        copy_public(name)
    for name in ["unet", "controlnet", "vae", "clip_text", "pipeline", "scheduler", "colorfix"]:
        p = os.path.join(SD2, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
    gen_scheduler()
    gen_colorfix()
    unet, main_in, rep = gen_unet()
    cn = gen_controlnet(unet, main_in, rep)
    vae = gen_vae()
    te = gen_clip()
    gen_pipeline(te, unet, cn, vae)
    with open(os.path.join(SD2, "README.md"), "a") as f:
        f.write("\n\n**This copy is an ALTERNATE set** built by scripts/altfixtures/gen_sd2.py: unet, controlnet, vae, "
                "clip_text and pipeline were regenerated with other configs, shapes and seeds; the other folders are "
                "copies of the public set.\n")
    print("wrote", SD2)


if __name__ == "__main__":
    main()
