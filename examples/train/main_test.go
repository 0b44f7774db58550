package main

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/torch"
)

// The bundled tiny models, seen from this package's folder.
const assets = "../../assets"

func runApp(args ...string) (string, error) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"train"}, args...))
	return out.String(), err
}

// writePairs writes a tiny preference set (groups of one LR image and m
// candidates of size×size, smooth ones rewarded over noisy ones) and its
// pair file; it returns the pair file's path.
func writePairs(t *testing.T, dir string, groups, m, n, size int) string {
	t.Helper()
	var gs []preference.Group
	for g := range groups {
		gr := preference.Group{ID: fmt.Sprint(g), LR: fmt.Sprintf("lr%d.png", g), Prompt: fmt.Sprintf("a toy photo %d", g)}
		lr := imageio.NewRGB8(size/4, size/4)
		for i := range lr.Pix {
			lr.Pix[i] = uint8(i*7 + 31*g)
		}
		if err := imageio.SavePNG(filepath.Join(dir, gr.LR), lr); err != nil {
			t.Fatal(err)
		}
		for c := range m {
			img := imageio.NewRGB8(size, size)
			for i := range img.Pix {
				v := 128 + 90*math.Sin(float64(i+13*g)/11) + float64(c*((i*2654435761)%61-30))
				img.Pix[i] = uint8(max(0, min(255, v)))
			}
			name := fmt.Sprintf("c%d_%d.png", g, c)
			if err := imageio.SavePNG(filepath.Join(dir, name), img); err != nil {
				t.Fatal(err)
			}
			gr.Candidates = append(gr.Candidates, name)
			gr.Reward = append(gr.Reward, 1-float64(c)/float64(m))
		}
		gs = append(gs, gr)
	}
	pf, err := preference.BuildPairs(gs, nil, n)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pairs.json")
	if err := pf.Save(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func logRows(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows[1:]
}

func mustExist(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTrainSD2EndToEnd trains the bundled tiny C-SD2 for a few steps with
// checkpoints, resumes from the latest one, and checks the outputs: the
// CSV log, the curves, the checkpoints, and that the resumed run ends with
// the same ControlNet bytes as an uninterrupted one, which precomputes the
// prompt embeddings and frees the text encoder (--precompute_prompts). The
// trained ControlNet loads in the SR pipeline.
func TestTrainSD2EndToEnd(t *testing.T) {
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writePairs(t, dir, 2, 4, 1, 64)
	common := []string{"--model", "sd2", "--pretrained_model_name_or_path", assets + "/tiny-sd2",
		"--controlnet_model_name_or_path", assets + "/tiny-sd2/controlnet/model.safetensors", "--pairs", pairs,
		"--learning_rate", "1e-4", "--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--seed", "3",
		"--checkpointing_steps", "2", "--device", "cpu"}
	out := filepath.Join(dir, "run")
	msg, err := runApp(append(common, "--output_dir", out, "--max_train_steps", "3")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	if !strings.Contains(msg, "loss") || !strings.Contains(msg, "acc") {
		t.Errorf("the progress output shows no loss/accuracy:\n%s", msg)
	}
	mustExist(t, filepath.Join(out, "checkpoint-2", preference.CheckpointModel), filepath.Join(out, "checkpoint-3", preference.CheckpointOptimizer),
		filepath.Join(out, "checkpoint-3", preference.CheckpointRNG), filepath.Join(out, "checkpoint-3", preference.CheckpointState),
		filepath.Join(out, preference.CheckpointModel))
	if rows := logRows(t, filepath.Join(out, "train_log.csv")); len(rows) != 3 || rows[2][0] != "3" {
		t.Fatalf("log rows %v, want steps 1..3", rows)
	}
	png, err := os.ReadFile(filepath.Join(out, "train_curves.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("train_curves.png: %v", err)
	}

	// Resume to step 4; an uninterrupted run to step 4 ends identical.
	msg, err = runApp(append(common, "--output_dir", out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")...)
	if err != nil || !strings.Contains(msg, "resumed from") {
		t.Fatalf("resume: %v\n%s", err, msg)
	}
	if rows := logRows(t, filepath.Join(out, "train_log.csv")); len(rows) != 4 {
		t.Fatalf("log after resume has %d rows, want 4", len(rows))
	}
	straight := filepath.Join(dir, "straight")
	msg, err = runApp(append(common, "--output_dir", straight, "--max_train_steps", "4", "--no_progress", "--precompute_prompts")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	if !strings.Contains(msg, "text encoders freed") {
		t.Errorf("--precompute_prompts did not report freeing the text encoder:\n%s", msg)
	}
	pf, err := preference.LoadPairs(pairs)
	if err != nil {
		t.Fatal(err)
	}
	if ents, err := filepath.Glob(filepath.Join(straight, "prompt_embeds", "*.safetensors")); err != nil || len(ents) != len(pf.Prompts()) {
		t.Errorf("prompt store: %d embeddings (%v), want one per prompt of the pairs (%d)", len(ents), err, len(pf.Prompts()))
	}
	a, _ := os.ReadFile(filepath.Join(out, preference.CheckpointModel))
	b, _ := os.ReadFile(filepath.Join(straight, preference.CheckpointModel))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatal("the resumed run's ControlNet differs from the uninterrupted run's")
	}

	p, err := diffusion.LoadSD2(assets+"/tiny-sd2", filepath.Join(out, preference.CheckpointModel), diffusion.LoadOptions{Device: torch.CPU, DType: torch.Float32})
	if err != nil {
		t.Fatalf("the SR pipeline does not load the trained ControlNet: %v", err)
	}
	p.Close()
}

// TestTrainFluxEndToEnd trains the bundled tiny C-FLUX two steps, resumes
// with the prompt embeddings precomputed and the text encoders freed, and
// ends with the ControlNet of an uninterrupted run; the trained ControlNet
// loads in the C-FLUX pipeline.
func TestTrainFluxEndToEnd(t *testing.T) {
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writePairs(t, dir, 2, 4, 1, 64)
	common := []string{"--model", "flux", "--pretrained_model_name_or_path", assets + "/tiny-flux",
		"--controlnet_model_name_or_path", assets + "/tiny-flux/controlnet/model.safetensors", "--pairs", pairs,
		"--train_batch_size", "2", "--checkpointing_steps", "1", "--device", "cpu", "--seed", "5", "--no_progress"}
	out := filepath.Join(dir, "run")
	msg, err := runApp(append(common, "--output_dir", out, "--max_train_steps", "2")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	mustExist(t, filepath.Join(out, "checkpoint-1", preference.CheckpointModel), filepath.Join(out, "train_curves.png"))
	if rows := logRows(t, filepath.Join(out, "train_log.csv")); len(rows) != 2 {
		t.Fatalf("log rows %v", rows)
	}
	// Resume to step 3 = an uninterrupted run of 3 steps, bit for bit.
	embeds := filepath.Join(dir, "embeds")
	if msg, err := runApp(append(common, "--output_dir", out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest",
		"--precompute_prompts", "--prompt_embeds_dir", embeds)...); err != nil || !strings.Contains(msg, "text encoders freed") {
		t.Fatalf("resume with --precompute_prompts: %v\n%s", err, msg)
	}
	mustExist(t, filepath.Join(embeds, "encoders.json"))
	straight := filepath.Join(dir, "straight")
	if msg, err := runApp(append(common, "--output_dir", straight, "--max_train_steps", "3")...); err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	a, _ := os.ReadFile(filepath.Join(out, preference.CheckpointModel))
	b, _ := os.ReadFile(filepath.Join(straight, preference.CheckpointModel))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Fatal("the resumed FLUX run's ControlNet differs from the uninterrupted run's")
	}
	o := flow.DefaultLoadOptions()
	o.DType = torch.Float32
	p, err := flow.LoadCFLUX(assets+"/tiny-flux", filepath.Join(out, preference.CheckpointModel), o)
	if err != nil {
		t.Fatalf("the C-FLUX pipeline does not load the trained ControlNet: %v", err)
	}
	p.Close()
}

// TestTrainBadFlags: clear errors for a missing pair file, an unknown
// backbone and a checkpoint that is not one.
func TestTrainBadFlags(t *testing.T) {
	dir := t.TempDir()
	if _, err := runApp("--pairs", filepath.Join(dir, "none.json")); err == nil || !strings.Contains(err.Error(), "none.json") {
		t.Fatalf("missing pair file: %v", err)
	}
	pairs := writePairs(t, dir, 1, 2, 1, 64)
	if _, err := runApp("--pairs", pairs, "--model", "sd3"); err == nil || !strings.Contains(err.Error(), "--model") {
		t.Fatalf("unknown model: %v", err)
	}
	bad := filepath.Join(dir, "checkpoint-9")
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := runApp("--pairs", pairs, "--pretrained_model_name_or_path", assets+"/tiny-sd2",
		"--controlnet_model_name_or_path", assets+"/tiny-sd2/controlnet/model.safetensors", "--device", "cpu",
		"--output_dir", dir, "--resume_from_checkpoint", bad, "--max_train_steps", "1")
	if err == nil || !strings.Contains(err.Error(), preference.CheckpointState) {
		t.Fatalf("empty checkpoint folder: %v", err)
	}
}
