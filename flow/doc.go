// Package flow is the C-FLUX / DP²O-FLUX super-resolution pipeline: FLUX.1
// steered by a FLUX ControlNet, as the official test_flux_controlnet.py
// runs diffusers' FluxControlNetPipeline (diffusers 0.32.2).
//
// The models live in sub-packages and in diffusion (imported, not copied):
// t5 (tokenizer_2 and text_encoder_2), transformer (FluxTransformer2DModel,
// FluxControlNetModel, latent packing and position ids), scheduler
// (FlowMatchEulerDiscreteScheduler with FLUX's dynamic shift), and from
// diffusion: clip (CLIP-L tokenizer and text encoder, pooled output), vae
// (the 16-channel AutoencoderKL with shift and scaling factors), colorfix.
//
// CFLUX holds the loaded components (LoadCFLUX reads a FLUX.1-dev folder and
// a released C-FLUX / DP²O-FLUX ControlNet model.safetensors as published).
// EncodePrompt is encode_prompt; SampleEmbeds and Sample are the pipeline
// call on tensors, with the official order of random draws (the VAE
// posterior of the control image, then the initial latents; nothing during
// the Euler steps) so that the same seed gives the same image; Upscale is
// the official per-image front-end (resize rules, control image in [−1, 1],
// colour fix, resize back).
//
// Image sides must be multiples of 16 (the VAE's factor 8 times the 2×2
// latent packing). The official script only makes them multiples of 8 and
// then fails inside diffusers; here Sample returns a clear error, and
// Upscale either returns it too or, with UpscaleOptions.PadTo16, pads the
// processing image on the right and bottom by edge replication to the next
// multiple of 16 and crops the result back (documented deviation, off by
// default).
//
// Precision follows the official --mixed_precision: on CUDA the text
// encoders, transformer and ControlNet hold float16 (or bfloat16) weights,
// the VAE float32, and the call runs under float16 autocast as the script's
// `with torch.autocast("cuda")`; on the CPU everything is float32, which is
// what the reference fixtures use.
package flow
