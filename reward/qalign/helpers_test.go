package qalign

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
)

const folder = "iqa/qalign"

// tokensJSON is the fixture's tokens.json.
type tokensJSON struct {
	SHA256     string    `json:"tokenizer_model_sha256"`
	VocabSize  int       `json:"vocab_size"`
	BOS        int64     `json:"bos_id"`
	EOS        int64     `json:"eos_id"`
	UNK        int64     `json:"unk_id"`
	Prompt     string    `json:"prompt"`
	ImageToken string    `json:"image_token"`
	ImageIndex int64     `json:"image_token_index"`
	InputIDs   []int64   `json:"input_ids"`
	LevelWords []string  `json:"level_words"`
	LevelTok   [][]int64 `json:"level_words_tokenized"`
	LevelIDs   []int64   `json:"level_ids"`
	LevelPcs   []string  `json:"level_pieces"`
	LevelW     []float64 `json:"level_weights"`
	Chunks     []struct {
		Text   string   `json:"text"`
		IDs    []int64  `json:"ids"`
		Pieces []string `json:"pieces"`
	} `json:"chunks"`
}

func readTokens(t testing.TB, f *iqatest.Folder) tokensJSON {
	t.Helper()
	var name string
	f.Field(t, "tokens", &name)
	b, err := os.ReadFile(f.Path(name))
	require.NoError(t, err)
	var tj tokensJSON
	require.NoError(t, json.Unmarshal(b, &tj))
	return tj
}

// fixturePrompt is the prompt of tokens.json (the ids the reference fed
// the model).
func fixturePrompt(tj tokensJSON) Prompt {
	return Prompt{IDs: tj.InputIDs, LevelIDs: tj.LevelIDs, Weights: tj.LevelW}
}

// expected reads io.safetensors, or, in this package's testdata copy, its
// parts io.part<N>.safetensors (the whole file is over the repository's
// size limit; the parts hold the same tensors).
func expected(t testing.TB, f *iqatest.Folder) *iqatest.Expected {
	t.Helper()
	if _, err := os.Stat(f.Path("io.safetensors")); err == nil {
		return f.Expected(t)
	}
	parts, err := filepath.Glob(f.Path("io.part*.safetensors"))
	require.NoError(t, err)
	require.NotEmpty(t, parts, "%s: neither io.safetensors nor its parts", f.Dir)
	sort.Strings(parts)
	e := &iqatest.Expected{Tensors: map[string]*torch.Tensor{}}
	for _, p := range parts {
		for k, v := range testutil.Tensors(t, p) {
			require.NotContains(t, e.Tensors, k, "%s in two parts", k)
			e.Tensors[k] = v
		}
	}
	raw, err := os.ReadFile(f.Path("io.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &e.Meta))
	for k := range e.Meta {
		require.Contains(t, e.Tensors, k, "%s: in io.json, not in the parts", k)
	}
	return e
}

// caseMake is cases.json's recipe of a derived input.
type caseMake struct {
	Op     string   `json:"op"`
	Images []string `json:"images"`
	Dim    int64    `json:"dim"`
}

type caseInfo struct {
	Image       *string   `json:"image"`
	Make        *caseMake `json:"make"`
	SquareSide  int       `json:"square_side"`
	PasteOffset [2]int    `json:"paste_offset_xy"`
	SeqLen      int64     `json:"seq_len"`
}

// input builds a case's (1,3,H,W) image (CPU; the test's cleanup frees it).
func input(t testing.TB, c iqatest.Case, images map[string]*torch.Tensor) (*torch.Tensor, caseInfo) {
	t.Helper()
	var ci caseInfo
	require.NoError(t, json.Unmarshal(c.Raw, &ci))
	var x *torch.Tensor
	switch {
	case ci.Image != nil:
		x = torch.Unscope(images[*ci.Image].Clone())
	case ci.Make != nil:
		var ts []*torch.Tensor
		for _, n := range ci.Make.Images {
			require.Contains(t, images, n)
			ts = append(ts, images[n])
		}
		x = torch.Unscope(torch.Scoped(func() *torch.Tensor {
			switch ci.Make.Op {
			case "mean":
				require.Len(t, ts, 2)
				return ts[0].Add(ts[1]).MulScalar(0.5)
			case "cat":
				return torch.Cat(ts, ci.Make.Dim)
			}
			t.Fatalf("%s: unknown make op %q", c.Name, ci.Make.Op)
			return nil
		}))
	default:
		t.Fatalf("%s: no image and no recipe", c.Name)
	}
	t.Cleanup(x.Close)
	require.Equal(t, c.Shape, x.Shape(), c.Name)
	return x, ci
}

var (
	sharedOnce   sync.Once
	sharedScorer *Scorer
	sharedErr    error
)

// fixtureConfig is the tiny config.json the reference loaded.
func fixtureConfig(t testing.TB, f *iqatest.Folder) Config {
	t.Helper()
	var m struct {
		Config string `json:"config"`
	}
	f.Field(t, "model", &m)
	cfg, err := LoadConfig(f.Path(m.Config))
	require.NoError(t, err)
	return cfg
}

// fixtureProcessor is cases.json's preprocess.processor.
func fixtureProcessor(t testing.TB, f *iqatest.Folder) Processor {
	t.Helper()
	var pre struct {
		Processor json.RawMessage `json:"processor"`
	}
	f.Field(t, "preprocess", &pre)
	p, err := ParseProcessor(pre.Processor)
	require.NoError(t, err)
	return p
}

// scorer is the fixture model (dp2o-init-v1 weights from the manifest),
// built once for the package.
func scorer(t testing.TB, f *iqatest.Folder) *Scorer {
	t.Helper()
	sharedOnce.Do(func() {
		cfg := fixtureConfig(t, f)
		proc := fixtureProcessor(t, f)
		p := fixturePrompt(readTokens(t, f))
		sharedScorer, sharedErr = OpenWith(Options{OpenOptions: reward.OpenOptions{Source: f.Weights(t), Device: testutil.Device(t)},
			Config: &cfg, Prompt: &p, Processor: &proc})
	})
	require.NoError(t, sharedErr)
	return sharedScorer
}

// rgbTensor views HWC bytes as a (H,W,3) uint8 tensor (the test's cleanup
// frees it).
func rgbTensor(t testing.TB, pix []uint8, h, w int) *torch.Tensor {
	t.Helper()
	x := torch.Unscope(torch.FromSlice(pix, int64(h), int64(w), 3))
	t.Cleanup(x.Close)
	return x
}
