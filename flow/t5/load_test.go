package t5

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
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
					m[k] = torch.Unscope(old.Narrow(0, 0, old.Size(0)-1).Contiguous())
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
