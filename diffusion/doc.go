// Package diffusion is the C-SD2 / DP²O-SD2 super-resolution pipeline:
// Stable Diffusion 2-base steered by a ControlNet, exactly as the official
// test_sd2b_controlnet.py runs diffusers' StableDiffusionControlNetPipeline.
//
// The models live in sub-packages (clip: tokenizer and text encoder; unet:
// UNet and ControlNet; vae; scheduler; colorfix); this package wires them
// together: SD2 holds the loaded components, Sample is the denoising loop on
// tensors (CFG, DDPM, every random draw in diffusers' order), and Upscale is
// the official per-image front-end around it (resize rules, colour fix,
// resize back).
package diffusion
