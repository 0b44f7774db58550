// Package qalign is the Q-Align quality metric ("qalign" in pyiqa; the
// "OneAlign" checkpoint q-future/one-align, mPLUG-Owl2 on LLaMA-2-7B):
// no-reference, higher is better, scores in [1, 5]. It registers itself
// with reward.Open under "qalign".
//
// A score is one forward pass of a multimodal LLM asked "How would you
// rate the quality of this image?": the image is truncated to uint8, padded
// to a square with the CLIP mean colour, resized with Pillow's bicubic
// filter to 448×448 and normalised (Processor); the ViT-L/14 vision tower
// and the visual abstractor turn it into 65 visual tokens, which replace
// the <|image|> placeholder of the tokenised prompt (Tokenizer, the LLaMA
// SentencePiece BPE model read from tokenizer.model); the
// modality-adaptive LLaMA decoder runs over the 92 positions, and the
// logits of the last position at the ids of "excellent", "good", "fair",
// "poor" and "bad" give softmax weights for 5, 4, 3, 2 and 1.
//
// pyiqa scores one image at a time; Score runs a batch at once (the prompt
// has a fixed length), with the same results at float tolerance.
//
// # Weights
//
// Open takes the folder of the published checkpoint (config.json,
// tokenizer.model, preprocessor_config.json, and model.safetensors, a
// sharded model.safetensors.index.json, pytorch_model.bin or a sharded
// pytorch_model.bin.index.json, in float16, bfloat16 or float32), or the
// model id "q-future/one-align", resolved through the Hugging Face cache
// (package hub; HF_HUB_OFFLINE=1 keeps it offline). Safetensors shards are
// memory-mapped and .bin checkpoints read one tensor at a time, so that
// loading holds one tensor besides the model: no second copy of the
// weights in host memory. The abstractor's q_pos_embed / k_pos_embed
// buffers are computed when the checkpoint lacks them (Q-Align's own
// converter leaves them out); "…rotary_emb.inv_freq" keys are ignored.
//
// # Devices and memory
//
// The default compute dtype is float16 on CUDA, as pyiqa runs the metric,
// and float32 on the CPU (libtorch 1.13 lacks CPU kernels for float16
// matmuls, so float16 is refused there; bfloat16 may be asked for with
// OpenOptions.DType to halve the memory, at bfloat16's precision: the
// fixture scores move by about 5·10⁻³). The full model has
// 8,204,550,144 parameters: on CUDA in float16 about 16.4 GB of GPU memory
// for the weights; on a CPU machine in float32 about 33 GB of RAM for the
// weights (a float16 checkpoint is converted while it loads; its mapped
// pages are file cache, not a second copy) or 16.4 GB in bfloat16. The
// forward pass holds one layer's intermediates at a time (each layer runs
// in its own scope). Its largest are the vision attention scores and
// their softmax: on CUDA about 67 MB per image of the batch in float16; on
// the CPU they are computed a block of query rows at a time (4 MiB of
// scores, torch.SetAttentionChunkBytes), whatever the batch, which also
// keeps them in cache. The 92-token decoder adds a few MB. At about 2·10¹² floating-point operations per
// image (the 7B decoder over 92 positions, the ViT-L over 1025 tokens), a
// CPU run takes tens of seconds per image on a many-core machine (an
// estimate: the full model was not run here). A float16 score is itself a
// float16 number (spacing 2⁻⁹ to 2⁻⁸ in [2, 5]), as pyiqa's is.
package qalign
