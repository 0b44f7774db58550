// Package transformer is FLUX.1's denoiser, diffusers' FluxTransformer2DModel,
// and its ControlNet, FluxControlNetModel (the C-FLUX / DP²O-FLUX
// ControlNet), with the latent packing and position-id helpers the FLUX
// pipelines share.
//
// # Models
//
// Both models are built from a diffusers config.json (Config; unknown keys
// are ignored, missing ones take diffusers' constructor defaults, so the
// FLUX.1-dev file that predates axes_dims_rope loads) through an
// nn.Builder that takes every weight by its diffusers name:
//
//	f, err := transformer.LoadFlux(dir, torch.BFloat16, torch.CUDA(0)) // transformer/ folder
//	defer f.Close()
//	cn, err := transformer.LoadControlNetFile(path, transformer.ControlNetConfigFromTransformer(f.Config, 4, 0), dtype, dev)
//	// or transformer.LoadControlNet(dir, …) for a save_pretrained folder,
//	// or transformer.ControlNetFromTransformer(f, transformer.ControlNetOptions{NumLayers: 4}) for training.
//
// LoadFlux reads config.json and diffusion_pytorch_model.safetensors, or the
// sharded diffusion_pytorch_model.safetensors.index.json with every shard it
// names. Files are memory-mapped and each tensor is copied once, into its
// final dtype and device: the checkpoint is never held twice in host memory.
// guidance_embeds selects FLUX.1-dev's CombinedTimestepGuidanceTextProjEmbeddings
// or FLUX.1-schnell's CombinedTimestepTextProjEmbeddings.
//
// # Forward
//
// (*Flux).Forward takes an Input with diffusers' argument names and returns
// the velocity prediction (B, L, out_channels·patch²):
//
//	v, err := f.Forward(transformer.Input{
//		HiddenStates:        x,      // (B, L, 64) packed latents (PackLatents)
//		EncoderHiddenStates: text,   // (B, T, joint_attention_dim): T5 output
//		PooledProjections:   pooled, // (B, pooled_projection_dim): CLIP pooled output
//		Timestep:            t,      // (B) or (1): σ = t/1000 as the pipeline passes it; the model multiplies by 1000
//		Guidance:            g,      // (B) or (1): the raw guidance scale (2.5); ×1000 inside; nil without guidance_embeds
//		ImgIDs:              imgIDs, // (L, 3) ImageIDs(h/2, w/2)
//		TxtIDs:              txtIDs, // (T, 3) TextIDs(T)
//		ControlNetBlockSamples: blocks, // optional, from (*ControlNet).Forward
//	})
//
// ControlNet residuals are added as diffusers does: after double block i the
// image stream gets ControlNetBlockSamples[i / ceil(num_layers/len(samples))]
// (InjectionIndex), or samples[i % len] with ControlNetBlocksRepeat; single
// block samples are added to the image tokens after single block i by the same
// interval rule.
//
// (*ControlNet).Forward(in, controlnetCond, conditioningScale) returns the
// block samples (one per ControlNet double block, (B, L, D)) and the single
// block samples (nil when the ControlNet has no single blocks, as C-FLUX),
// each already multiplied by conditioningScale.
//
// Forward methods return bad input (shapes, missing guidance, a wrong number
// of residuals) as errors. Intermediates are reported to Tap, named as the
// fixtures name them (x_embedder, time_proj.timestep, transformer_blocks.3.hidden_states, …).
//
// # Speed
//
// Linears go through torch.FastLinear (libtorch's BLAS; XNNPACK only with
// the reference BLAS). On the CPU the attention scores are computed a head
// (or a block of query rows) at a time, in pieces of at most 16 MiB, with
// the 1/√d scale applied by the product. Without a Tap, outputs nobody
// reads are not computed: the text rows of the last single block (only the
// image tokens leave the model), and, where no single block follows, the
// text stream of the last double block (the C-FLUX ControlNet's last block).
// Taps see the full computation, as diffusers runs it.
//
// # Helpers
//
// PackLatents / UnpackLatents are the pipeline's _pack_latents and
// _unpack_latents (2×2 patches), ImageIDs is _prepare_latent_image_ids
// ([0, row, col] over the packed grid), TextIDs the zeros FLUX's
// encode_prompt makes, and PosEmbed is FluxPosEmbed (3-axis RoPE, angles in
// float64, cos/sin cast to float32).
package transformer
