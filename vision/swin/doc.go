// Package swin is the Swin Transformer of Liu et al. (2021) as the official
// microsoft/Swin-Transformer code writes it and as RAM's image encoder
// (recognize-anything ram/models/swin_transformer.py) uses it: a patch
// embedding, stages of shifted-window attention blocks with a relative
// position bias and the shifted-window mask, patch merging in the official
// concatenation order, and RAM's output (the average-pooled token in front of
// the final tokens).
//
// The pieces are exported on their own ([Block], [Stage], [PatchMerging],
// [PatchEmbed], [WindowAttention]) so that other networks built from Swin
// blocks (MANIQA's and TOPIQ's variants) can assemble them with their own key
// prefixes. Keys follow the official state dict: patch_embed.proj,
// patch_embed.norm, layers.i.blocks.j.{norm1,attn.qkv,attn.proj,
// attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2},
// layers.i.downsample.{norm,reduction}, norm. The relative_position_index and
// attn_mask buffers of a checkpoint are not weights: they are recomputed
// from the configuration.
package swin
