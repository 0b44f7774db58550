package transformer

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestPacking checks the packing helpers bit-exactly against the pipeline's
// (flux/vae io: pack_input, packed, latent_image_ids) and the ids the
// transformer fixture was run with.
func TestPacking(t *testing.T) {
	testutil.NoLeak(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/vae/io.safetensors"))
	s := torch.NewScope()
	defer s.Close()
	z := ref["pack_input"]
	p, err := PackLatents(z)
	require.NoError(t, err)
	defer p.Close()
	testutil.AssertEqual(t, "packed", p.Contiguous(), ref["packed"])
	u, err := UnpackLatents(p, z.Size(2), z.Size(3))
	require.NoError(t, err)
	defer u.Close()
	testutil.AssertEqual(t, "unpacked", u.Contiguous(), z)
	ids, err := ImageIDs(z.Size(2)/2, z.Size(3)/2, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer ids.Close()
	testutil.AssertEqual(t, "latent_image_ids", ids, ref["latent_image_ids"])

	tr := testutil.Tensors(t, testutil.Fixture(t, "flux/transformer/io.safetensors"))
	txt, err := TextIDs(tr["txt_ids"].Size(0), torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer txt.Close()
	testutil.AssertEqual(t, "txt_ids", txt, tr["txt_ids"])
}

// TestSchnellFallsOut builds the fixture transformer without its guidance
// embedder (guidance_embeds false, FLUX.1-schnell's layout): temb is then
// timestep_embedder + text_embedder of the same inputs, and guidance is
// not needed.
func TestSchnellFallsOut(t *testing.T) {
	testutil.NoLeak(t)
	cfg, err := LoadConfig(testutil.Fixture(t, "flux/transformer/config.json"))
	require.NoError(t, err)
	src, err := nn.OpenSafetensors(testutil.Fixture(t, "flux/transformer/"+WeightsFile))
	require.NoError(t, err)
	defer src.Close()
	dev := loadFixtureFlux(t)
	cfg.GuidanceEmbeds = false
	schnell, p, err := nn.Build(src, torch.Float32, torch.CPU, func(b *nn.Builder) (*Flux, error) { return New(b, cfg) }, nn.AllowUnused())
	require.NoError(t, err)
	defer p.Close()
	for _, q := range schnell.Parameters() {
		require.NotContains(t, q.Name, "guidance")
	}

	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/transformer/io.safetensors"))
	rd, rs := newTapRecorder(t), newTapRecorder(t)
	dev.Tap, schnell.Tap = rd.tap, rs.tap
	in := input(ref)
	torch.NoGrad(func() {
		a, err := dev.Forward(in)
		require.NoError(t, err)
		a.Close()
		in.Guidance = nil
		b, err := schnell.Forward(in)
		require.NoError(t, err)
		b.Close()
	})
	dev.Tap = nil
	want := rd.ts["timestep_embedder"].Add(rd.ts["text_embedder"])
	defer want.Close()
	testutil.AssertClose(t, "schnell time_text_embed", rs.ts["time_text_embed"], want, 0, 0)
	require.NotContains(t, rs.ts, "guidance_embedder")
}
