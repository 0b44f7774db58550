package transformer

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// controlNetReport is what the tests read from flux/controlnet/report.json:
// the block counts the flat file was made with (it has no config).
type controlNetReport struct {
	NumLayers       int `json:"num_layers"`
	NumSingleLayers int `json:"num_single_layers"`
}

func readControlNetReport(t testing.TB) controlNetReport {
	t.Helper()
	data, err := os.ReadFile(testutil.Fixture(t, "flux/controlnet/report.json"))
	require.NoError(t, err)
	var r controlNetReport
	require.NoError(t, json.Unmarshal(data, &r))
	return r
}

// flatControlNetConfig is the configuration DP²O-SR gives the released flat
// checkpoint: the transformer's, with the ControlNet's block counts.
func flatControlNetConfig(t testing.TB) Config {
	t.Helper()
	tcfg, err := LoadConfig(testutil.Fixture(t, "flux/transformer/config.json"))
	require.NoError(t, err)
	r := readControlNetReport(t)
	return ControlNetConfigFromTransformer(tcfg, r.NumLayers, r.NumSingleLayers)
}

// runControlNet runs cn at every scale of the fixture and returns the
// samples per scale.
func runControlNet(t *testing.T, cn *ControlNet, ref map[string]*torch.Tensor, scales []float64) (blocks, singles [][]*torch.Tensor) {
	t.Helper()
	for i, sc := range scales {
		var b, s []*torch.Tensor
		var err error
		torch.NoGrad(func() { b, s, err = cn.Forward(input(ref), ref["controlnet_cond"], sc) })
		require.NoError(t, err, "scale %d", i)
		t.Cleanup(func() {
			for _, x := range append(b, s...) {
				x.Close()
			}
		})
		blocks = append(blocks, b)
		singles = append(singles, s)
	}
	return blocks, singles
}

func fixtureScales(t *testing.T, ref map[string]*torch.Tensor) []float64 {
	t.Helper()
	sc := ref["conditioning_scales"]
	require.NotNil(t, sc)
	return sc.Float64s()
}

// TestControlNetFixture loads the ControlNet both ways DP²O-SR can have it
// (the save_pretrained folder and the flat state dict with a config derived
// from the transformer's) and checks every intermediate and the samples at
// every conditioning scale; the two give identical outputs.
func TestControlNetFixture(t *testing.T) {
	testutil.NoLeak(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/io.safetensors"))
	scales := fixtureScales(t, ref)
	folder, err := LoadControlNet(testutil.Fixture(t, "flux/controlnet"), torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer folder.Close()
	flat, err := LoadControlNetFile(testutil.Fixture(t, "flux/controlnet/model.safetensors"), flatControlNetConfig(t), torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer flat.Close()

	seen := map[string]bool{"conditioning_scales": true, "controlnet_cond": true}
	markInputs(seen)
	// With a tap: every intermediate (and the full computation).
	rec := newTapRecorder(t)
	folder.Tap = rec.tap
	tb, ts := runControlNet(t, folder, ref, scales[:1])
	folder.Tap = nil
	for k := range rec.compare(t, ref, "inter.", atolFor(controlnetAtol)) {
		seen[k] = true
	}
	// Without: the path that skips what only the taps read.
	fb, fs := runControlNet(t, folder, ref, scales)
	lb, ls := runControlNet(t, flat, ref, scales)
	// Large temporaries computed in small pieces, as at full size.
	withTinyChunks(t)
	pb, ps := runControlNet(t, folder, ref, scales)
	// Attention the other way: libtorch's fused kernels on the CPU (as on CUDA), the math order on CUDA.
	withOtherAttention(t, folder.blocks, folder.singles)
	ub, us := runControlNet(t, folder, ref, scales)
	for j := range tb[0] {
		testutil.AssertClose(t, fmt.Sprintf("tapped run, controlnet_block_samples.%d", j), tb[0][j], fb[0][j], controlnetAtol, 0)
	}
	for j := range ts[0] {
		testutil.AssertClose(t, fmt.Sprintf("tapped run, controlnet_single_block_samples.%d", j), ts[0][j], fs[0][j], controlnetAtol, 0)
	}
	for i := range scales {
		prefix := fmt.Sprintf("scale_%d.", i)
		want := indexed(t, ref, prefix+"controlnet_block_samples.", seen)
		wantS := indexed(t, ref, prefix+"controlnet_single_block_samples.", seen)
		require.Len(t, fb[i], len(want), "block samples: %s", describe(fb[i]))
		require.Len(t, fs[i], len(wantS), "single block samples: %s", describe(fs[i]))
		for j := range want {
			testutil.AssertClose(t, fmt.Sprintf("%scontrolnet_block_samples.%d", prefix, j), fb[i][j], want[j], controlnetAtol, 0)
			testutil.AssertEqual(t, fmt.Sprintf("flat file %scontrolnet_block_samples.%d", prefix, j), lb[i][j], fb[i][j])
			testutil.AssertClose(t, fmt.Sprintf("small pieces %scontrolnet_block_samples.%d", prefix, j), pb[i][j], want[j], controlnetAtol, 0)
			testutil.AssertClose(t, fmt.Sprintf("other attention path %scontrolnet_block_samples.%d", prefix, j), ub[i][j], want[j], controlnetAtol, 0)
		}
		for j := range wantS {
			testutil.AssertClose(t, fmt.Sprintf("%scontrolnet_single_block_samples.%d", prefix, j), fs[i][j], wantS[j], controlnetAtol, 0)
			testutil.AssertEqual(t, fmt.Sprintf("flat file %scontrolnet_single_block_samples.%d", prefix, j), ls[i][j], fs[i][j])
			testutil.AssertClose(t, fmt.Sprintf("small pieces %scontrolnet_single_block_samples.%d", prefix, j), ps[i][j], wantS[j], controlnetAtol, 0)
			testutil.AssertClose(t, fmt.Sprintf("other attention path %scontrolnet_single_block_samples.%d", prefix, j), us[i][j], wantS[j], controlnetAtol, 0)
		}
	}
	requireCovered(t, ref, "", seen)
}

// TestControlNetFromTransformer builds the ControlNet from the fixture
// transformer as from_transformer does and checks it against the fixture
// folder: the same keys and shapes, the copied weights bit-identical to the
// transformer's, the new layers zero (so every sample is zero).
func TestControlNetFromTransformer(t *testing.T) {
	testutil.NoLeak(t)
	f := loadFixtureFlux(t)
	ccfg, err := LoadConfig(testutil.Fixture(t, "flux/controlnet/config.json"))
	require.NoError(t, err)
	cn, err := ControlNetFromTransformer(f, ControlNetOptions{NumLayers: ccfg.NumLayers, NumSingleLayers: ccfg.NumSingleLayers,
		AttentionHeadDim: ccfg.AttentionHeadDim, NumAttentionHeads: ccfg.NumAttentionHeads})
	require.NoError(t, err)
	defer cn.Close()
	require.Equal(t, ccfg, cn.Config)

	want := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/diffusion_pytorch_model.safetensors"))
	fw := map[string]*torch.Tensor{}
	for _, p := range f.Parameters() {
		fw[p.Name] = p.Tensor
	}
	got := map[string]bool{}
	for _, p := range cn.Parameters() {
		got[p.Name] = true
		w, ok := want[p.Name]
		require.True(t, ok, "extra key %s", p.Name)
		require.Equal(t, w.Shape(), p.Tensor.Shape(), p.Name)
		if strings.HasPrefix(p.Name, "controlnet_") {
			z := p.Tensor.ZerosLike()
			testutil.AssertEqual(t, p.Name+" (zero-initialised)", p.Tensor, z)
			z.Close()
			continue
		}
		testutil.AssertEqual(t, p.Name+" (copied)", p.Tensor, fw[p.Name])
		// A copy, not the transformer's tensor: training the ControlNet
		// must not move the transformer.
		before := fw[p.Name].Clone()
		p.Tensor.AddScalar_(1)
		testutil.AssertEqual(t, p.Name+" of the transformer after changing the ControlNet's", fw[p.Name], before)
		p.Tensor.Copy_(before)
		before.Close()
	}
	for k := range want {
		require.True(t, got[k], "missing key %s", k)
	}

	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/io.safetensors"))
	blocks, singles := runControlNet(t, cn, ref, fixtureScales(t, ref)[:1])
	for i, b := range append(blocks[0], singles[0]...) {
		z := b.ZerosLike()
		testutil.AssertEqual(t, fmt.Sprintf("sample %d of a new ControlNet", i), b, z)
		z.Close()
	}

	_, err = ControlNetFromTransformer(f, ControlNetOptions{NumLayers: f.NumLayers() + 1})
	require.ErrorContains(t, err, "blocks")
	_, err = ControlNetFromTransformer(f, ControlNetOptions{NumLayers: 1, AttentionHeadDim: ccfg.AttentionHeadDim * 2,
		NumAttentionHeads: ccfg.NumAttentionHeads, NumSingleLayers: 0})
	require.Error(t, err)
}
