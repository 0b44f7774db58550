package t5

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestLoadEncoderBadFiles checks that broken checkpoints give clear errors
// naming the file or the keys, never a crash.
func TestLoadEncoderBadFiles(t *testing.T) {
	testutil.NoLeak(t)
	weights, err := filepath.Abs(tinyWeights(t))
	require.NoError(t, err)

	t.Run("single file", func(t *testing.T) {
		dir := t.TempDir()
		copyConfig(t, dir)
		data, err := os.ReadFile(weights)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, WeightsFile), data, 0o644))
		e, err := LoadEncoder(dir, torch.Float32, torch.CPU)
		require.NoError(t, err)
		e.Close()
	})

	t.Run("truncated shard", func(t *testing.T) {
		dir := t.TempDir()
		copyConfig(t, dir)
		writeSharded(t, dir, weights, 2, nil)
		shard := filepath.Join(dir, "model-00002-of-00002.safetensors")
		st, err := os.Stat(shard)
		require.NoError(t, err)
		require.NoError(t, os.Truncate(shard, st.Size()-100))
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.Error(t, err)
		require.Contains(t, err.Error(), "model-00002-of-00002.safetensors")
		require.Contains(t, err.Error(), "t5 encoder")
		t.Log(err)
		// Cut inside the header too.
		require.NoError(t, os.Truncate(shard, 20))
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "model-00002-of-00002.safetensors")
		t.Log(err)
	})

	t.Run("missing shard", func(t *testing.T) {
		dir := t.TempDir()
		copyConfig(t, dir)
		writeSharded(t, dir, weights, 3, nil)
		require.NoError(t, os.Remove(filepath.Join(dir, "model-00003-of-00003.safetensors")))
		_, err := LoadEncoder(dir, torch.Float32, torch.CPU)
		require.Error(t, err)
		require.Contains(t, err.Error(), "model-00003-of-00003.safetensors")
		t.Log(err)
	})

	t.Run("index names a tensor its shard lacks", func(t *testing.T) {
		dir := t.TempDir()
		copyConfig(t, dir)
		writeSharded(t, dir, weights, 2, nil)
		data, err := os.ReadFile(filepath.Join(dir, IndexFile))
		require.NoError(t, err)
		fixed := strings.Replace(string(data), `"weight_map":{`, `"weight_map":{"encoder.extra.weight":"model-00001-of-00002.safetensors",`, 1)
		require.NotEqual(t, string(data), fixed)
		require.NoError(t, os.WriteFile(filepath.Join(dir, IndexFile), []byte(fixed), 0o644))
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "encoder.extra.weight")
		t.Log(err)
	})

	t.Run("mismatched shapes, missing and unexpected keys", func(t *testing.T) {
		dir := t.TempDir()
		copyConfig(t, dir)
		var dropped, reshaped string
		writeSharded(t, dir, weights, 2, func(m map[string]*torch.Tensor) {
			for k := range m {
				switch {
				case dropped == "" && strings.HasSuffix(k, "layer.1.layer_norm.weight"):
					dropped = k
					m[k].Close()
					delete(m, k)
				case reshaped == "" && strings.HasSuffix(k, "SelfAttention.q.weight"):
					reshaped = k
					old := m[k]
					m[k] = torch.Scoped(func() *torch.Tensor { return old.Narrow(0, 0, old.Size(0)-1).Contiguous() })
					old.Close()
				}
			}
			m["encoder.block.0.layer.0.SelfAttention.q.bias"] = torch.Unscope(torch.Zeros([]int64{3}, torch.Float32, torch.CPU))
		})
		require.NotEmpty(t, dropped)
		require.NotEmpty(t, reshaped)
		_, err := LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorIs(t, err, nn.ErrWeights)
		for _, k := range []string{dropped, reshaped, "encoder.block.0.layer.0.SelfAttention.q.bias"} {
			require.Contains(t, err.Error(), k)
		}
		t.Log(err)
	})

	t.Run("config that does not fit the weights", func(t *testing.T) {
		dir := t.TempDir()
		cfg, err := LoadConfig(testutil.Fixture(t, encoderDir+"/config.json"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"),
			[]byte(`{"d_model": `+strconv.Itoa(cfg.DModel*2)+`, "feed_forward_proj": "gated-gelu"}`), 0o644))
		require.NoError(t, os.Symlink(weights, filepath.Join(dir, WeightsFile)))
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorIs(t, err, nn.ErrWeights)
		require.ErrorContains(t, err, "shape mismatches")
	})

	t.Run("no weights, pytorch_model.bin, bad config", func(t *testing.T) {
		dir := t.TempDir()
		_, err := LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "config.json")
		copyConfig(t, dir)
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "no model.safetensors")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("x"), 0o644))
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "only safetensors")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"num_heads": -1}`), 0o644))
		_, err = LoadEncoder(dir, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "num_heads")
	})
}

// liveBytesSource records, each time a weight is requested, how many bytes
// of tensors are alive.
type liveBytesSource struct {
	nn.Source
	atLoad []int64
}

func (s *liveBytesSource) Load(key string) (*torch.Tensor, error) {
	s.atLoad = append(s.atLoad, torch.LiveBytes())
	return s.Source.Load(key)
}

// TestLoadOneWeightAtATime checks that loading (with a dtype conversion)
// holds one copy of the weights: whenever the next weight is read, the
// live tensors are exactly the weights built so far, in the model's dtype.
func TestLoadOneWeightAtATime(t *testing.T) {
	testutil.NoLeak(t)
	cfg, err := LoadConfig(testutil.Fixture(t, encoderDir+"/config.json"))
	require.NoError(t, err)
	st, err := nn.OpenSafetensors(tinyWeights(t))
	require.NoError(t, err)
	defer st.Close()
	for _, dtype := range []torch.DType{torch.Float32, torch.BFloat16} {
		src := &liveBytesSource{Source: st}
		base := torch.LiveBytes()
		e, p, err := nn.Build(TiedEmbeddings(src), dtype, torch.CPU, func(b *nn.Builder) (*Encoder, error) { return NewEncoder(b, cfg) })
		require.NoError(t, err)
		require.Len(t, src.atLoad, len(p.Names))
		var built int64
		for i, name := range p.Names {
			require.Equal(t, base+built, src.atLoad[i], "%v: live bytes when %s was read", dtype, name)
			w := p.Get(name)
			built += w.Numel() * int64(w.DType().Size())
		}
		require.Equal(t, base+built, torch.LiveBytes())
		require.Equal(t, dtype, e.DType())
		p.Close()
	}
}

// TestDetinitWeights rebuilds the fixture encoder's weights from the
// deterministic-weights rule (the seed of report.json over the keys the
// model asks for) and checks the outputs: the checkpoint is what the rule
// gives, and an encoder built from an in-memory state dict runs.
func TestDetinitWeights(t *testing.T) {
	testutil.NoLeak(t)
	cfg, err := LoadConfig(testutil.Fixture(t, encoderDir+"/config.json"))
	require.NoError(t, err)
	var report struct {
		Seed   *uint64 `json:"seed"`
		Params int64   `json:"params"`
	}
	data, err := os.ReadFile(testutil.Fixture(t, encoderDir+"/report.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &report))
	require.NotNil(t, report.Seed)

	b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	_, err = NewEncoder(b, cfg)
	require.NoError(t, err)
	meta, err := b.Finish()
	require.NoError(t, err)
	defer meta.Close()
	require.Equal(t, report.Params, meta.NumElements())
	manifest := map[string]detinit.Spec{}
	for k, sh := range b.Requested() {
		manifest[k] = detinit.Spec{Shape: sh, DType: torch.Float32}
	}
	src, err := detinit.Build(manifest, *report.Seed, torch.CPU)
	require.NoError(t, err)
	defer src.Close()
	e, err := EncoderFromSource(src, cfg, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer e.Close()

	io := testutil.Tensors(t, testutil.Fixture(t, encoderDir+"/io.safetensors"))
	checked := 0
	for name, c := range encoderCases(io) {
		if c["input_ids"] == nil || c["last_hidden_state"] == nil {
			continue
		}
		got, err := e.Forward(c["input_ids"])
		require.NoError(t, err)
		testutil.AssertClose(t, name+".last_hidden_state", got, c["last_hidden_state"], encAtol, encRtol)
		got.Close()
		checked++
	}
	require.NotZero(t, checked)
}
