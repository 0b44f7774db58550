package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/dist"
	"github.com/dp2osr/dp2o/torch/optim"
)

// Bundled tiny models (run from the repository root).
var defaults = map[string][2]string{
	preference.KindSD2:  {"assets/tiny-sd2", "assets/tiny-sd2/controlnet/model.safetensors"},
	preference.KindFlux: {"assets/tiny-flux", "assets/tiny-flux/controlnet/model.safetensors"},
}

// session is what a run holds: the models, the backbone, the trainer and
// the data; close frees them.
type session struct {
	bb     preference.Backbone
	tr     *preference.Trainer
	loader *preference.Loader
	// reducer, under torchrun with --grad_sync overlap, all-reduces the
	// gradients while the backward pass runs.
	reducer *dist.Reducer
	// zero, under torchrun with --shard_optimizer, holds this rank's share
	// of the AdamW state (the trainer's optimizer).
	zero *dist.ShardedOptimizer
	// text are the text encoders' weights (one list per encoder) and free
	// closes them, once the prompts are precomputed.
	text struct {
		params [][]optim.Param
		free   func()
	}
	closes []func()
}

func (s *session) close() {
	for i := len(s.closes) - 1; i >= 0; i-- {
		s.closes[i]()
	}
}

func trainConfig(c *cli.Context) preference.TrainConfig {
	cfg := preference.DefaultTrainConfig()
	cfg.Beta = c.Float64("beta_dpo")
	cfg.AdamW = optim.AdamWConfig{LR: c.Float64("learning_rate"), Beta1: c.Float64("adam_beta1"), Beta2: c.Float64("adam_beta2"),
		Eps: c.Float64("adam_epsilon"), WeightDecay: c.Float64("adam_weight_decay")}
	cfg.MaxGradNorm = c.Float64("max_grad_norm")
	cfg.GradAccum = c.Int("gradient_accumulation_steps")
	cfg.Schedule = optim.ScheduleConfig{Name: c.String("lr_scheduler"), WarmupSteps: c.Int("lr_warmup_steps"), TotalSteps: c.Int("max_train_steps")}
	cfg.MixedPrecision = c.String("mixed_precision")
	cfg.GradientCheckpointing = c.Bool("gradient_checkpointing")
	return cfg
}

// configBeside reads a config.json next to a ControlNet checkpoint, if any.
func configBeside(path string) (string, bool) {
	p := filepath.Join(filepath.Dir(path), "config.json")
	_, err := os.Stat(p)
	return p, err == nil
}

func loadSD2(s *session, base, cnPath string, dev torch.Device, dtype torch.DType) (preference.DataConfig, error) {
	p, err := diffusion.LoadSD2(base, cnPath, diffusion.LoadOptions{Device: dev, DType: dtype, NoAutocast: true})
	if err != nil {
		return preference.DataConfig{}, err
	}
	s.closes = append(s.closes, p.Close)
	if p.ControlNet.Parameters()[0].Tensor.DType() != torch.Float32 {
		// The trained ControlNet keeps float32 master weights.
		var cfg *unet.ControlNetConfig
		if cp, ok := configBeside(cnPath); ok {
			c, err := unet.LoadControlNetConfig(cp)
			if err != nil {
				return preference.DataConfig{}, err
			}
			cfg = &c
		}
		cn, err := unet.LoadControlNetFileFromUNet(p.UNet.Config, cfg, cnPath, torch.Float32, dev)
		if err != nil {
			return preference.DataConfig{}, err
		}
		p.ControlNet.Close()
		p.ControlNet = cn
	}
	ddpm, err := scheduler.NewDDPM(p.Scheduler)
	if err != nil {
		return preference.DataConfig{}, err
	}
	s.closes = append(s.closes, ddpm.Close)
	bb, err := preference.NewSD2Backbone(p.UNet, p.ControlNet, ddpm)
	if err != nil {
		return preference.DataConfig{}, err
	}
	s.bb = bb
	s.closes = append(s.closes, bb.Close)
	s.text.params = [][]optim.Param{optim.Named(p.TextEncoder.Params)}
	s.text.free = func() {
		p.TextEncoder.Close()
		p.TextEncoder = nil
	}
	return preference.SD2Data(p)
}

func loadFlux(s *session, c *cli.Context, base, cnPath string, dev torch.Device, dtype torch.DType) (preference.DataConfig, error) {
	o := flow.DefaultLoadOptions()
	o.Device, o.DType, o.NoAutocast = dev, dtype, true
	o.NumDoubleLayers, o.NumSingleLayers = c.Int("num_double_layers"), c.Int("num_single_layers")
	p, err := flow.LoadCFLUX(base, cnPath, o)
	if err != nil {
		return preference.DataConfig{}, err
	}
	s.closes = append(s.closes, p.Close)
	if p.ControlNet.Parameters()[0].Tensor.DType() != torch.Float32 {
		cfg := transformer.ControlNetConfigFromTransformer(p.Transformer.Config, o.NumDoubleLayers, o.NumSingleLayers)
		if cp, ok := configBeside(cnPath); ok {
			if cfg, err = transformer.LoadConfig(cp); err != nil {
				return preference.DataConfig{}, err
			}
		}
		cn, err := transformer.LoadControlNetFile(cnPath, cfg, torch.Float32, dev)
		if err != nil {
			return preference.DataConfig{}, err
		}
		p.ControlNet.Close()
		p.ControlNet = cn
	}
	bb, err := preference.NewFluxBackbone(p.Transformer, p.ControlNet)
	if err != nil {
		return preference.DataConfig{}, err
	}
	bb.Guidance = c.Float64("guidance_scale")
	s.bb = bb
	s.closes = append(s.closes, bb.Close)
	s.text.params = [][]optim.Param{optim.Named(p.TextEncoder.Params), optim.Named(p.TextEncoder2.Params)}
	s.text.free = func() {
		p.TextEncoder.Close()
		p.TextEncoder2.Close()
		p.TextEncoder, p.TextEncoder2 = nil, nil
	}
	return preference.FluxData(p)
}

// precomputePrompts encodes every prompt of the pair file into the prompt
// store (--prompt_embeds_dir; each rank a share, the others' awaited),
// frees the text encoders and returns the store's reader.
func precomputePrompts(c *cli.Context, s *session, g *dist.Group, kind string, pf *preference.PairFile, enc preference.PromptEncoder) (preference.PromptEncoder, error) {
	dir := c.String("prompt_embeds_dir")
	if dir == "" {
		dir = filepath.Join(c.String("output_dir"), "prompt_embeds")
	}
	prompts := pf.Prompts()
	st, err := preference.OpenPromptStore(dir, kind, s.text.params...)
	n := 0
	if err == nil {
		n, err = st.Fill(prompts, enc, g.Rank(), g.WorldSize())
	}
	// Every rank says whether its share failed (one all-reduce, which also
	// waits for the others' shares), so that all stop together.
	anyFailed, gerr := g.Any(err != nil)
	switch {
	case err != nil:
		return nil, err
	case gerr != nil:
		return nil, fmt.Errorf("waiting for the other ranks' prompt embeddings: %w", gerr)
	case anyFailed:
		return nil, errors.New("another rank failed to precompute its share of the prompt embeddings")
	}
	if miss := st.Missing(prompts); len(miss) > 0 {
		return nil, fmt.Errorf("prompt store %s lacks %d of %d prompts after precomputing them (first %q)", dir, len(miss), len(prompts), miss[0])
	}
	s.text.free()
	if g.IsMain() {
		fmt.Fprintf(errWriter(c), "prompt embeddings: %d prompts in %s (%d encoded by rank 0); text encoders freed\n", len(prompts), dir, n)
	}
	return st.Encoder(), nil
}

// cacheBytes reads a cache bound in MiB: -1 (or any negative) is no
// bound, 0 caches nothing beyond the batch at hand.
func cacheBytes(c *cli.Context, flag string) (int64, error) {
	mb := c.Int64(flag)
	switch {
	case mb < 0:
		return -1, nil
	case mb == 0:
		return 1, nil // DataConfig's 0 is the default; 1 byte keeps nothing
	case mb > math.MaxInt64>>20:
		return 0, fmt.Errorf("--%s %d is too large", flag, mb)
	}
	return mb << 20, nil
}

// policyTensors are the trained ControlNet's weights in the optimizer's
// order (the same list on every rank).
func policyTensors(ps []optim.Param) []*torch.Tensor {
	ts := make([]*torch.Tensor, len(ps))
	for i, p := range ps {
		ts[i] = p.Tensor
	}
	return ts
}

// setup loads the models and the data and, with --resume_from_checkpoint,
// restores a checkpoint. Under torchrun (g of several ranks) every rank
// does the same, then takes rank 0's ControlNet weights, reads its share of
// each global batch of --train_batch_size × world pairs and averages the
// gradients before clipping.
func setup(c *cli.Context, g *dist.Group) (s *session, err error) {
	kind := c.String("model")
	d, ok := defaults[kind]
	if !ok {
		return nil, fmt.Errorf("--model must be sd2 or flux, got %q", kind)
	}
	base, cnPath := c.String("pretrained_model_name_or_path"), c.String("controlnet_model_name_or_path")
	if base == "" {
		base = d[0]
	}
	if cnPath == "" {
		cnPath = d[1]
	}
	if c.Int("train_batch_size") < 1 || c.Int("gradient_accumulation_steps") < 1 || c.Int("max_train_steps") < 1 || c.Int("checkpointing_steps") < 1 {
		return nil, errors.New("--train_batch_size, --gradient_accumulation_steps, --max_train_steps and --checkpointing_steps must be at least 1")
	}
	dev, dtype, err := launch.DeviceAndDType(c.String("device"), c.String("mixed_precision"))
	if err != nil {
		return nil, err
	}
	pf, err := preference.LoadPairs(c.String("pairs"))
	if err != nil {
		return nil, err
	}
	s = &session{}
	owned := s // the error returns set s to nil
	defer func() {
		if err != nil {
			owned.close()
		}
	}()
	var dc preference.DataConfig
	if kind == preference.KindSD2 {
		dc, err = loadSD2(s, base, cnPath, dev, dtype)
	} else {
		dc, err = loadFlux(s, c, base, cnPath, dev, dtype)
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s (%s, ControlNet %s): %w", kind, base, cnPath, err)
	}
	// The text encoders go (with --precompute_prompts) before the trainer
	// copies the reference into the autocast dtype.
	if c.Bool("precompute_prompts") {
		if dc.EncodePrompt, err = precomputePrompts(c, s, g, kind, pf, dc.EncodePrompt); err != nil {
			return nil, err
		}
	}
	if s.tr, err = preference.NewTrainer(s.bb, trainConfig(c)); err != nil {
		return nil, err
	}
	if cp, ok := configBeside(cnPath); ok {
		// Checkpoints carry the ControlNet's config.json, so that the
		// pipelines build the same layout from them.
		b, err := os.ReadFile(cp)
		if err != nil {
			return nil, err
		}
		s.tr.CheckpointFiles = map[string][]byte{"config.json": b}
	}
	s.closes = append(s.closes, s.tr.Close)
	world := g.WorldSize()
	if dc.LatentCacheBytes, err = cacheBytes(c, "latent_cache_mb"); err != nil {
		return nil, err
	}
	if dc.PromptCacheBytes, err = cacheBytes(c, "prompt_cache_mb"); err != nil {
		return nil, err
	}
	if s.loader, err = preference.NewLoader(dc, pf, filepath.Dir(c.String("pairs")), c.Int("train_batch_size")*world, c.Uint64("seed")); err != nil {
		return nil, err
	}
	s.closes = append(s.closes, s.loader.Close)
	if world > 1 {
		if err = s.loader.SetShard(g.Rank(), world); err != nil {
			return nil, err
		}
		reduced := policyTensors(s.bb.PolicyParams())
		switch mode := c.String("grad_sync"); mode {
		case "overlap":
			// DDP's way: each bucket's all-reduce starts as soon as the
			// backward pass has produced its gradients.
			red, err := g.NewReducer(reduced)
			if err != nil {
				return nil, fmt.Errorf("setting up the gradient reducer: %w", err)
			}
			s.closes = append(s.closes, func() { red.Close() })
			s.tr.Sync, s.reducer = red, red
		case "after":
			s.tr.Sync = g.NewAverager(policyTensors(s.bb.PolicyParams()))
		default:
			return nil, fmt.Errorf("--grad_sync must be overlap or after, got %q", mode)
		}
		shardGrads := c.Bool("shard_gradients")
		if shardGrads && s.reducer == nil {
			return nil, errors.New("--shard_gradients needs --grad_sync overlap (the gradients are reduced to their owners while the backward pass runs)")
		}
		if c.Bool("shard_optimizer") || shardGrads {
			err = s.tr.SetOptimizer(func(ps []optim.Param, cfg optim.AdamWConfig) (optim.Optimizer, error) {
				return g.NewShardedOptimizer(ps, func(mine []optim.Param) (optim.Optimizer, error) { return optim.NewAdamW(mine, cfg) })
			})
			if err != nil {
				return nil, fmt.Errorf("sharding the optimizer: %w", err)
			}
			s.zero = s.tr.Opt.(*dist.ShardedOptimizer)
		}
		if shardGrads {
			// Each gradient goes to the rank that updates its weight.
			for i, p := range s.zero.Params() {
				if p.Tensor != reduced[i] {
					return nil, fmt.Errorf("--shard_gradients: the optimizer's parameter %d (%s) is not the reducer's", i, p.Name)
				}
			}
			if err := s.reducer.ShardGradients(s.zero.Owners()); err != nil {
				return nil, fmt.Errorf("sharding the gradients: %w", err)
			}
		}
	}
	if r := c.String("resume_from_checkpoint"); r != "" {
		dir := r
		if r == "latest" {
			if dir, err = preference.LatestCheckpoint(c.String("output_dir")); err != nil {
				return nil, err
			}
		}
		if dir == "" {
			fmt.Fprintf(c.App.ErrWriter, "no checkpoint under %s: starting a new run\n", c.String("output_dir"))
		} else if err = s.tr.LoadCheckpoint(dir, s.loader); err != nil {
			return nil, err
		} else {
			fmt.Fprintf(c.App.ErrWriter, "resumed from %s at step %d\n", dir, s.tr.StepsDone)
		}
	}
	if world > 1 {
		if err = g.BroadcastParameters(policyTensors(s.bb.PolicyParams())); err != nil {
			return nil, fmt.Errorf("broadcasting the ControlNet from rank 0: %w", err)
		}
	}
	return s, nil
}

func run(c *cli.Context) (err error) {
	// Under torchrun: one rank of WORLD_SIZE; otherwise a group of one
	// whose collectives do nothing.
	g, err := dist.FromEnv()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := g.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	s, err := setup(c, g)
	if err != nil {
		return err
	}
	defer s.close()
	// Rank 0 alone writes the checkpoints, the log, the curves and the
	// final model, and shows the progress.
	isMain, world := g.IsMain(), g.WorldSize()
	out := c.String("output_dir")
	var log *trainLog
	logPath := filepath.Join(out, "train_log.csv")
	if isMain {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		if log, err = openLog(logPath, s.tr.StepsDone); err != nil {
			return err
		}
		defer log.Close()
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt)
	defer stop()

	maxSteps, every := c.Int("max_train_steps"), c.Int("checkpointing_steps")
	var bar *progressbar.ProgressBar
	if isMain && !c.Bool("no_progress") {
		bar = progressbar.NewOptions(maxSteps, progressbar.OptionSetDescription("dpo"), progressbar.OptionShowCount(),
			progressbar.OptionSetWriter(errWriter(c)), progressbar.OptionSetPredictTime(true))
		bar.Set(s.tr.StepsDone)
	}
	save := func() error {
		if s.zero != nil {
			// Rank 0 gathers the whole optimizer state, to write it.
			if err := s.zero.Consolidate(); err != nil {
				return fmt.Errorf("checkpoint %d: %w", s.tr.StepsDone, err)
			}
		}
		var saveErr error
		if isMain {
			dir := filepath.Join(out, fmt.Sprintf("checkpoint-%d", s.tr.StepsDone))
			saveErr = s.tr.SaveCheckpoint(dir, s.loader)
		}
		if world > 1 {
			// No rank runs ahead of a checkpoint it might resume from, and
			// one rank 0 could not write (a full disk) stops every rank
			// now rather than at the next collective's timeout.
			anyFailed, err := g.Any(saveErr != nil)
			if err != nil {
				return errors.Join(saveErr, fmt.Errorf("after checkpoint %d: %w", s.tr.StepsDone, err))
			}
			if saveErr == nil && anyFailed {
				return fmt.Errorf("checkpoint %d: rank 0 could not write it", s.tr.StepsDone)
			}
		}
		return saveErr
	}
	pairsPerStep := c.Int("train_batch_size") * c.Int("gradient_accumulation_steps") * world
	for s.tr.StepsDone < maxSteps {
		interrupted := ctx.Err() != nil
		if world > 1 {
			// The ranks stop together: one interrupted rank stops them all.
			var err error
			if interrupted, err = g.Any(interrupted); err != nil {
				return err
			}
		}
		if interrupted {
			if err := save(); err != nil {
				return err
			}
			cause := ctx.Err()
			if cause == nil { // another rank was interrupted
				cause = context.Canceled
			}
			return fmt.Errorf("interrupted at step %d (checkpoint saved): %w", s.tr.StepsDone, cause)
		}
		start := time.Now()
		st, err := step(s)
		if err != nil {
			return err
		}
		if world > 1 {
			// The global batch's numbers: the ranks' shares are equal, and
			// their losses carry the weight scale (Batch.LossScale).
			v, err := g.AllReduceFloat64s(dist.Average, st.Loss, st.Accuracy, st.ModelMargin, st.RefMargin, st.RewardMargin)
			if err != nil {
				return err
			}
			st.Loss, st.Accuracy, st.ModelMargin, st.RefMargin, st.RewardMargin = v[0], v[1], v[2], v[3], v[4]
		}
		rate := float64(pairsPerStep) / time.Since(start).Seconds()
		if isMain {
			if err := log.write(st, rate); err != nil {
				return err
			}
		}
		if bar != nil {
			bar.Describe(fmt.Sprintf("loss %.4f acc %.2f", st.Loss, st.Accuracy))
			bar.Set(s.tr.StepsDone)
		}
		if s.tr.StepsDone%every == 0 || s.tr.StepsDone == maxSteps {
			if err := save(); err != nil {
				return err
			}
		}
	}
	if !isMain {
		return nil
	}
	if bar != nil {
		bar.Finish()
		fmt.Fprintln(errWriter(c))
	}
	if s.reducer != nil {
		fmt.Fprintf(errWriter(c), "gradient sync: %d buckets, %d started before the last backward pass ended",
			s.reducer.Buckets(), s.reducer.StartedInBackward())
		if c.Bool("shard_gradients") {
			fmt.Fprintf(errWriter(c), "; gradients sharded, at most %d bucket buffers at once in the last step", s.reducer.PeakBuffers())
		}
		fmt.Fprintln(errWriter(c))
	}
	lat, pr := s.loader.CacheStats()
	for _, x := range []struct {
		what string
		st   preference.CacheStats
	}{{"VAE posteriors", lat}, {"prompt embeddings", pr}} {
		fmt.Fprintf(errWriter(c), "cache of %s: %d entries, %.1f MiB; %d hits, %d misses, %d evicted\n",
			x.what, x.st.Entries, float64(x.st.Bytes)/(1<<20), x.st.Hits, x.st.Misses, x.st.Evictions)
	}
	if err := preference.SavePolicy(filepath.Join(out, preference.CheckpointModel), s.bb.PolicyParams()); err != nil {
		return err
	}
	for name, b := range s.tr.CheckpointFiles {
		if err := preference.WriteFileAtomic(filepath.Join(out, name), b); err != nil {
			return err
		}
	}
	if err := log.Close(); err != nil {
		return err
	}
	if err := plotLog(logPath, filepath.Join(out, "train_curves.png")); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "trained %d steps; ControlNet: %s; log: %s\n", s.tr.StepsDone, filepath.Join(out, preference.CheckpointModel), logPath)
	return nil
}

func errWriter(c *cli.Context) io.Writer {
	if c.App.ErrWriter != nil {
		return c.App.ErrWriter
	}
	return os.Stderr
}

// step draws GradAccum batches and takes one optimizer step.
func step(s *session) (*preference.StepStats, error) {
	var bs []*preference.Batch
	defer func() {
		for _, b := range bs {
			b.Close()
		}
	}()
	for range s.tr.Config.GradAccum {
		b, err := s.loader.Next()
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	return s.tr.Step(bs)
}
