package clip

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

const (
	textAtol = 1e-5
	textRtol = 1e-5
)

// loadTinyText builds the fixture's tiny CLIPTextModel with the config of
// variant ("gelu" or "quick_gelu") on dev.
func loadTinyText(tb testing.TB, variant string, dev torch.Device) *TextModel {
	tb.Helper()
	cfg, err := LoadTextConfig(testutil.Fixture(tb, "sd2/clip_text/"+variant+"/config.json"))
	require.NoError(tb, err)
	src, err := nn.OpenSafetensors(testutil.Weights(tb, "sd2/clip_text/model.safetensors"))
	require.NoError(tb, err)
	defer src.Close()
	m, err := TextModelFromSource(src, cfg, torch.Float32, dev)
	require.NoError(tb, err)
	tb.Cleanup(m.Close)
	return m
}

func TestTextConfig(t *testing.T) {
	cfg, err := LoadTextConfig(testutil.Fixture(t, "sd2/keys/text_encoder/config.json"))
	require.NoError(t, err)
	require.Equal(t, SD2TextConfig(), cfg)
	require.Equal(t, 64, cfg.HeadDim())

	// Missing fields take CLIPTextConfig's defaults; a full CLIPConfig's
	// text_config is used.
	c, err := ParseTextConfig([]byte(`{"hidden_size": 768, "num_attention_heads": 12}`))
	require.NoError(t, err)
	require.Equal(t, "quick_gelu", c.HiddenAct)
	require.Equal(t, int64(49407), c.EOSTokenID)
	require.Equal(t, 768, c.HiddenSize)
	c, err = ParseTextConfig([]byte(`{"model_type": "clip", "projection_dim": 768, "text_config": {"hidden_size": 64, "num_attention_heads": 2}}`))
	require.NoError(t, err)
	require.Equal(t, 64, c.HiddenSize)

	for _, bad := range []string{
		`{"hidden_act": "swish"}`,
		`{"hidden_size": 100, "num_attention_heads": 8}`,
		`{"max_position_embeddings": 0}`,
		`{"hidden_size": "big"}`,
	} {
		_, err := ParseTextConfig([]byte(bad))
		require.Error(t, err, bad)
	}
	_, err = LoadTextConfig(filepath.Join(t.TempDir(), "config.json"))
	require.Error(t, err)
}

// TestTextModel compares every tensor of the fixtures' io.safetensors.
func TestTextModel(t *testing.T) {
	for _, variant := range []string{"gelu", "quick_gelu"} {
		t.Run(variant, func(t *testing.T) {
			testutil.NoLeak(t)
			dev := testutil.Device(t)
			m := loadTinyText(t, variant, dev)
			io := testutil.Tensors(t, testutil.Fixture(t, "sd2/clip_text/"+variant+"/io.safetensors"))
			ids := io["input_ids"]
			require.NotNil(t, ids)

			out, err := m.EncodeHidden(ids)
			require.NoError(t, err)
			defer out.Close()
			require.Len(t, out.Hidden, m.Config.NumHiddenLayers+1)

			names := make([]string, 0, len(io))
			for n := range io {
				names = append(names, n)
			}
			sort.Strings(names) // hidden_states.0.. first: the first divergence is named
			checked := 0
			for _, n := range names {
				want := io[n]
				var got *torch.Tensor
				switch {
				case n == "input_ids":
					continue
				case n == "last_hidden_state":
					got = out.LastHidden
				case n == "pooler_output":
					got = out.Pooled
				case strings.HasPrefix(n, "hidden_states."):
					i, err := strconv.Atoi(strings.TrimPrefix(n, "hidden_states."))
					require.NoError(t, err, n)
					require.Less(t, i, len(out.Hidden), n)
					got = out.Hidden[i]
				default:
					t.Fatalf("fixture tensor %q not understood", n)
				}
				testutil.AssertClose(t, n, got, want, textAtol, textRtol)
				checked++
			}
			require.GreaterOrEqual(t, checked, 2)

			// Forward and Encode give the same tensors as EncodeHidden.
			last, pooled := m.Forward(ids)
			defer last.Close()
			defer pooled.Close()
			testutil.AssertEqual(t, "Forward last_hidden_state", last, out.LastHidden)
			testutil.AssertEqual(t, "Forward pooler_output", pooled, out.Pooled)
			enc, err := m.Encode(ids)
			require.NoError(t, err)
			defer enc.Close()
			require.Nil(t, enc.Hidden)
			testutil.AssertEqual(t, "Encode pooler_output", enc.Pooled, out.Pooled)
		})
	}
}

// TestTextModelShortAndInt32 checks ids shorter than max_position_embeddings
// and int32 ids: with the causal mask, the first n positions of a full row
// do not depend on the rest.
func TestTextModelShortAndInt32(t *testing.T) {
	testutil.NoLeak(t)
	m := loadTinyText(t, "gelu", testutil.Device(t))
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/clip_text/gelu/io.safetensors"))
	ids := io["input_ids"]
	s := torch.NewScope()
	defer s.Close()
	short := ids.Narrow(1, 0, 10).To(torch.Int32)
	out, err := m.Encode(short)
	require.NoError(t, err)
	batch, hidden := ids.Shape()[0], int64(m.Config.HiddenSize)
	require.Equal(t, []int64{batch, 10, hidden}, out.LastHidden.Shape())
	want := io["last_hidden_state"].Narrow(1, 0, 10)
	testutil.AssertClose(t, "short last_hidden_state", out.LastHidden, want, textAtol, textRtol)
	require.Equal(t, []int64{batch, hidden}, out.Pooled.Shape())
}

// TestTextModelPooling checks both of transformers' pooling rules.
func TestTextModelPooling(t *testing.T) {
	testutil.NoLeak(t)
	m := loadTinyText(t, "quick_gelu", torch.CPU)
	s := torch.NewScope()
	defer s.Close()
	// Ids relative to the model's own vocabulary: bos, eos = V−2, V−1 as in
	// CLIP's; the last row has no eos and its largest id last.
	v := int64(m.Config.VocabSize)
	bos, eos := v-2, v-1
	ids := torch.FromSlice([]int64{
		bos, 5, eos, 7, eos, 9,
		bos, eos, 3, 4, 5, 6,
		0, 1, 2, 3, 4, v - 3,
	}, 3, 6)
	// Legacy eos_token_id 2: the largest id.
	legacy := *m
	legacy.Config.EOSTokenID = LegacyEOSTokenID
	require.Equal(t, []int64{2, 1, 5}, legacy.EOSPositions(ids).Int64s())
	// Otherwise the first eos_token_id (0 when there is none).
	m2 := *m
	m2.Config.EOSTokenID = eos
	require.Equal(t, []int64{2, 1, 0}, m2.EOSPositions(ids).Int64s())

	out, err := m2.Encode(ids)
	require.NoError(t, err)
	for b, p := range []int64{2, 1, 0} {
		testutil.AssertEqual(t, fmt.Sprintf("pooled row %d", b), out.Pooled.Select(0, int64(b)), out.LastHidden.Select(0, int64(b)).Select(0, p))
	}
}

// TestTextModelBadInput checks that bad ids are errors, never crashes.
func TestTextModelBadInput(t *testing.T) {
	testutil.NoLeak(t)
	m := loadTinyText(t, "gelu", testutil.Device(t))
	s := torch.NewScope()
	defer s.Close()
	row := func(n int, v int64) []int64 {
		r := make([]int64, n)
		for i := range r {
			r[i] = v
		}
		return r
	}
	n, v := m.Config.MaxPositionEmbeddings, int64(m.Config.VocabSize)
	n64 := int64(n)
	cases := map[string]*torch.Tensor{
		"id too large":  torch.FromSlice(append(row(n-1, 5), v), 1, n64),
		"negative id":   torch.FromSlice([]int64{v - 2, -1, v - 1}, 1, 3),
		"too long":      torch.FromSlice(row(n+1, 5), 1, n64+1),
		"1-d":           torch.FromSlice(row(n, 5)),
		"3-d":           torch.FromSlice(row(n, 5), 1, 1, n64),
		"empty":         torch.FromSlice([]int64{}, 0, n64),
		"empty length":  torch.FromSlice([]int64{}, 1, 0),
		"float ids":     torch.FromSlice(make([]float32, n), 1, n64),
		"closed tensor": torch.FromSlice(row(n, 5), 1, n64),
		"nil":           nil,
	}
	cases["closed tensor"].Close()
	for name, ids := range cases {
		out, err := m.Encode(ids)
		require.Error(t, err, name)
		require.Nil(t, out, name)
		require.Contains(t, err.Error(), "clip text model", name)
		t.Logf("%s: %v", name, err)
		_, err = m.EncodeHidden(ids)
		require.Error(t, err, name)
	}
	// The panicking Forward reports a *torch.Error for a long input.
	err := torch.Try(func() { m.Forward(torch.FromSlice(row(n+1, 5), 1, n64+1)) })
	require.Error(t, err)
}

// TestTextModelPositionIDs checks that the position_ids buffer of older
// checkpoints is accepted and ignored, and that missing or extra weights
// are reported.
func TestTextModelPositionIDs(t *testing.T) {
	testutil.NoLeak(t)
	cfg, err := LoadTextConfig(testutil.Fixture(t, "sd2/clip_text/gelu/config.json"))
	require.NoError(t, err)
	st, err := nn.OpenSafetensors(testutil.Weights(t, "sd2/clip_text/model.safetensors"))
	require.NoError(t, err)
	defer st.Close()
	src := nn.MapSource{}
	defer src.Close()
	for _, n := range st.Names() {
		w, err := st.Load(n)
		require.NoError(t, err)
		src[n] = torch.Unscope(w)
	}
	src[PositionIDsKey] = torch.Scoped(func() *torch.Tensor {
		n := int64(cfg.MaxPositionEmbeddings)
		return torch.Unscope(torch.Arange(0, float64(n), 1, torch.Int64, torch.CPU).View([]int64{1, n}))
	})
	m, err := TextModelFromSource(src, cfg, torch.Float32, torch.CPU)
	require.NoError(t, err)
	_, ok := m.Params.Tensors[PositionIDsKey]
	require.False(t, ok)
	m.Close()

	// An unexpected key and a missing one are errors naming the keys.
	src["text_model.extra.weight"] = torch.Unscope(torch.Zeros([]int64{2}, torch.Float32, torch.CPU))
	fc := src["text_model.encoder.layers.1.mlp.fc1.bias"]
	delete(src, "text_model.encoder.layers.1.mlp.fc1.bias")
	defer fc.Close()
	_, err = TextModelFromSource(src, cfg, torch.Float32, torch.CPU)
	require.ErrorIs(t, err, nn.ErrWeights)
	require.Contains(t, err.Error(), "text_model.extra.weight")
	require.Contains(t, err.Error(), "text_model.encoder.layers.1.mlp.fc1.bias")
}

// TestLoadTextModel loads a model folder and checks the errors of folders
// without usable weights.
func TestLoadTextModel(t *testing.T) {
	testutil.NoLeak(t)
	dir := t.TempDir()
	cfgData, err := os.ReadFile(testutil.Fixture(t, "sd2/clip_text/quick_gelu/config.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), cfgData, 0o644))

	// No weights at all: the error names the folder and every file looked
	// for; then a pytorch_model.bin that is not a checkpoint.
	_, err = LoadTextModel(dir, torch.Float32, torch.CPU)
	require.ErrorContains(t, err, dir)
	for _, c := range nn.TransformersWeights.Candidates("") {
		require.ErrorContains(t, err, c)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("x"), 0o644))
	_, err = LoadTextModel(dir, torch.Float32, torch.CPU)
	require.ErrorContains(t, err, "pytorch_model.bin")
	require.ErrorContains(t, err, "not a PyTorch zip checkpoint")

	weights, err := filepath.Abs(testutil.Weights(t, "sd2/clip_text/model.safetensors"))
	require.NoError(t, err)
	require.NoError(t, os.Symlink(weights, filepath.Join(dir, TextWeightsFile)))
	m, err := LoadTextModel(dir, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer m.Close()
	require.Equal(t, "quick_gelu", m.Config.HiddenAct)
	require.Equal(t, torch.Float32, m.DType())

	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/clip_text/quick_gelu/io.safetensors"))
	out, err := m.Encode(io["input_ids"])
	require.NoError(t, err)
	defer out.Close()
	testutil.AssertClose(t, "pooler_output", out.Pooled, io["pooler_output"], textAtol, textRtol)
}

// TestTextModelFullSizeKeys builds SD2's full-size text encoder on the meta
// device and checks that it requests exactly the checkpoint's keys and
// shapes, in state-dict order.
func TestTextModelFullSizeKeys(t *testing.T) {
	testutil.NoLeak(t)
	root := testutil.Fixture(t, "sd2/keys/text_encoder")
	cfg, err := LoadTextConfig(filepath.Join(root, "config.json"))
	require.NoError(t, err)
	want := testutil.ReadKeys(t, filepath.Join(root, "keys.json"))
	b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	_, err = NewTextModel(b, cfg)
	require.NoError(t, err)
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	testutil.AssertKeys(t, want, p.Names, b.Requested())
}

func BenchmarkTextModel(b *testing.B) {
	m := loadTinyText(b, "gelu", testutil.Device(b))
	io := testutil.Tensors(b, testutil.Fixture(b, "sd2/clip_text/gelu/io.safetensors"))
	ids := io["input_ids"]
	for b.Loop() {
		func() {
			s := torch.NewScope()
			defer s.Close()
			last, _ := m.Forward(ids)
			last.Sum().Item() // wait for the device
		}()
	}
}
