package qalign

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// readManifest reads a {key: {"shape": [...]}} manifest in file order.
func readManifest(t *testing.T, path string) testutil.KeyManifest {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var m map[string]struct {
		Shape []int64 `json:"shape"`
	}
	require.NoError(t, json.Unmarshal(data, &m))
	km := testutil.KeyManifest{Shapes: map[string][]int64{}}
	dec := json.NewDecoder(bytes.NewReader(data))
	_, err = dec.Token()
	require.NoError(t, err)
	for dec.More() {
		tok, err := dec.Token()
		require.NoError(t, err)
		k := tok.(string)
		var skip json.RawMessage
		require.NoError(t, dec.Decode(&skip))
		km.Names = append(km.Names, k)
		km.Shapes[k] = m[k].Shape
		n := int64(1)
		for _, d := range m[k].Shape {
			n *= d
		}
		km.NumParams += n
	}
	require.Len(t, km.Names, len(m))
	return km
}

// checkKeys builds cfg on the meta device (nothing allocated) and compares
// the keys and shapes it asks for with the manifest.
func checkKeys(t *testing.T, cfg Config, want testutil.KeyManifest) {
	t.Helper()
	testutil.NoLeak(t)
	b := nn.NewBuilder(nil, torch.Float16, torch.Meta)
	m, err := New(b, cfg)
	require.NoError(t, err)
	defer m.Close()
	defer b.Params().Close()
	p := b.Params()
	for _, x := range p.List() {
		require.Equal(t, torch.DeviceMeta, x.Device().Type)
	}
	testutil.AssertKeys(t, want, p.Names, b.Requested())
	require.Equal(t, want.NumParams, p.NumElements())
}

// TestFullSizeKeys: the published configuration (MPLUGOwl2Config's
// defaults) asks for exactly manifest_full.json.
func TestFullSizeKeys(t *testing.T) {
	f := iqatest.Load(t, folder)
	checkKeys(t, DefaultConfig(), readManifest(t, f.Path("manifest_full.json")))
	// The published sizes parse from an empty config.json too.
	cfg, err := ParseConfig([]byte("{}"))
	require.NoError(t, err)
	require.Equal(t, DefaultConfig(), cfg)
}

// TestFixtureKeys: the tiny config asks for exactly the fixture manifest.
func TestFixtureKeys(t *testing.T) {
	f := iqatest.Load(t, folder)
	checkKeys(t, fixtureConfig(t, f), readManifest(t, f.Path(f.Model.Manifest)))
}

// TestPositionBuffers compares the computed sin-cos buffers with the
// fixture's stored ones, and scores with weights that lack them (and hold
// an ignored rotary buffer).
func TestPositionBuffers(t *testing.T) {
	f := iqatest.Load(t, folder)
	require.NotNil(t, f.Model.Fixed)
	fixed := testutil.Tensors(t, f.Path(*f.Model.Fixed))
	cfg := fixtureConfig(t, f)
	func() {
		testutil.NoLeak(t)
		q, k, err := positionBuffers(cfg.Abstractor, torch.Float32, torch.CPU)
		require.NoError(t, err)
		defer q.Close()
		defer k.Close()
		n := 0
		for name, want := range fixed {
			got := k
			if strings.HasSuffix(name, "q_pos_embed") {
				got = q
			}
			// numpy's float32 power (a SIMD powf) is not correctly
			// rounded: ω differs by an ulp at some indices, which the
			// positions (up to 63) turn into ~2e-6 on sin/cos values ≤ 1.
			testutil.AssertClose(t, name, got, want, 1e-5, 0)
			n++
		}
		require.Positive(t, n)
	}()

	exp := expected(t, f)
	images := f.Images(t)
	src := nn.MapSource{}
	for k, v := range f.Weights(t) {
		if _, ok := fixed[k]; !ok {
			src[k] = v
		}
	}
	// An older checkpoint's rotary buffers are ignored.
	invFreq := torch.Unscope(torch.Ones([]int64{cfg.HiddenSize / cfg.NumAttentionHeads / 2}, torch.Float32, torch.CPU))
	defer invFreq.Close()
	src["model.layers.0.self_attn.rotary_emb.inv_freq"] = invFreq
	tj := readTokens(t, f)
	p := fixturePrompt(tj)
	proc := fixtureProcessor(t, f)
	s, err := OpenWith(Options{OpenOptions: reward.OpenOptions{Source: src, Device: testutil.Device(t)}, Config: &cfg, Prompt: &p, Processor: &proc})
	require.NoError(t, err)
	defer s.Close()
	c := f.Cases[0]
	x, _ := input(t, c, images)
	got, err := s.Score(context.Background(), x, nil)
	require.NoError(t, err)
	exp.CheckScores(t, c.Score, got)
}
