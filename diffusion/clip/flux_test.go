package clip

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// fluxCLIPTolerance is the flux/clip_l README's bound for a float32 port.
const fluxCLIPTolerance = 2e-5

// fluxTokenizerDir assembles FLUX's tokenizer/ folder: its own
// tokenizer_config.json and special_tokens_map.json (pad <|endoftext|>)
// with the openai CLIP vocab.json and merges.txt, which the fixture README
// states are byte-equal to the SD2 tokenizer fixture's.
func fluxTokenizerDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []struct{ src, name string }{
		{testutil.Fixture(t, "sd2/clip_tokenizer/vocab.json"), "vocab.json"},
		{testutil.Fixture(t, "sd2/clip_tokenizer/merges.txt"), "merges.txt"},
		{testutil.Fixture(t, "flux/clip_l/tokenizer/tokenizer_config.json"), "tokenizer_config.json"},
		{testutil.Fixture(t, "flux/clip_l/tokenizer/special_tokens_map.json"), "special_tokens_map.json"},
	} {
		data, err := os.ReadFile(f.src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, f.name), data, 0o644))
	}
	return dir
}

// TestFluxCLIPL checks FLUX's first text encoder (CLIP-L, quick_gelu,
// padding with the end token) as this package runs it: the fixture texts
// tokenize to the reference ids, the hidden states match layer by layer,
// and the pooled output FLUX uses is the eos row of last_hidden_state.
func TestFluxCLIPL(t *testing.T) {
	testutil.NoLeak(t)
	root := testutil.Fixture(t, "flux/clip_l")
	var rep struct {
		Texts []string `json:"texts"`
	}
	data, err := os.ReadFile(filepath.Join(root, "report.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &rep))
	io := testutil.Tensors(t, filepath.Join(root, "io.safetensors"))

	tok, err := LoadTokenizer(fluxTokenizerDir(t))
	require.NoError(t, err)
	require.Equal(t, tok.EOS(), tok.PadID(), "FLUX's CLIP tokenizer pads with the end token")
	rows, _ := tok.EncodeBatch(rep.Texts)
	var flat []int64
	for _, r := range rows {
		flat = append(flat, r...)
	}
	ids := torch.FromSlice(flat, int64(len(rows)), int64(tok.MaxLength()))
	defer ids.Close()
	testutil.AssertEqual(t, "input_ids", ids, io["input_ids"])

	m, err := LoadTextModel(root, torch.Float32, testutil.Device(t))
	require.NoError(t, err)
	defer m.Close()
	require.Equal(t, "quick_gelu", m.Config.HiddenAct)
	out, err := m.EncodeHidden(ids)
	require.NoError(t, err)
	defer out.Close()
	pos := m.EOSPositions(ids)
	defer pos.Close()
	testutil.AssertEqual(t, "eos_index", pos, io["eos_index"])
	for i, h := range out.Hidden {
		want, ok := io["hidden_states."+strconv.Itoa(i)]
		require.True(t, ok, "hidden_states.%d missing", i)
		testutil.AssertClose(t, "hidden_states."+strconv.Itoa(i), h, want, fluxCLIPTolerance, 0)
	}
	testutil.AssertClose(t, "last_hidden_state", out.LastHidden, io["last_hidden_state"], fluxCLIPTolerance, 0)
	testutil.AssertClose(t, "pooler_output", out.Pooled, io["pooler_output"], fluxCLIPTolerance, 0)
}

// TestFluxCLIPLFullSizeKeys builds FLUX.1-dev's CLIP-L text encoder from
// its published config on the meta device and checks that it requests
// exactly the published checkpoint's keys and shapes.
func TestFluxCLIPLFullSizeKeys(t *testing.T) {
	testutil.NoLeak(t)
	root := testutil.Fixture(t, "flux/keys/clip_l_text_encoder")
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
