package diffusion

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/hub/hubtest"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// readWeights reads every tensor of a component folder's safetensors file.
func readWeights(t *testing.T, dir string, w nn.WeightFiles) []safetensors.Tensor {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, w.Safetensors))
	require.NoError(t, err)
	defer f.Close()
	var ts []safetensors.Tensor
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		b, err := f.Data(n)
		require.NoError(t, err)
		ts = append(ts, safetensors.Tensor{Name: n, DType: info.DType, Shape: info.Shape, Data: slices.Clone(b)})
	}
	return ts
}

// toFP16 converts the float32 tensors to float16, as
// model.half().save_pretrained(variant="fp16") writes them.
func toFP16(t *testing.T, ts []safetensors.Tensor) []safetensors.Tensor {
	t.Helper()
	s := torch.NewScope()
	defer s.Close()
	out := make([]safetensors.Tensor, len(ts))
	for i, x := range ts {
		out[i] = x
		if x.DType != "F32" {
			continue
		}
		f, err := torch.FromBytes(x.Data, torch.Float32, x.Shape)
		require.NoError(t, err)
		out[i].DType, out[i].Data = "F16", slices.Clone(f.To(torch.Float16).Bytes())
	}
	return out
}

// saveSharded writes ts as two safetensors shards named
// <stem>-0000k-of-00002.safetensors and their index.
func saveSharded(t *testing.T, dir, stem, index string, ts []safetensors.Tensor) {
	t.Helper()
	wm := map[string]string{}
	half := len(ts) / 2
	for k, part := range [][]safetensors.Tensor{ts[:half], ts[half:]} {
		name := fmt.Sprintf("%s-%05d-of-00002.safetensors", stem, k+1)
		require.NoError(t, safetensors.Save(filepath.Join(dir, name), part, nil))
		for _, p := range part {
			wm[p.Name] = name
		}
	}
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": wm})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, index), b, 0o644))
}

// resave rewrites a component folder's weights in one of the layouts
// published folders use; the regular safetensors file stays only where
// the layout keeps it (the fp16 ones, whose folders carry both).
func resave(t *testing.T, dir string, w nn.WeightFiles, layout string) {
	t.Helper()
	ts := readWeights(t, dir, w)
	stem := strings.TrimSuffix(w.Safetensors, ".safetensors")
	single := filepath.Join(dir, w.Safetensors)
	switch layout {
	case "sharded":
		require.NoError(t, os.Remove(single))
		saveSharded(t, dir, stem, w.Safetensors+".index.json", ts)
	case "fp16":
		require.NoError(t, safetensors.Save(filepath.Join(dir, nn.AddVariant(w.Safetensors, "fp16")), toFP16(t, ts), nil))
	case "fp16-sharded":
		saveSharded(t, dir, stem+".fp16", nn.AddVariant(w.Safetensors+".index.json", "fp16"), toFP16(t, ts))
	case "bin":
		require.NoError(t, os.Remove(single))
		var pt []pickle.Tensor
		for _, x := range ts {
			pt = append(pt, pickle.Tensor{Name: x.Name, DType: string(x.DType), Shape: x.Shape, Data: x.Data})
		}
		require.NoError(t, pickle.Save(filepath.Join(dir, w.Pickle), "", pt))
	default:
		t.Fatalf("unknown layout %q", layout)
	}
}

// sameWeights checks that every parameter equals the reference's, rounded
// through float16 when fp16 weights were loaded.
func sameWeights(t *testing.T, what string, got, want *nn.Params, fp16 bool) {
	t.Helper()
	require.Equal(t, want.Names, got.Names, what)
	s := torch.NewScope()
	defer s.Close()
	for _, n := range want.Names {
		w := want.Get(n)
		if fp16 && w.DType() == torch.Float32 {
			w = w.To(torch.Float16).To(torch.Float32)
		}
		testutil.AssertEqual(t, what+"."+n, got.Get(n), w)
	}
}

func TestLoadSD2PublishedFileLayouts(t *testing.T) {
	testutil.NoLeak(t)
	ref, err := LoadSD2(tinyBase, tinyControlNet, LoadOptions{Device: torch.CPU})
	require.NoError(t, err)
	defer ref.Close()
	comps := []struct {
		dir string
		w   nn.WeightFiles
	}{{"text_encoder", nn.TransformersWeights}, {"unet", nn.DiffusersWeights}, {"vae", nn.DiffusersWeights}}

	for _, c := range []struct {
		layout, variant string
		fp16            bool
	}{
		{"sharded", "", false},
		{"bin", "", false},
		{"fp16", "", false}, // the regular files win without --variant
		{"fp16", "fp16", true},
		{"fp16-sharded", "fp16", true},
	} {
		t.Run(c.layout+"/"+c.variant, func(t *testing.T) {
			testutil.NoLeak(t)
			base := copyTree(t, tinyBase)
			for _, comp := range comps {
				resave(t, filepath.Join(base, comp.dir), comp.w, c.layout)
			}
			p, err := LoadSD2(base, filepath.Join(base, "controlnet", "model.safetensors"), LoadOptions{Device: torch.CPU, Variant: c.variant})
			require.NoError(t, err)
			defer p.Close()
			sameWeights(t, "text_encoder", p.TextEncoder.Params, ref.TextEncoder.Params, c.fp16)
			sameWeights(t, "unet", p.UNet.Params, ref.UNet.Params, c.fp16)
			sameWeights(t, "vae", p.VAE.Params, ref.VAE.Params, c.fp16)
		})
	}

	t.Run("variant only where a folder has it", func(t *testing.T) {
		testutil.NoLeak(t)
		base := copyTree(t, tinyBase)
		resave(t, filepath.Join(base, "unet"), nn.DiffusersWeights, "fp16")
		p, err := LoadSD2(base, filepath.Join(base, "controlnet", "model.safetensors"), LoadOptions{Device: torch.CPU, Variant: "fp16"})
		require.NoError(t, err)
		defer p.Close()
		sameWeights(t, "unet", p.UNet.Params, ref.UNet.Params, true)
		sameWeights(t, "vae", p.VAE.Params, ref.VAE.Params, false)
	})

	t.Run("diffusers controlnet folder", func(t *testing.T) {
		testutil.NoLeak(t)
		base := copyTree(t, tinyBase)
		cn := filepath.Join(base, "controlnet")
		require.NoError(t, os.Rename(filepath.Join(cn, "model.safetensors"), filepath.Join(cn, nn.DiffusersWeights.Safetensors)))
		resave(t, cn, nn.DiffusersWeights, "bin")
		p, err := LoadSD2(base, cn, LoadOptions{Device: torch.CPU})
		require.NoError(t, err)
		defer p.Close()
		sameWeights(t, "controlnet", p.ControlNet.Params, ref.ControlNet.Params, false)
	})

	t.Run("no weights names the folder and the files", func(t *testing.T) {
		testutil.NoLeak(t)
		base := copyTree(t, tinyBase)
		require.NoError(t, os.Remove(filepath.Join(base, "vae", nn.DiffusersWeights.Safetensors)))
		_, err := LoadSD2(base, filepath.Join(base, "controlnet", "model.safetensors"), LoadOptions{Device: torch.CPU})
		require.ErrorContains(t, err, filepath.Join(base, "vae"))
		for _, f := range nn.DiffusersWeights.Candidates("") {
			require.ErrorContains(t, err, f)
		}
	})
}

// hubRepo reads a local folder into a fake Hub repository at one commit.
func hubRepo(t *testing.T, dir, commit string, extra map[string][]byte) *hubtest.Repo {
	t.Helper()
	files := map[string][]byte{}
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		files[filepath.ToSlash(rel)] = b
		return err
	}))
	for k, v := range extra {
		files[k] = v
	}
	return &hubtest.Repo{Refs: map[string]string{"main": commit}, Commits: map[string]map[string][]byte{commit: files}}
}

func TestLoadSD2FromModelIDs(t *testing.T) {
	testutil.NoLeak(t)
	ref, err := LoadSD2(tinyBase, tinyControlNet, LoadOptions{Device: torch.CPU})
	require.NoError(t, err)
	defer ref.Close()

	// The base repository as published: besides what the pipeline reads,
	// .bin copies and an fp16 UNet that must not be fetched by default.
	staged := copyTree(t, tinyBase)
	require.NoError(t, os.RemoveAll(filepath.Join(staged, "controlnet")))
	resave(t, filepath.Join(staged, "unet"), nn.DiffusersWeights, "fp16")
	extra := map[string][]byte{
		"unet/diffusion_pytorch_model.bin": []byte("not fetched"),
		"text_encoder/pytorch_model.bin":   []byte("not fetched"),
		"README.md":                        []byte("# tiny"),
	}
	srv := hubtest.New()
	defer srv.Close()
	const baseCommit, cnCommit = "1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"
	srv.AddRepo("org/tiny-sd2", hubRepo(t, staged, baseCommit, extra))
	cnDir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(cnDir, "dp2o-sd2"), 0o755))
	cnBytes, err := os.ReadFile(tinyControlNet)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(cnDir, "dp2o-sd2", "model.safetensors"), cnBytes, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(cnDir, "c-sd2.safetensors"), cnBytes, 0o644))
	srv.AddRepo("org/dp2o-sr", hubRepo(t, cnDir, cnCommit, nil))

	t.Setenv("HF_HOME", t.TempDir())
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_ENDPOINT", srv.URL())
	t.Setenv("HF_HUB_OFFLINE", "")
	c := hub.FromEnv()
	c.Progress = nil

	p, err := LoadSD2("org/tiny-sd2", "org/dp2o-sr/dp2o-sd2/model.safetensors", LoadOptions{Device: torch.CPU, Hub: c})
	require.NoError(t, err)
	sameWeights(t, "unet", p.UNet.Params, ref.UNet.Params, false)
	sameWeights(t, "text_encoder", p.TextEncoder.Params, ref.TextEncoder.Params, false)
	sameWeights(t, "controlnet", p.ControlNet.Params, ref.ControlNet.Params, false)
	p.Close()
	var got []string
	for _, r := range srv.Requests() {
		if r.Method == "GET" && r.Host == "hub" && !strings.HasPrefix(r.Path, "/api/") || r.Host == "cdn" {
			got = append(got, r.Path)
		}
	}
	for _, g := range got {
		require.NotContains(t, g, ".bin", "only the files the pipeline reads are fetched")
		require.NotContains(t, g, "fp16")
		require.NotContains(t, g, "README")
		require.NotContains(t, g, "c-sd2")
	}
	cached, err := os.ReadDir(filepath.Join(c.SnapshotDir("org/dp2o-sr", cnCommit)))
	require.NoError(t, err)
	require.Len(t, cached, 1, "the controlnet repo: only dp2o-sd2/")

	// The fp16 variant: fetched for the UNet (the one folder that has it).
	p, err = LoadSD2("org/tiny-sd2", "org/dp2o-sr/dp2o-sd2/model.safetensors", LoadOptions{Device: torch.CPU, Hub: c, Variant: "fp16"})
	require.NoError(t, err)
	sameWeights(t, "unet", p.UNet.Params, ref.UNet.Params, true)
	sameWeights(t, "vae", p.VAE.Params, ref.VAE.Params, false)
	p.Close()
	srv.Requests()

	// Offline, from the cache alone: no request at all; a file never
	// fetched is a clear error.
	off := *c
	off.Offline = true
	p, err = LoadSD2("org/tiny-sd2", "org/dp2o-sr/dp2o-sd2/model.safetensors", LoadOptions{Device: torch.CPU, Hub: &off})
	require.NoError(t, err)
	p.Close()
	_, err = LoadSD2("org/tiny-sd2", "org/dp2o-sr/c-sd2.safetensors", LoadOptions{Device: torch.CPU, Hub: &off})
	require.ErrorIs(t, err, hub.ErrOffline)
	require.ErrorContains(t, err, "c-sd2.safetensors")
	p, err = LoadSD2("org/tiny-sd2", "org/dp2o-sr/dp2o-sd2/model.safetensors", LoadOptions{Device: torch.CPU, Hub: &off, Revision: baseCommit})
	require.NoError(t, err, "a commit hash resolves offline too")
	p.Close()
	require.NoError(t, os.RemoveAll(filepath.Join(off.SnapshotDir("org/tiny-sd2", baseCommit), "vae")))
	_, err = LoadSD2("org/tiny-sd2", "org/dp2o-sr/dp2o-sd2/model.safetensors", LoadOptions{Device: torch.CPU, Hub: &off})
	require.ErrorIs(t, err, hub.ErrOffline)
	require.ErrorContains(t, err, "vae/")
	require.Empty(t, srv.Requests())

	// Unknown ids and missing files say so.
	_, err = LoadSD2("org/nope", tinyControlNet, LoadOptions{Device: torch.CPU, Hub: c})
	require.ErrorIs(t, err, hub.ErrRepoNotFound)
	require.ErrorContains(t, err, "org/nope")
	_, err = LoadSD2("org/tiny-sd2", "org/dp2o-sr/nope/model.safetensors", LoadOptions{Device: torch.CPU, Hub: c})
	require.ErrorIs(t, err, hub.ErrEntryNotFound)
	require.ErrorContains(t, err, "nope/model.safetensors")
	_, err = LoadSD2("org/tiny-sd2", tinyControlNet, LoadOptions{Device: torch.CPU, Hub: c, Revision: "v9"})
	require.ErrorIs(t, err, hub.ErrRevisionNotFound)
	_, err = LoadSD2(filepath.Join(t.TempDir(), "missing"), tinyControlNet, LoadOptions{Device: torch.CPU, Hub: c})
	require.ErrorContains(t, err, "no such folder")
}
