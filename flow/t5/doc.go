// Package t5 is FLUX's second text encoder: the T5-v1.1 tokenizer
// (tokenizer_2/) and the T5 encoder stack (text_encoder_2/), as diffusers'
// FluxPipeline._get_t5_prompt_embeds runs them with transformers'
// T5TokenizerFast and T5EncoderModel.
//
// # Tokenizer
//
// LoadTokenizer reads a published tokenizer folder (FLUX.1-dev's
// tokenizer_2/) or one of its files: tokenizer.json (the fast tokenizer's
// file) or spiece.model (the SentencePiece model protobuf; the fast
// tokenizer is converted from it at load time, and both describe the same
// tokenizer). It is a SentencePiece Unigram model run the way the Hugging
// Face fast tokenizer runs it:
//
//   - added tokens (<pad>, </s>, <unk>, <extra_id_N>) written in the text
//     are split out first and map to their ids;
//   - each remaining segment is normalised with the precompiled charsmap
//     (nmt_nfkc, looked up per extended grapheme cluster), stripped on the
//     right, runs of spaces collapsed;
//   - the Metaspace pre-tokenizer turns spaces into ▁, prepends ▁ and
//     splits before each ▁;
//   - each word is segmented by Viterbi over the piece scores, unknown
//     characters becoming <unk> (consecutive ones fused), byte pieces used
//     when the model has byte fallback;
//   - </s> is appended; Encode truncates to maxLen (keeping </s> last) and
//     pads with <pad>, as padding="max_length", truncation=True does.
//
// For example:
//
//	tok, err := t5.LoadTokenizer("FLUX.1-dev/tokenizer_2")
//	ids, err := tok.Encode([]string{"bird, branch, tree"}, t5.DefaultMaxLength) // [][]int64, each 512 long
//	t, err := tok.EncodeTensor(prompts, 512)                                    // int64 (B, 512) on the CPU
//
// # Encoder
//
// LoadEncoder reads a T5EncoderModel folder: config.json and
// model.safetensors or a sharded model.safetensors.index.json. Shards are
// memory-mapped and each weight is converted to the requested dtype and
// moved to the device one at a time, so the checkpoint is never held twice
// in host memory. The tied encoder.embed_tokens.weight, absent from
// published checkpoints, is taken from shared.weight. The model is built
// from any T5 config (T5-v1.1 gated-GELU or original ReLU feed-forward,
// any size); dropout is off.
//
//	enc, err := t5.LoadEncoder("FLUX.1-dev/text_encoder_2", torch.BFloat16, torch.CUDA(0))
//	defer enc.Close()
//	h, err := enc.Forward(t) // last_hidden_state (B, L, d_model), weight dtype, on the model's device
//
// As FLUX calls it, the encoder gets no attention mask: <pad> positions are
// attended to. The computation is transformers' (4.47): RMS layer norms
// with the mean of squares in float32, attention without 1/√d scaling plus
// a relative position bias that the first block computes from bucketed
// key−query distances and every block shares, softmax in float32, and in
// float16 the clamping of infinite activations transformers applies.
// ForwardHidden also returns the per-block hidden states for parity checks;
// ForwardMasked applies an attention mask as transformers does for other
// T5 users. The exported entry points return errors for bad ids, masks and
// checkpoints; Block.Forward, the building block, panics with a
// *torch.Error like the tensor ops.
//
// Every weight takes LoadEncoder's dtype, as in the official C-FLUX script,
// which loads the encoder in float32 and casts it whole with .to(dtype).
// (transformers' from_pretrained with torch_dtype=float16 would instead keep
// the wo layers in float32, its _keep_in_fp32_modules; with bfloat16 it
// casts everything too.)
package t5
