package candidates

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/tagger"
	"github.com/dp2osr/dp2o/torch"
)

// paper is the paper's candidate generation per model (SPEC §5): M, steps,
// guidance, and the bundled tiny model as the default.
var paper = map[string]struct {
	m, steps         int
	guidance         float64
	base, controlnet string
}{
	"sd2":  {32, 50, 3.5, "assets/tiny-sd2", "assets/tiny-sd2/controlnet/model.safetensors"},
	"flux": {64, 25, 2.5, "assets/tiny-flux", "assets/tiny-flux/controlnet/model.safetensors"},
}

// Inputs lists the inputs from --input_dir or --lr_dir/--hr_dir.
func Inputs(c *cli.Context) ([]sample.Input, error) {
	switch dir, lr := c.String("input_dir"), c.String("lr_dir"); {
	case dir != "" && lr != "":
		return nil, errors.New("give --input_dir or --lr_dir, not both")
	case dir != "":
		return sample.DataDirInputs(dir)
	case lr != "":
		return sample.ListInputs(lr, c.String("hr_dir"))
	}
	return nil, errors.New("no inputs: give --input_dir (a degrade output folder) or --lr_dir (and --hr_dir)")
}

// Job builds the sampling job that the flags describe, into dir; m is M
// when --num_candidates is 0 (0: the paper's M of the model). The job's
// Open loads the model (and the tagger when prompts come from it); close
// frees the tagger.
func Job(c *cli.Context, dir string, m int) (job sample.Job, close func(), err error) {
	close = func() {}
	model := c.String("model")
	def, ok := paper[model]
	if !ok {
		return job, close, fmt.Errorf("--model %q: want sd2 or flux", model)
	}
	steps, guidance := def.steps, def.guidance
	if m == 0 {
		m = def.m
	}
	if c.Int("num_candidates") != 0 {
		m = c.Int("num_candidates")
	}
	if c.Int("num_inference_steps") != 0 {
		steps = c.Int("num_inference_steps")
	}
	if c.IsSet("guidance_scale") {
		guidance = c.Float64("guidance_scale")
	}
	base, cn := def.base, def.controlnet
	if c.IsSet("pretrained_model_name_or_path") {
		base = c.String("pretrained_model_name_or_path")
	}
	if c.IsSet("controlnet_model_name_or_path") {
		cn = c.String("controlnet_model_name_or_path")
	}
	align, err := colorfix.ParseMethod(c.String("align_method"))
	if err != nil {
		return job, close, fmt.Errorf("--align_method: %w", err)
	}
	switch {
	case m < 1:
		return job, close, fmt.Errorf("--num_candidates must be at least 1, got %d", m)
	case steps < 1:
		return job, close, fmt.Errorf("--num_inference_steps must be at least 1, got %d", steps)
	case c.Int("batch_size") < 1:
		return job, close, fmt.Errorf("--batch_size must be at least 1, got %d", c.Int("batch_size"))
	case c.Int("upscale") < 1:
		return job, close, fmt.Errorf("--upscale must be at least 1, got %d", c.Int("upscale"))
	case c.Int("process_size") < 16:
		return job, close, fmt.Errorf("--process_size must be at least 16, got %d", c.Int("process_size"))
	}
	ins, err := Inputs(c)
	if err != nil {
		return job, close, err
	}
	prompts, source, err := promptSource(c, ins)
	if err != nil {
		return job, close, err
	}
	dev, dtype, err := launch.DeviceAndDType(c.String("device"), c.String("mixed_precision"))
	if err != nil {
		return job, close, err
	}
	if n := c.Int("threads"); n > 0 {
		torch.SetNumThreads(n)
	}
	if !dev.IsCUDA() && torch.NumThreads() > 1 {
		// One goroutine does the work; more Go Ps preempt libtorch's OpenMP workers.
		runtime.GOMAXPROCS(1)
	}
	cfg := sample.Config{
		Format: sample.Format,
		Settings: sample.Settings{Model: model, Base: base, ControlNet: cn, Steps: steps, GuidanceScale: guidance,
			ConditioningScale: c.Float64("control_scale"), ProcessSize: c.Int("process_size"), Upscale: c.Int("upscale"),
			AlignMethod: string(align), DType: dtype.String(), Device: sample.DeviceType(dev), Prompts: source},
		Seeds:     sample.SeedPool(c.Uint64("seed"), m),
		BatchSize: c.Int("batch_size"),
	}
	if model == "sd2" {
		cfg.Settings.NegativePrompt = c.String("negative_prompt")
	} else {
		cfg.Settings.PadTo16 = c.Bool("pad16")
	}
	var tag *tagger.Tagger
	close = func() {
		if tag != nil {
			tag.Close()
			tag = nil
		}
	}
	job = sample.Job{
		Dir: dir, Config: cfg, Inputs: ins, Log: c.App.ErrWriter,
		Open: func() (sample.Sampler, error) {
			if source == "tagger" {
				t, err := tagger.Load(c.String("ram_path"), c.String("dape_path"), tagger.Options{Device: dev})
				if err != nil {
					return nil, fmt.Errorf("tagger: %w", err)
				}
				tag = t
			}
			return sample.Open(cfg.Settings, sample.LoadOptions{Device: dev, DType: dtype, NoAutocast: c.Bool("no_autocast"),
				NumDoubleLayers: c.Int("num_double_layers"), NumSingleLayers: c.Int("num_single_layers")})
		},
		Prompt: func(in sample.Input, lr *imageio.RGB8) (string, error) {
			if tag == nil {
				return prompts[in.ID], nil
			}
			r, err := tag.Tag(lr)
			if err != nil {
				return "", fmt.Errorf("tagger: %w", err)
			}
			return r.Prompt, nil
		},
	}
	return job, close, nil
}

// promptSource gives each input's prompt (--prompt, --prompts) or says
// that the tagger will ("tagger").
func promptSource(c *cli.Context, ins []sample.Input) (map[string]string, string, error) {
	fixed, file, ram := c.String("prompt"), c.String("prompts"), c.String("ram_path")
	n := 0
	for _, s := range []string{fixed, file, ram} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return nil, "", errors.New("give one of --prompt, --prompts and --ram_path")
	}
	out := map[string]string{}
	switch {
	case ram != "":
		return nil, "tagger", nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, "", fmt.Errorf("--prompts: %w", err)
		}
		if err := json.Unmarshal(b, &out); err != nil {
			return nil, "", fmt.Errorf("--prompts %s: want a JSON object {\"name\": \"prompt\"}: %w", file, err)
		}
		var missing []string
		for _, in := range ins {
			if _, ok := out[in.ID]; !ok {
				missing = append(missing, in.ID)
			}
		}
		if len(missing) > 0 {
			return nil, "", fmt.Errorf("--prompts %s has no prompt for %d inputs (%v)", file, len(missing), missing[:min(5, len(missing))])
		}
		return out, "file", nil
	}
	for _, in := range ins {
		out[in.ID] = fixed
	}
	return out, "fixed", nil
}
