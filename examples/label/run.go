package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/examples/internal/progress"
	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/reward"
	_ "github.com/dp2osr/dp2o/reward/all" // every metric
	"github.com/dp2osr/dp2o/torch"
)

// opener opens metrics with --weights / --weight, on --device in --dtype.
func opener(c *cli.Context) (func(string) (reward.Scorer, error), torch.Device, error) {
	dev, err := launch.Device(c.String("device"))
	if err != nil {
		return nil, dev, err
	}
	dtype, err := torch.ParseDType(c.String("dtype"))
	if err != nil {
		return nil, dev, fmt.Errorf("--dtype: %w", err)
	}
	overrides := map[string]string{}
	for _, kv := range c.StringSlice("weight") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return nil, dev, fmt.Errorf("--weight %q: want name=path", kv)
		}
		overrides[k] = v
	}
	return func(name string) (reward.Scorer, error) {
		w := c.String("weights")
		if p, ok := overrides[name]; ok {
			w = p
		}
		return reward.Open(name, reward.OpenOptions{Weights: w, Device: dev, DType: dtype})
	}, dev, nil
}

func run(c *cli.Context) error {
	if c.Bool("list") {
		for _, n := range reward.Names() {
			fmt.Fprintln(c.App.Writer, n)
		}
		return nil
	}
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v (see --help)", c.Args().Slice())
	}
	names, err := reward.ExpandNames(c.String("metrics"))
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	// Under torchrun every rank scores the shard of its rank, and they
	// meet in a c10d group before rank 0 writes the labels.
	shard, numShards, g, err := launch.Shard(c)
	if err != nil {
		return err
	}
	if g != nil {
		defer g.Close()
	}
	open, dev, err := opener(c)
	if err != nil {
		return err
	}
	dir := c.String("candidates")
	job := label.Job{Dir: dir, Metrics: names, Open: open, Device: dev, BatchSize: c.Int("batch_size"),
		Shard: shard, NumShards: numShards}
	bar := progress.New(c, "scores (input × metric)")
	job.Progress = bar.Update()
	sum, err := label.Run(c.Context, job)
	bar.Finish()
	if err != nil {
		return err
	}
	if numShards > 1 {
		fmt.Fprintf(c.App.Writer, "label: shard %d/%d: %d inputs × %d metrics: %d scored now, %d already there\n",
			shard, numShards, sum.Inputs, sum.Metrics, sum.Scored, sum.Existing)
		if g == nil {
			fmt.Fprintf(c.App.Writer, "label: when every shard is done: label --candidates %s --metrics %s (no shard flags) writes the labels\n",
				dir, c.String("metrics"))
			return nil
		}
		if err := launch.Wait(c, g); err != nil {
			return fmt.Errorf("before writing the labels: %w", err)
		}
		if !g.IsMain() {
			return nil
		}
		// Rank 0 writes the labels from every shard's scores.
		if sum, err = label.Run(c.Context, label.Job{Dir: dir, Metrics: names, Open: open, Device: dev}); err != nil {
			return err
		}
	}
	l, err := label.Build(dir, names)
	if err != nil {
		return err
	}
	out := c.String("output")
	if out == "" {
		out = filepath.Join(dir, label.LabelsFile)
	}
	if err := l.Save(out); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "label: %d inputs × %d metrics (%s): %d scored now, %d already there → %s\n",
		sum.Inputs, sum.Metrics, strings.Join(names, ", "), sum.Scored, sum.Existing, out)
	return nil
}
