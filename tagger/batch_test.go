package tagger

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/torch/safetensors"
	"github.com/dp2osr/dp2o/vision/swin"
)

// tinyTagger is a small random-weight tagger of the same structure (two
// stages with a shifted block each, a 2-layer head, 7 tags).
func tinyTagger(t *testing.T) *Tagger {
	t.Helper()
	cfg := Config{
		Vision: swin.Config{ImageSize: 32, PatchSize: 4, InChans: 3, EmbedDim: 8, Depths: []int64{2, 2}, NumHeads: []int64{2, 2},
			WindowSize: 4, MLPRatio: 4, QKVBias: true, PatchNorm: true, LayerNormEps: 1e-5},
		Head:       HeadConfig{HiddenSize: 16, NumAttentionHeads: 2, NumHiddenLayers: 2, IntermediateSize: 32, LayerNormEps: 1e-12, HiddenAct: "gelu", EncoderWidth: 512},
		Tags:       []string{"a", "b", "c", "d", "e", "f", "g"},
		Thresholds: []float32{0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5},
	}
	meta := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	m, err := New(meta, cfg)
	require.NoError(t, err)
	specs := map[string]detinit.Spec{}
	for k, shape := range meta.Requested() {
		specs[k] = detinit.Spec{Shape: shape, DType: torch.Float32}
	}
	m.Close()
	meta.Params().Close()
	src, err := detinit.Build(specs, 1, torch.CPU)
	require.NoError(t, err)
	defer src.Close()
	tg, err := FromSource(src, cfg, torch.CPU)
	require.NoError(t, err)
	return tg
}

// TestBatch: a batch of images gives each image's own logits and tags.
func TestBatch(t *testing.T) {
	testutil.NoLeak(t)
	tg := tinyTagger(t)
	defer tg.Close()
	gen := torch.MustGenerator(torch.CPU, 3)
	size := tg.Config.Vision.ImageSize
	x := torch.Randn([]int64{2, 3, size, size}, gen, torch.Float32, torch.CPU)
	defer x.Close()
	both, err := tg.Logits(x)
	require.NoError(t, err)
	defer both.Close()
	res, err := tg.TagPixels(x)
	require.NoError(t, err)
	require.Len(t, res, 2)
	for i := int64(0); i < 2; i++ {
		xi := x.Narrow(0, i, 1)
		one, err := tg.Logits(xi)
		require.NoError(t, err)
		bi := both.Narrow(0, i, 1)
		testutil.AssertClose(t, "logits", bi, one, 1e-5, 1e-5)
		r, err := tg.TagPixels(xi)
		require.NoError(t, err)
		require.Equal(t, r[0], res[i])
		for _, v := range []*torch.Tensor{xi, one, bi} {
			v.Close()
		}
	}
	// Bad pixels are errors.
	bad := torch.Zeros([]int64{1, 3, size + 4, size}, torch.Float32, torch.CPU)
	defer bad.Close()
	_, err = tg.TagPixels(bad)
	require.Error(t, err)
}

// TestLoadFiles: the same small weights load alike from a .pth in RAM's
// layout (vision_multi names, under 'model') and from a .safetensors, and a
// DAPE .pth merges as MergeDAPE on the tensors does.
func TestLoadFiles(t *testing.T) {
	testutil.NoLeak(t)
	ref := tinyTagger(t)
	defer ref.Close()
	cfg := ref.Config
	dir := t.TempDir()

	var pth []pickle.Tensor
	var st []safetensors.Tensor
	for _, k := range ref.Params().Names {
		p := ref.Params().Get(k)
		name := k
		if rest, ok := strings.CutPrefix(k, "tagging_head."); ok {
			name = "vision_multi." + rest
		}
		pth = append(pth, pickle.Tensor{Name: name, DType: "F32", Shape: p.Shape(), Data: p.Bytes()})
		st = append(st, safetensors.Tensor{Name: k, DType: safetensors.F32, Shape: p.Shape(), Data: p.Bytes()})
	}
	ramPth, ramST := filepath.Join(dir, "ram.pth"), filepath.Join(dir, "ram.safetensors")
	require.NoError(t, pickle.Save(ramPth, "model", pth))
	require.NoError(t, safetensors.Save(ramST, st, nil))

	// A DAPE file with random pairs for every LoRA of the tiny model.
	specs := map[string]detinit.Spec{}
	for _, p := range ref.loraPairs() {
		if !p.needed {
			continue
		}
		w := ref.Params().Get(p.weight)
		groups, rows := int64(1), w.Size(0)
		if p.groups != nil {
			groups, rows = 2, w.Size(0)/3*2
		}
		specs[p.prefix+".lora_A"] = detinit.Spec{Shape: []int64{LoRARank * groups, w.Size(1)}, DType: torch.Float32}
		specs[p.prefix+".lora_B"] = detinit.Spec{Shape: []int64{rows, LoRARank}, DType: torch.Float32}
	}
	lora, err := detinit.Build(specs, 9, torch.CPU)
	require.NoError(t, err)
	defer lora.Close()
	var lt []pickle.Tensor
	for _, k := range lora.Names() {
		lt = append(lt, pickle.Tensor{Name: k, DType: "F32", Shape: lora[k].Shape(), Data: lora[k].Bytes()})
	}
	dapePth := filepath.Join(dir, "DAPE.pth")
	require.NoError(t, pickle.Save(dapePth, "", lt))
	require.NoError(t, ref.MergeDAPE(lora))

	tags := filepath.Join(dir, "tags.txt")
	require.NoError(t, os.WriteFile(tags, []byte(strings.Join(cfg.Tags, "\n")), 0o644))
	thr := filepath.Join(dir, "thr.txt")
	require.NoError(t, os.WriteFile(thr, []byte(strings.Repeat("0.5\n", len(cfg.Tags))), 0o644))
	opts := Options{TagList: tags, Thresholds: thr, Vision: &cfg.Vision, Head: &cfg.Head}

	gen := torch.MustGenerator(torch.CPU, 4)
	x := torch.Randn([]int64{1, 3, cfg.Vision.ImageSize, cfg.Vision.ImageSize}, gen, torch.Float32, torch.CPU)
	defer x.Close()
	want, err := ref.Logits(x)
	require.NoError(t, err)
	defer want.Close()
	for _, ram := range []string{ramPth, ramST} {
		tg, err := Load(ram, dapePth, opts)
		require.NoError(t, err, ram)
		got, err := tg.Logits(x)
		require.NoError(t, err)
		testutil.AssertEqual(t, filepath.Base(ram), got, want)
		got.Close()
		tg.Close()
	}
}
