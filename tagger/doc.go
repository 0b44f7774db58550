// Package tagger is the prompt extractor of both DP²O-SR pipelines: RAM
// (the Recognize Anything Model, Swin-L at 384 px) with the DAPE LoRA of
// SeeSR merged, reading tags off the input image. The tags whose
// probability beats their threshold, in tag-list order and joined with
// ", ", are the text prompt (SPEC §2.2 step 4, §3.5).
//
// The model is the official RAMLora.generate_tag path: the image goes
// through the official preprocessing ([Preprocess]: RGB, ToTensor, a
// 384×384 bilinear resize with antialiasing, ImageNet normalisation), the
// Swin-L encoder (package vision/swin), image_proj, and the Query2Label head
// (label embeddings through wordvec_proj and ReLU as queries, two BERT
// layers with cross-attention only, fc). A tag passes when
// sigmoid(logit) > threshold, strictly, in float32.
//
// [Load] reads the published checkpoints as the official loader does:
// ram_swin_large_14m.pth (checkpoint['model'], vision_multi renamed to
// tagging_head, relative_position_index / attn_mask buffers dropped,
// relative position tables of another window interpolated) and DAPE.pth
// (the LoRA pairs, merged as W += B·A·alpha/r on the q and v rows of the
// Swin qkv and on the head's query and key). Converted .safetensors files
// with the same keys load too.
package tagger
