package sample

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

var (
	assets   = filepath.Join("..", "..", "assets")
	sd2Base  = filepath.Join(assets, "tiny-sd2")
	fluxBase = filepath.Join(assets, "tiny-flux")

	sd2Once sync.Once
	sd2P    *diffusion.SD2
	sd2Err  error
)

// tinySD2 loads the bundled tiny C-SD2 once for the package.
func tinySD2(t testing.TB) *diffusion.SD2 {
	t.Helper()
	sd2Once.Do(func() {
		sd2P, sd2Err = diffusion.LoadSD2(sd2Base, filepath.Join(sd2Base, "controlnet", "model.safetensors"), diffusion.LoadOptions{Device: torch.CPU})
	})
	require.NoError(t, sd2Err)
	return sd2P
}

// testOptions: few steps at a small size, the official settings otherwise.
func sd2Options() diffusion.UpscaleOptions {
	o := diffusion.DefaultUpscaleOptions()
	o.Steps = 2
	o.ProcessSize = 64
	o.Upscale = 2
	return o
}

func testConfig(m, batch int) Config {
	o := sd2Options()
	return Config{
		Format: Format,
		Settings: Settings{Model: "sd2", Base: sd2Base, Steps: o.Steps, GuidanceScale: o.GuidanceScale,
			ConditioningScale: o.ConditioningScale, NegativePrompt: o.NegativePrompt, ProcessSize: o.ProcessSize,
			Upscale: o.Upscale, AlignMethod: string(o.AlignMethod), DType: "float32", Device: "cpu", Prompts: "fixed"},
		Seeds:     SeedPool(7, m),
		BatchSize: batch,
	}
}

// makeInputs writes n small LR crops of the bundled sample (and their HR)
// into a temporary folder.
func makeInputs(t testing.TB, dir string, n int) []Input {
	t.Helper()
	src, err := imageio.Load(filepath.Join(assets, "sample", "lr_house.png"))
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "lr"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "hr"), 0o755))
	for i := 0; i < n; i++ {
		crop := imageio.NewRGB8(64, 64)
		for y := 0; y < 64; y++ {
			for x := 0; x < 64; x++ {
				r, g, b := src.At((x+17*i)%src.W, (y+29*i)%src.H)
				crop.Set(x, y, r, g, b)
			}
		}
		name := fmt.Sprintf("img%02d.png", i)
		require.NoError(t, imageio.SavePNG(filepath.Join(dir, "hr", name), crop))
		require.NoError(t, imageio.SavePNG(filepath.Join(dir, "lr", name), imageio.Resize(crop, 32, 32, imageio.Bicubic)))
	}
	ins, err := DataDirInputs(dir)
	require.NoError(t, err)
	require.Len(t, ins, n)
	return ins
}

func sd2Job(t testing.TB, dir string, ins []Input, cfg Config) Job {
	p := tinySD2(t)
	return Job{
		Dir: dir, Config: cfg, Inputs: ins,
		Open:   func() (Sampler, error) { return &SD2{P: p, Opts: sd2Options()}, nil },
		Prompt: func(in Input, _ *imageio.RGB8) (string, error) { return "house, " + in.ID, nil },
	}
}

// fileSums maps every candidate file of a folder to its SHA-256.
func fileSums(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	root := filepath.Join(dir, CandidateDir)
	require.NoError(t, filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		s, err := FileSHA256(p)
		rel, _ := filepath.Rel(root, p)
		out[rel] = s
		return err
	}))
	return out
}

// reference is one uninterrupted, unsharded run, made once.
var (
	refOnce sync.Once
	refRoot string
	refDir  string
	refIns  []Input
)

func reference(t *testing.T) (string, []Input, Config) {
	cfg := testConfig(5, 2)
	refOnce.Do(func() {
		d, err := os.MkdirTemp("", "sample-ref-")
		require.NoError(t, err)
		refRoot = d
		refIns = makeInputs(t, filepath.Join(d, "data"), 3)
		refDir = filepath.Join(d, "candidates")
		sum, err := Run(context.Background(), sd2Job(t, refDir, refIns, cfg))
		require.NoError(t, err)
		require.Equal(t, 3*cfg.M(), sum.Sampled)
		_, err = Merge(refDir, refIns)
		require.NoError(t, err)
	})
	if refDir == "" {
		t.Fatal("reference run failed")
	}
	return refDir, refIns, cfg
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	code := m.Run()
	if refRoot != "" {
		os.RemoveAll(refRoot)
	}
	if sd2P != nil {
		sd2P.Close()
	}
	os.Exit(code)
}

func TestBatchOfOneIsUpscale(t *testing.T) {
	p := tinySD2(t)
	testutil.NoLeak(t)
	lr, err := imageio.Load(filepath.Join(assets, "sample", "lr_house.png"))
	require.NoError(t, err)
	lr = imageio.Resize(lr, 32, 32, imageio.Bicubic)
	o := sd2Options()
	o.Prompt = "house, tree"
	seeds := SeedPool(3, 3)
	s := &SD2{P: p, Opts: o}
	batch, err := s.Candidates(context.Background(), lr, o.Prompt, seeds)
	require.NoError(t, err)
	require.Len(t, batch, len(seeds))
	for i, seed := range seeds {
		want, err := p.Upscale(context.Background(), lr, o, torch.MustGenerator(torch.CPU, seed))
		require.NoError(t, err)
		one, err := s.Candidates(context.Background(), lr, o.Prompt, []uint64{seed})
		require.NoError(t, err)
		require.Equal(t, want.Pix, one[0].Pix, "seed %d: a batch of one is not (*SD2).Upscale", seed)
		assertBatchedLikeSingle(t, seed, batch, i, want.Pix)
	}
}

// assertBatchedLikeSingle checks candidate i of a batch against the same
// seed sampled alone (want). Batching changes only the summation order of
// the models' kernels (libtorch picks them by batch size), which the
// sampler's steps amplify into a level here and there, a few more on
// another libtorch (2.6: one pixel three levels off). So the measure is
// relative to what a wrong candidate looks like: the mean difference must
// stay below 1% of the mean difference to the batch's next candidate (another
// seed), and at most 0.1% of the values may be more than one level off.
func assertBatchedLikeSingle(t *testing.T, seed uint64, batch []*imageio.RGB8, i int, want []uint8) {
	t.Helper()
	got, other := batch[i].Pix, batch[(i+1)%len(batch)].Pix
	require.Len(t, got, len(want))
	var sum, cross float64
	over := 0
	for j := range want {
		d := math.Abs(float64(got[j]) - float64(want[j]))
		sum += d
		if d > 1 {
			over++
		}
		cross += math.Abs(float64(other[j]) - float64(want[j]))
	}
	n := float64(len(want))
	t.Logf("seed %d: batch of %d vs one at a time: max |diff| %d/255, mean %.2g levels (another seed: %.3g), %d values more than one level off",
		seed, len(batch), maxDiff(got, want), sum/n, cross/n, over)
	if len(batch) > 1 {
		require.Less(t, sum, 0.01*cross, "seed %d: the batched candidate is as far from the single one as another seed's", seed)
	}
	require.LessOrEqual(t, float64(over), 0.001*n, "seed %d: batched candidate differs from the single one", seed)
}

func maxDiff(a, b []uint8) int {
	d := 0
	for i := range a {
		v := int(a[i]) - int(b[i])
		if v < 0 {
			v = -v
		}
		d = max(d, v)
	}
	return d
}

func TestFLUXBatchOfOneIsUpscale(t *testing.T) {
	p, err := flow.LoadCFLUX(fluxBase, filepath.Join(fluxBase, "controlnet", "model.safetensors"), flow.LoadOptions{Device: torch.CPU})
	require.NoError(t, err)
	defer p.Close()
	testutil.NoLeak(t)
	lr, err := imageio.Load(filepath.Join(assets, "sample", "lr_house.png"))
	require.NoError(t, err)
	lr = imageio.Resize(lr, 32, 32, imageio.Bicubic)
	o := flow.DefaultUpscaleOptions()
	o.Steps, o.ProcessSize, o.Upscale, o.Prompt = 2, 64, 2, "house"
	s := &FLUX{P: p, Opts: o}
	seeds := SeedPool(11, 2)
	batch, err := s.Candidates(context.Background(), lr, o.Prompt, seeds)
	require.NoError(t, err)
	for i, seed := range seeds {
		want, err := p.Upscale(context.Background(), lr, o, torch.MustGenerator(torch.CPU, seed))
		require.NoError(t, err)
		one, err := s.Candidates(context.Background(), lr, o.Prompt, []uint64{seed})
		require.NoError(t, err)
		require.Equal(t, want.Pix, one[0].Pix, "seed %d: a batch of one is not (*CFLUX).Upscale", seed)
		assertBatchedLikeSingle(t, seed, batch, i, want.Pix)
	}
}

func TestRerunOfFinishedSetDoesNothing(t *testing.T) {
	dir, ins, cfg := reference(t)
	before := fileSums(t, dir)
	j := sd2Job(t, dir, ins, cfg)
	j.Open = func() (Sampler, error) { return nil, errors.New("the model must not be loaded for a finished set") }
	sum, err := Run(context.Background(), j)
	require.NoError(t, err)
	require.Zero(t, sum.Sampled)
	require.Equal(t, sum.Total, sum.Existing)
	require.Equal(t, before, fileSums(t, dir))
}

func TestResumeAfterCancel(t *testing.T) {
	ref, ins, cfg := reference(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	j := sd2Job(t, dir, ins, cfg)
	j.Progress = func(done, total int) {
		if done >= cfg.BatchSize+1 { // cancel in the middle of the run (and of an input)
			cancel()
		}
	}
	_, err := Run(ctx, j)
	require.ErrorIs(t, err, context.Canceled)
	partial := fileSums(t, dir)
	require.NotEmpty(t, partial)
	require.Less(t, len(partial), len(fileSums(t, ref)))

	sum, err := Run(context.Background(), sd2Job(t, dir, ins, cfg))
	require.NoError(t, err)
	require.Positive(t, sum.Existing)
	require.Positive(t, sum.Sampled)
	_, err = Merge(dir, ins)
	require.NoError(t, err)
	require.Equal(t, fileSums(t, ref), fileSums(t, dir))
	assertSameManifest(t, ref, dir)
}

// assertSameManifest compares two merged manifests, record by record.
func assertSameManifest(t *testing.T, a, b string) {
	t.Helper()
	ra, err := ReadManifest(a)
	require.NoError(t, err)
	rb, err := ReadManifest(b)
	require.NoError(t, err)
	require.Equal(t, ra, rb)
}

func TestShardsAndMerge(t *testing.T) {
	ref, ins, cfg := reference(t)
	dir := t.TempDir()
	const n = 2
	for i := 0; i < n; i++ {
		j := sd2Job(t, dir, ins, cfg)
		j.Shard, j.NumShards = i, n
		_, err := Run(context.Background(), j)
		require.NoError(t, err)
		if i == 0 {
			_, err := Merge(dir, ins)
			if len(shardInputs(ins, 0, n)) < len(ins) {
				require.ErrorContains(t, err, "missing", "merging before every shard ran")
			}
		}
	}
	rep, err := Merge(dir, ins)
	require.NoError(t, err)
	require.Equal(t, len(ins)*cfg.M(), rep.Candidates)
	require.Equal(t, fileSums(t, ref), fileSums(t, dir))
	assertSameManifest(t, ref, dir)

	// A candidate recorded twice (by two shards) is caught.
	recs, err := ReadRecords(filepath.Join(dir, ShardManifest(0, n)))
	require.NoError(t, err)
	other := filepath.Join(dir, ShardManifest(1, n))
	w, err := OpenJSONL(other)
	require.NoError(t, err)
	require.NoError(t, w.Append(anys(recs[:1])...))
	require.NoError(t, w.Close())
	_, err = Merge(dir, ins)
	require.ErrorContains(t, err, "more than once")
	require.ErrorContains(t, err, fmt.Sprintf("%s #%d", recs[0].Input, recs[0].Index))
	all, err := ReadRecords(other)
	require.NoError(t, err)
	rewrite(t, other, all[:len(all)-1])
	_, err = Merge(dir, ins)
	require.NoError(t, err)

	// A missing record, and an altered file, are caught.
	rewrite(t, other, all[1:len(all)-1])
	_, err = Merge(dir, ins)
	require.ErrorContains(t, err, "1 candidates missing")
	rewrite(t, other, all[:len(all)-1])
	f := filepath.Join(dir, all[0].File)
	require.NoError(t, os.WriteFile(f, []byte("not the image"), 0o644))
	_, err = Merge(dir, ins)
	require.ErrorContains(t, err, "altered")
}

func shardInputs(ins []Input, i, n int) []Input {
	var out []Input
	for _, in := range ins {
		if ShardOf(in.ID, n) == i {
			out = append(out, in)
		}
	}
	return out
}

func rewrite(t *testing.T, path string, recs []Record) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	w, err := OpenJSONL(path)
	require.NoError(t, err)
	require.NoError(t, w.Append(anys(recs)...))
	require.NoError(t, w.Close())
}

func TestAnotherConfigurationIsRefused(t *testing.T) {
	ref, ins, cfg := reference(t)
	other := cfg
	other.Seeds = SeedPool(100, cfg.M())
	_, err := Run(context.Background(), sd2Job(t, ref, ins, other))
	require.ErrorContains(t, err, "another configuration")
	require.ErrorContains(t, err, "noise pool")

	// A shard manifest of another configuration dropped in a folder.
	dir := t.TempDir()
	require.NoError(t, prepareDir(dir, cfg))
	recs, err := ReadManifest(ref)
	require.NoError(t, err)
	recs[0].Config = other.ID()
	rewrite(t, filepath.Join(dir, ShardManifest(0, 2)), recs[:1])
	_, err = Run(context.Background(), sd2Job(t, dir, ins, cfg))
	require.ErrorContains(t, err, "refusing to mix")
}

func TestBadInputs(t *testing.T) {
	_, ins, cfg := reference(t)
	ins = append([]Input(nil), ins...)
	bad := filepath.Join(t.TempDir(), "broken.png")
	require.NoError(t, os.WriteFile(bad, []byte("\x89PNG\r\n\x1a\nnot really"), 0o644))
	ins = append(ins, Input{ID: "broken", LR: bad})
	sort.Slice(ins, func(i, j int) bool { return ins[i].ID < ins[j].ID })
	cfg.Seeds = cfg.Seeds[:2]

	dir := t.TempDir()
	_, err := Run(context.Background(), sd2Job(t, dir, ins, cfg))
	require.ErrorContains(t, err, "broken")
	require.ErrorContains(t, err, bad)

	dir = t.TempDir()
	j := sd2Job(t, dir, ins, cfg)
	j.SkipBadInputs = true
	var log strings.Builder
	j.Log = &log
	sum, err := Run(context.Background(), j)
	require.NoError(t, err)
	require.Equal(t, []string{"broken"}, sum.Skipped)
	require.Contains(t, log.String(), "skipping input broken")
	rep, err := Merge(dir, ins)
	require.NoError(t, err)
	require.Equal(t, []string{"broken"}, rep.Skipped)
	require.Equal(t, (len(ins)-1)*cfg.M(), rep.Candidates)
	// Skipped inputs stay skipped on a rerun.
	j.Open = func() (Sampler, error) { return nil, errors.New("nothing to do") }
	sum, err = Run(context.Background(), j)
	require.NoError(t, err)
	require.Equal(t, []string{"broken"}, sum.Skipped)

	// Bad arguments.
	_, err = Run(context.Background(), Job{Dir: t.TempDir(), Config: cfg, Inputs: ins, Shard: 2, NumShards: 2})
	require.ErrorContains(t, err, "shard 2 of 2")
	bc := cfg
	bc.Seeds = []uint64{1, 1}
	_, err = Run(context.Background(), Job{Dir: t.TempDir(), Config: bc, Inputs: ins})
	require.ErrorContains(t, err, "twice")
	_, err = (&SD2{}).Candidates(context.Background(), nil, "", []uint64{1})
	require.ErrorContains(t, err, "not loaded")
}
