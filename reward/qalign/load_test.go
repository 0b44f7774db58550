package qalign

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// checkpointFormat is how writeFolder stores the weights.
type checkpointFormat struct {
	name   string
	dtype  torch.DType
	shards int
	bin    bool
}

// writeFolder writes a one-align-style checkpoint folder: config.json,
// preprocessor_config.json, the tokenizer when one is available (else the
// returned Options carry the fixture prompt), and the weights of src in
// the given format (shards with a transformers index when shards > 1).
func writeFolder(t *testing.T, f *iqatest.Folder, src nn.MapSource, dir string, cf checkpointFormat) Options {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	var m struct {
		Config string `json:"config"`
	}
	f.Field(t, "model", &m)
	copyFile(t, f.Path(m.Config), filepath.Join(dir, ConfigFile))
	var pre struct {
		Processor json.RawMessage `json:"processor"`
	}
	f.Field(t, "preprocess", &pre)
	require.NoError(t, os.WriteFile(filepath.Join(dir, ProcessorFile), pre.Processor, 0o644))
	var o Options
	if p := tokenizerPath(t, f); p != "" {
		copyFile(t, p, filepath.Join(dir, TokenizerFile))
	} else {
		p := fixturePrompt(readTokens(t, f))
		o.Prompt = &p
	}
	names := src.Names()
	per := (len(names) + cf.shards - 1) / cf.shards
	weightMap := map[string]string{}
	for i := 0; i < cf.shards; i++ {
		lo, hi := i*per, min((i+1)*per, len(names))
		ext := "safetensors"
		base := "model"
		if cf.bin {
			ext, base = "bin", "pytorch_model"
		}
		file := fmt.Sprintf("%s-%05d-of-%05d.%s", base, i+1, cf.shards, ext)
		if cf.shards == 1 {
			file = base + "." + ext
		}
		var sts []safetensors.Tensor
		var pts []pickle.Tensor
		for _, k := range names[lo:hi] {
			weightMap[k] = file
			x := torch.Scoped(func() *torch.Tensor {
				v := src[k]
				if v.DType().IsFloat() {
					v = v.To(cf.dtype)
				}
				return v.Contiguous()
			})
			code := x.DType().SafetensorsCode()
			sts = append(sts, safetensors.Tensor{Name: k, DType: safetensors.DType(code), Shape: x.Shape(), Data: x.Bytes()})
			pts = append(pts, pickle.Tensor{Name: k, DType: code, Shape: x.Shape(), Data: x.Bytes()})
			x.Close()
		}
		path := filepath.Join(dir, file)
		if cf.bin {
			require.NoError(t, pickle.Save(path, "", pts))
		} else {
			require.NoError(t, safetensors.Save(path, sts, map[string]string{"format": "pt"}))
		}
	}
	if cf.shards > 1 {
		idx := "model.safetensors.index.json"
		if cf.bin {
			idx = "pytorch_model.bin.index.json"
		}
		b, err := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, idx), b, 0o644))
	}
	o.Device = testutil.Device(t)
	return o
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o644))
}

// rounded is src with its floating-point tensors rounded through dt (what
// a checkpoint stored in dt holds), as float32.
func rounded(t *testing.T, src nn.MapSource, dt torch.DType) nn.MapSource {
	t.Helper()
	out := nn.MapSource{}
	for k, v := range src {
		out[k] = torch.Unscope(torch.Scoped(func() *torch.Tensor { return v.To(dt).To(torch.Float32) }))
	}
	t.Cleanup(func() { out.Close() })
	return out
}

// TestLoadFolder opens the published layouts (sharded safetensors in
// float16 and bfloat16, sharded and single .bin in float32, a model id
// through the Hugging Face cache) and compares the scores with a scorer
// built from the same weights in memory.
func TestLoadFolder(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := expected(t, f)
	images := f.Images(t)
	src := f.Weights(t)
	c := f.Cases[0]
	x, _ := input(t, c, images)
	cfg := fixtureConfig(t, f)
	p := fixturePrompt(readTokens(t, f))
	proc := fixtureProcessor(t, f)
	score := func(t *testing.T, o Options) []float64 {
		t.Helper()
		s, err := OpenWith(o)
		require.NoError(t, err)
		defer s.Close()
		got, err := s.Score(context.Background(), x, nil)
		require.NoError(t, err)
		return got
	}
	ref := map[torch.DType][]float64{}
	for _, dt := range []torch.DType{torch.Float16, torch.BFloat16, torch.Float32} {
		ref[dt] = score(t, Options{OpenOptions: reward.OpenOptions{Source: rounded(t, src, dt), Device: testutil.Device(t)},
			Config: &cfg, Prompt: &p, Processor: &proc})
	}
	exp.CheckScores(t, c.Score, ref[torch.Float32])
	for _, cf := range []checkpointFormat{
		{"safetensors-f16-sharded", torch.Float16, 3, false},
		{"safetensors-bf16-sharded", torch.BFloat16, 2, false},
		{"safetensors-f32", torch.Float32, 1, false},
		{"bin-f16-sharded", torch.Float16, 3, true},
		{"bin-f32", torch.Float32, 1, true},
	} {
		t.Run(cf.name, func(t *testing.T) {
			testutil.NoLeak(t)
			dir := t.TempDir()
			o := writeFolder(t, f, src, dir, cf)
			o.Weights = dir
			require.Equal(t, ref[cf.dtype], score(t, o))
		})
		if cf.shards == 1 && !cf.bin {
			t.Run(cf.name+" in a folder of checkpoints", func(t *testing.T) {
				testutil.NoLeak(t)
				dir := t.TempDir()
				o := writeFolder(t, f, src, filepath.Join(dir, filepath.Base(ModelID)), cf)
				o.Weights = dir
				require.Equal(t, ref[cf.dtype], score(t, o))
			})
		}
	}
	t.Run("model id", func(t *testing.T) {
		testutil.NoLeak(t)
		cache := t.TempDir()
		commit := "0123456789abcdef0123456789abcdef01234567"
		repo := filepath.Join(cache, hub.RepoFolderName(ModelID))
		require.NoError(t, os.MkdirAll(filepath.Join(repo, "refs"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(repo, "refs", "main"), []byte(commit), 0o644))
		o := writeFolder(t, f, src, filepath.Join(repo, "snapshots", commit), checkpointFormat{"f16", torch.Float16, 2, false})
		t.Setenv("HF_HUB_CACHE", cache)
		t.Setenv("HF_HUB_OFFLINE", "1")
		o.Weights = ModelID
		require.Equal(t, ref[torch.Float16], score(t, o))
		if o.Prompt == nil {
			// The registered metric opens the same folder by model id.
			s, err := reward.Open("qalign", reward.OpenOptions{Weights: ModelID, Device: testutil.Device(t)})
			require.NoError(t, err)
			got, err := s.Score(context.Background(), x, nil)
			require.NoError(t, err)
			require.NoError(t, s.Close())
			require.Equal(t, ref[torch.Float16], got)
		}
	})
}

// TestBadCheckpoints: every broken folder gives an error naming the
// problem, and nothing leaks.
func TestBadCheckpoints(t *testing.T) {
	f := iqatest.Load(t, folder)
	src := f.Weights(t)
	open := func(t *testing.T, o Options) error {
		t.Helper()
		s, err := OpenWith(o)
		if err == nil {
			s.Close()
		}
		return err
	}
	good := func(t *testing.T, cf checkpointFormat) (string, Options) {
		dir := t.TempDir()
		o := writeFolder(t, f, src, dir, cf)
		o.Weights = dir
		require.NoError(t, open(t, o))
		return dir, o
	}
	shardsOf := func(t *testing.T, dir, pattern string) []string {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		require.NoError(t, err)
		sort.Strings(m)
		require.NotEmpty(t, m)
		return m
	}
	t.Run("missing shard", func(t *testing.T) {
		testutil.NoLeak(t)
		for _, cf := range []checkpointFormat{{"st", torch.Float16, 3, false}, {"bin", torch.Float16, 3, true}} {
			dir, o := good(t, cf)
			sh := shardsOf(t, dir, "*-00002-of-*")
			require.NoError(t, os.Remove(sh[0]))
			require.ErrorContains(t, open(t, o), filepath.Base(sh[0]))
		}
	})
	t.Run("truncated shard", func(t *testing.T) {
		testutil.NoLeak(t)
		for _, cf := range []checkpointFormat{{"st", torch.Float16, 3, false}, {"bin", torch.Float16, 3, true}, {"one", torch.Float16, 1, false}} {
			dir, o := good(t, cf)
			pattern := "*-of-*"
			if cf.shards == 1 {
				pattern = "model.safetensors"
			}
			sh := shardsOf(t, dir, pattern)
			last := sh[len(sh)-1]
			st, err := os.Stat(last)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(last, st.Size()/2))
			err = open(t, o)
			require.ErrorContains(t, err, filepath.Base(last), cf.name)
			t.Logf("%s: %v", cf.name, err)
		}
	})
	t.Run("wrong layout", func(t *testing.T) {
		testutil.NoLeak(t)
		renamed := nn.MapSource{}
		for k, v := range src {
			renamed["module."+k] = v
		}
		dir := t.TempDir()
		o := writeFolder(t, f, renamed, dir, checkpointFormat{"st", torch.Float16, 1, false})
		o.Weights = dir
		err := open(t, o)
		require.ErrorIs(t, err, nn.ErrWeights)
		require.ErrorContains(t, err, "missing keys")
		require.ErrorContains(t, err, "unexpected keys")
	})
	t.Run("wrong vocabulary size", func(t *testing.T) {
		testutil.NoLeak(t)
		dir, o := good(t, checkpointFormat{"st", torch.Float16, 1, false})
		var cfg map[string]any
		b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &cfg))
		cfg["vocab_size"] = cfg["vocab_size"].(float64) + 1
		b, err = json.Marshal(cfg)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, ConfigFile), b, 0o644))
		err = open(t, o)
		require.Error(t, err)
		if o.Prompt == nil {
			require.ErrorContains(t, err, "vocabulary") // the tokenizer disagrees first
		} else {
			require.ErrorContains(t, err, "lm_head.weight") // the weights disagree
		}
	})
	t.Run("tokenizer of another kind", func(t *testing.T) {
		testutil.NoLeak(t)
		dir, o := good(t, checkpointFormat{"st", torch.Float16, 1, false})
		o.Prompt = nil
		require.NoError(t, os.WriteFile(filepath.Join(dir, TokenizerFile), []byte(`{"version": "1.0", "model": {"type": "BPE"}}`), 0o644))
		require.ErrorContains(t, open(t, o), TokenizerFile)
		require.NoError(t, os.Remove(filepath.Join(dir, TokenizerFile)))
		require.ErrorContains(t, open(t, o), TokenizerFile)
	})
	t.Run("no weights", func(t *testing.T) {
		testutil.NoLeak(t)
		dir, o := good(t, checkpointFormat{"st", torch.Float16, 1, false})
		require.NoError(t, os.Remove(filepath.Join(dir, "model.safetensors")))
		require.ErrorContains(t, open(t, o), "no weights file")
		o.Weights = ""
		require.ErrorContains(t, open(t, o), "OpenOptions.Weights")
		o.Weights = filepath.Join(dir, ConfigFile)
		require.ErrorContains(t, open(t, o), "not a folder")
		o.Weights = filepath.Join(dir, "absent")
		require.Error(t, open(t, o))
	})
	t.Run("float16 on the CPU", func(t *testing.T) {
		testutil.NoLeak(t)
		cfg := fixtureConfig(t, f)
		p := fixturePrompt(readTokens(t, f))
		err := open(t, Options{OpenOptions: reward.OpenOptions{Source: src, DType: torch.Float16}, Config: &cfg, Prompt: &p})
		require.ErrorContains(t, err, "CPU")
	})
	t.Run("bad prompt", func(t *testing.T) {
		testutil.NoLeak(t)
		cfg := fixtureConfig(t, f)
		p := fixturePrompt(readTokens(t, f))
		p.IDs = append([]int64{cfg.VocabSize}, p.IDs...)
		require.ErrorContains(t, open(t, Options{OpenOptions: reward.OpenOptions{Source: src}, Config: &cfg, Prompt: &p}), "vocabulary")
	})
}

// TestBFloat16CPU: bfloat16 on the CPU runs the same model at bfloat16's
// precision (8 significant bits).
func TestBFloat16CPU(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := expected(t, f)
	images := f.Images(t)
	cfg := fixtureConfig(t, f)
	p := fixturePrompt(readTokens(t, f))
	proc := fixtureProcessor(t, f)
	s, err := OpenWith(Options{OpenOptions: reward.OpenOptions{Source: f.Weights(t), DType: torch.BFloat16},
		Config: &cfg, Prompt: &p, Processor: &proc})
	require.NoError(t, err)
	defer s.Close()
	c := f.Cases[0]
	x, _ := input(t, c, images)
	got, err := s.Score(context.Background(), x, nil)
	require.NoError(t, err)
	want := exp.Tensors[c.Score].Float64s()
	require.Len(t, got, len(want))
	// A bfloat16 score has a spacing of 2⁻⁶ in [2, 4); allow two steps.
	require.InDelta(t, want[0], got[0], 2*math.Ldexp(1, -6))
	t.Logf("bfloat16 %.6f, float32 reference %.6f", got[0], want[0])
}
