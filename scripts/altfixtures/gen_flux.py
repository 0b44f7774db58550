#!/usr/bin/env python3
"""Build an alternate flux/ fixture set (transformer, contronet, vae) with the public layout.

    PYTHONPATH=/work/refenv-py HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/altfixtures/gen_flux.py OUT_DIR [--public DIR]

Writes OUT_DIR/flux/{transformer,controlnet,vae} from a tiny diffusers
FluxTransformer2DModel / FluxControlNetModel.from_transformer / AutoencoderKL whose depths, head
sizes, RoPE axes, text widths, batch, token counts, timesteps and seeds all
differ from the public set, with the file names, tensor names and dtypes the
public READMEs describe. Weights follow DETINIT ("dp2o-init-v1") with another
seed; the ControlNet's zero layers are re-drawn as the public README says.
Every other flux/ folder is copied from the public set — NOTE: flux/pipeline
was made with the public transformer and ControlNet, so it only matches the
public set (run ./flow/transformer, not ./flow, on this set).
"""
import argparse
import json
import math
import os
import shutil

import numpy as np
import torch

torch.set_num_threads(1)

ap = argparse.ArgumentParser(description="alternate flux/ fixture set")
ap.add_argument("out")
ap.add_argument("--public", default="/work/shared/fixtures/flux")
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

from diffusers import AutoencoderKL, FluxControlNetModel, FluxTransformer2DModel  # noqa: E402
from diffusers.models.attention_processor import FluxAttnProcessor2_0  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


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


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for name in sorted(os.listdir(PUB)):
        if name in ("transformer", "controlnet", "vae"):
            continue
        src = os.path.join(PUB, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(OUT, name))

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
    print("wrote", OUT)


if __name__ == "__main__":
    main()
