package t5

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Tolerance of the t5_encoder fixture README (float32 port on libtorch).
const (
	encAtol = 1e-4
	encRtol = 0
)

const encoderDir = "flux/t5_encoder"

// tinyWeights is the path of the fixture encoder's full checkpoint file.
func tinyWeights(tb testing.TB) string {
	tb.Helper()
	return testutil.Weights(tb, encoderDir+"/"+WeightsFile)
}

// loadTiny builds the fixture's tiny encoder in float32 on dev.
func loadTiny(tb testing.TB, dev torch.Device) *Encoder {
	tb.Helper()
	cfg, err := LoadConfig(testutil.Fixture(tb, encoderDir+"/config.json"))
	require.NoError(tb, err)
	src, err := nn.OpenSafetensors(tinyWeights(tb))
	require.NoError(tb, err)
	defer src.Close()
	e, err := EncoderFromSource(src, cfg, torch.Float32, dev)
	require.NoError(tb, err)
	tb.Cleanup(e.Close)
	return e
}

// encoderCases groups the tensors of io.safetensors by input case: every
// "<case>.input_ids" starts a case, and "<case>.x" belongs to it as "x".
// Tensors of no case are returned in the "" group.
func encoderCases(io map[string]*torch.Tensor) map[string]map[string]*torch.Tensor {
	out := map[string]map[string]*torch.Tensor{}
	for k := range io {
		if c, ok := strings.CutSuffix(k, ".input_ids"); ok {
			out[c] = map[string]*torch.Tensor{}
		}
	}
	for k, t := range io {
		c, n, ok := strings.Cut(k, ".")
		if _, isCase := out[c]; !ok || !isCase || c == "" {
			c, n = "", k
		}
		if out[c] == nil {
			out[c] = map[string]*torch.Tensor{}
		}
		out[c][n] = t
	}
	return out
}

// checkOrder sorts a case's tensor names in the order the model computes
// them, so that a failure names the first diverging one.
func checkOrder(names []string) []string {
	rank := func(n string) (int, int) {
		switch {
		case n == "position_bias":
			return 0, 0
		case strings.HasPrefix(n, "hidden_states."):
			i, _ := strconv.Atoi(strings.TrimPrefix(n, "hidden_states."))
			return 1, i
		case n == "last_block_output":
			return 2, 0
		case n == "last_hidden_state":
			return 3, 0
		}
		return 4, 0
	}
	sort.Slice(names, func(i, j int) bool {
		a1, a2 := rank(names[i])
		b1, b2 := rank(names[j])
		if a1 != b1 {
			return a1 < b1
		}
		if a2 != b2 {
			return a2 < b2
		}
		return names[i] < names[j]
	})
	return names
}

func TestConfig(t *testing.T) {
	cfg, err := LoadConfig(testutil.Fixture(t, encoderDir+"/config.json"))
	require.NoError(t, err)
	require.Equal(t, cfg.NumHeads*cfg.DKV, cfg.InnerDim())

	// FLUX.1-dev's text_encoder_2 config: T5-v1.1-XXL, gated-gelu → gelu_new.
	xxl, err := LoadConfig(testutil.Fixture(t, "flux/keys/t5_xxl_encoder/config.json"))
	require.NoError(t, err)
	require.True(t, xxl.IsGatedAct)
	require.Equal(t, "gelu_new", xxl.DenseActFn)

	// Missing fields take T5Config's defaults; feed_forward_proj sets the
	// activation unless dense_act_fn / is_gated_act are given.
	c, err := ParseConfig([]byte(`{"d_model": 64}`))
	require.NoError(t, err)
	require.Equal(t, DefaultConfig().NumHeads, c.NumHeads)
	require.Equal(t, "relu", c.DenseActFn)
	require.False(t, c.IsGatedAct)
	c, err = ParseConfig([]byte(`{"feed_forward_proj": "gated-gelu"}`))
	require.NoError(t, err)
	require.Equal(t, "gelu_new", c.DenseActFn)
	require.True(t, c.IsGatedAct)
	c, err = ParseConfig([]byte(`{"feed_forward_proj": "gated-silu"}`))
	require.NoError(t, err)
	require.Equal(t, "silu", c.DenseActFn)
	require.True(t, c.IsGatedAct)

	for _, bad := range []string{
		`{"feed_forward_proj": "gated-gelu-x"}`,
		`{"feed_forward_proj": "fancy-gelu"}`,
		`{"feed_forward_proj": "mish"}`,
		`{"dense_act_fn": "mish"}`,
		`{"num_heads": 0}`,
		`{"d_model": "big"}`,
		`{"relative_attention_num_buckets": 1}`,
		`{"layer_norm_epsilon": 0}`,
		`[1]`,
	} {
		_, err := ParseConfig([]byte(bad))
		require.Error(t, err, bad)
		t.Logf("%s: %v", bad, err)
	}
	_, err = LoadConfig(filepath.Join(t.TempDir(), "config.json"))
	require.ErrorContains(t, err, "t5 config")
}

// TestRelativePositionBucket compares the bucket table of the fixture.
func TestRelativePositionBucket(t *testing.T) {
	testutil.NoLeak(t)
	cfg, err := LoadConfig(testutil.Fixture(t, encoderDir+"/config.json"))
	require.NoError(t, err)
	io := testutil.Tensors(t, testutil.Fixture(t, encoderDir+"/io.safetensors"))
	rel, want := io["relative_position"], io["relative_position_bucket"]
	require.NotNil(t, rel)
	require.NotNil(t, want)
	dev := testutil.Device(t)
	s := torch.NewScope()
	defer s.Close()
	got := RelativePositionBucket(rel.ToDevice(dev), true, int64(cfg.NumBuckets), int64(cfg.MaxDistance)).ToDevice(torch.CPU)
	testutil.AssertEqual(t, "relative_position_bucket", got, want)

	// Unidirectional buckets (decoder side): only key ≤ query distances,
	// all buckets below num_buckets.
	uni := RelativePositionBucket(rel, false, int64(cfg.NumBuckets), int64(cfg.MaxDistance)).Int64s()
	for i, r := range rel.Int64s() {
		require.GreaterOrEqual(t, uni[i], int64(0))
		require.Less(t, uni[i], int64(cfg.NumBuckets))
		if r >= 0 {
			require.Zero(t, uni[i], "relative position %d", r)
		}
	}
}

// TestEncoder compares every tensor of the fixture's io.safetensors: the
// position bias, the embeddings, each block's output, the last block's raw
// output and last_hidden_state, for each input case.
func TestEncoder(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	e := loadTiny(t, dev)
	io := testutil.Tensors(t, testutil.Fixture(t, encoderDir+"/io.safetensors"))
	cases := encoderCases(io)
	checkedCases := 0
	for name, c := range cases {
		if name == "" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			s := torch.NewScope()
			defer s.Close()
			ids := c["input_ids"]
			require.NotNil(t, ids, "%s.input_ids", name)
			out, err := e.ForwardHidden(ids)
			require.NoError(t, err)
			defer out.Close()
			require.Len(t, out.Hidden, e.Config.NumLayers+1)
			var names []string
			for n := range c {
				names = append(names, n)
			}
			checked := 0
			for _, n := range checkOrder(names) {
				want := c[n]
				var got *torch.Tensor
				switch {
				case n == "input_ids", n == "attention_mask":
					continue
				case n == "last_hidden_state_if_masked":
					// The negative control: FLUX does not mask, and the
					// unmasked output is far from the masked one, which
					// ForwardMasked computes.
					maxAbs, _, err := testutil.Diff(out.LastHidden.ToDevice(torch.CPU), want, encAtol, encRtol)
					require.NoError(t, err)
					require.Greater(t, maxAbs, encAtol, "output matches the masked negative control")
					mask := c["attention_mask"]
					require.NotNil(t, mask, "%s.attention_mask", name)
					masked, err := e.ForwardMasked(ids, mask)
					require.NoError(t, err)
					defer masked.Close()
					got = masked.LastHidden
				case n == "position_bias":
					got = out.PositionBias
				case n == "last_block_output":
					got = out.Hidden[len(out.Hidden)-1]
				case n == "last_hidden_state":
					got = out.LastHidden
				case strings.HasPrefix(n, "hidden_states."):
					i, err := strconv.Atoi(strings.TrimPrefix(n, "hidden_states."))
					require.NoError(t, err, n)
					require.LessOrEqual(t, i, e.Config.NumLayers, n)
					got = out.Hidden[i]
					if i == e.Config.NumLayers { // transformers' last entry is normed
						got = out.LastHidden
					}
				default:
					t.Fatalf("fixture tensor %s.%s not understood", name, n)
				}
				testutil.AssertClose(t, name+"."+n, got.ToDevice(torch.CPU), want, encAtol, encRtol)
				checked++
			}
			require.NotZero(t, checked)

			// Forward gives the same last_hidden_state; int32 ids work.
			last, err := e.Forward(ids.To(torch.Int32))
			require.NoError(t, err)
			defer last.Close()
			testutil.AssertEqual(t, "Forward last_hidden_state", last, out.LastHidden)
		})
		checkedCases++
	}
	require.NotZero(t, checkedCases)
}

// TestEncoderBadInput checks that bad ids are errors, never crashes.
func TestEncoderBadInput(t *testing.T) {
	testutil.NoLeak(t)
	e := loadTiny(t, torch.CPU)
	v := int64(e.Config.VocabSize)
	s := torch.NewScope()
	defer s.Close()
	cases := map[string]*torch.Tensor{
		"id too large":  torch.FromSlice([]int64{5, v}, 1, 2),
		"negative id":   torch.FromSlice([]int64{-1, 5}, 1, 2),
		"1-d":           torch.FromSlice([]int64{5, 6}),
		"3-d":           torch.FromSlice([]int64{5, 6}, 1, 1, 2),
		"empty":         torch.FromSlice([]int64{}, 0, 2),
		"empty length":  torch.FromSlice([]int64{}, 1, 0),
		"float ids":     torch.FromSlice([]float32{1, 2}, 1, 2),
		"bool ids":      torch.FromSlice([]int64{1, 0}, 1, 2).GtScalar(0),
		"closed tensor": torch.FromSlice([]int64{5, 6}, 1, 2),
		"nil":           nil,
	}
	cases["closed tensor"].Close()
	for name, ids := range cases {
		out, err := e.Forward(ids)
		require.Error(t, err, name)
		require.Nil(t, out, name)
		require.Contains(t, err.Error(), "t5 encoder", name)
		t.Logf("%s: %v", name, err)
		_, err = e.ForwardHidden(ids)
		require.Error(t, err, name)
	}
	// Attention masks that do not fit.
	ids := torch.FromSlice([]int64{5, 6, 7, 8}, 2, 2)
	for name, mask := range map[string]*torch.Tensor{
		"nil mask":   nil,
		"short mask": torch.FromSlice([]int64{1, 1}, 2, 1),
		"1-d mask":   torch.FromSlice([]int64{1, 1, 1, 1}),
	} {
		_, err := e.ForwardMasked(ids, mask)
		require.ErrorContains(t, err, "attention mask", name)
		t.Logf("%s: %v", name, err)
	}

	// After Close the encoder refuses to run.
	e.Close()
	_, err := e.Forward(ids)
	require.ErrorContains(t, err, "after Close")
}

// TestFullSizeKeys builds FLUX's T5-XXL from its published config on the
// meta device and checks that it requests exactly the published keys and
// shapes, without allocating them.
func TestFullSizeKeys(t *testing.T) {
	testutil.NoLeak(t)
	root := testutil.Fixture(t, "flux/keys/t5_xxl_encoder")
	cfg, err := LoadConfig(filepath.Join(root, "config.json"))
	require.NoError(t, err)
	want := testutil.ReadKeys(t, filepath.Join(root, "keys.json"))
	b := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
	e, err := NewEncoder(b, cfg)
	require.NoError(t, err)
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	for _, w := range p.List() {
		require.Equal(t, torch.Meta, w.Device(), "weights allocated")
	}
	testutil.AssertKeys(t, want, p.Names, b.Requested())
	require.Equal(t, want.NumParams, p.NumElements())
	require.Len(t, e.Blocks, cfg.NumLayers)
	require.NotNil(t, e.Blocks[0].RelativeBias)
	for _, blk := range e.Blocks[1:] {
		require.Nil(t, blk.RelativeBias)
	}
}

// writeSharded writes the tensors of the safetensors file src (edited by
// edit) as a checkpoint of shards files plus its index in dir.
func writeSharded(t *testing.T, dir string, src string, shards int, edit func(map[string]*torch.Tensor)) string {
	t.Helper()
	st := testutil.Tensors(t, src)
	if edit != nil {
		edit(st)
	}
	names := make([]string, 0, len(st))
	for n := range st {
		names = append(names, n)
	}
	sort.Strings(names)
	weightMap := map[string]string{}
	for k := 0; k < shards; k++ {
		file := fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, shards)
		var list []safetensorsTensor
		for i, n := range names {
			if i%shards == k {
				list = append(list, safetensorsTensor{n, st[n]})
				weightMap[n] = file
			}
		}
		require.NoError(t, saveTensors(filepath.Join(dir, file), list))
	}
	return writeIndex(t, dir, weightMap)
}

func copyConfig(t *testing.T, dir string) {
	t.Helper()
	data, err := os.ReadFile(testutil.Fixture(t, encoderDir+"/config.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644))
}

// TestLoadEncoderSharded loads the fixture weights as a sharded checkpoint
// through its index (with and without the tied embed_tokens key) and checks
// the output against the single-file load.
func TestLoadEncoderSharded(t *testing.T) {
	testutil.NoLeak(t)
	ref := loadTiny(t, torch.CPU)
	io := testutil.Tensors(t, testutil.Fixture(t, encoderDir+"/io.safetensors"))
	var ids *torch.Tensor
	for n, x := range io {
		if strings.HasSuffix(n, ".input_ids") {
			ids = x
			break
		}
	}
	require.NotNil(t, ids)
	want, err := ref.Forward(ids)
	require.NoError(t, err)
	defer want.Close()

	for _, tc := range []struct {
		name string
		edit func(map[string]*torch.Tensor)
	}{
		{"published", nil},
		{"with embed_tokens", func(m map[string]*torch.Tensor) {
			m[EmbedTokensKey] = torch.Unscope(m[SharedKey].Clone())
		}},
		{"only embed_tokens", func(m map[string]*torch.Tensor) {
			m[EmbedTokensKey] = m[SharedKey]
			delete(m, SharedKey)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyConfig(t, dir)
			writeSharded(t, dir, tinyWeights(t), 3, tc.edit)
			e, err := LoadEncoder(dir, torch.Float32, torch.CPU)
			require.NoError(t, err)
			defer e.Close()
			_, hasEmbed := e.Params.Tensors[EmbedTokensKey]
			require.False(t, hasEmbed)
			got, err := e.Forward(ids)
			require.NoError(t, err)
			defer got.Close()
			testutil.AssertEqual(t, "sharded last_hidden_state", got, want)
		})
	}

	// bfloat16 weights (as FLUX uses them) run and stay close to float32.
	t.Run("bfloat16", func(t *testing.T) {
		dir := t.TempDir()
		copyConfig(t, dir)
		writeSharded(t, dir, tinyWeights(t), 2, nil)
		e, err := LoadEncoder(dir, torch.BFloat16, torch.CPU)
		require.NoError(t, err)
		defer e.Close()
		require.Equal(t, torch.BFloat16, e.DType())
		got, err := e.Forward(ids)
		require.NoError(t, err)
		defer got.Close()
		require.Equal(t, torch.BFloat16, got.DType())
		s := torch.NewScope()
		defer s.Close()
		testutil.AssertClose(t, "bfloat16 last_hidden_state", got.To(torch.Float32), want, 0.1, 0.05)
	})
}
