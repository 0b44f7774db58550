package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/examples/internal/candidates"
	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/examples/internal/progress"
	"github.com/dp2osr/dp2o/preference/sample"
)

func outputDir(c *cli.Context) (string, error) {
	if d := c.String("output_dir"); d != "" {
		return d, nil
	}
	return "", errors.New("--output_dir is required (the candidate folder)")
}

func runMerge(c *cli.Context) error {
	dir, err := outputDir(c)
	if err != nil {
		return err
	}
	ins, err := candidates.Inputs(c)
	if err != nil {
		return err
	}
	rep, err := sample.Merge(dir, ins)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "merge: %d candidates of %d inputs from %d shard manifests, %d inputs skipped → %s\n",
		rep.Candidates, len(ins)-len(rep.Skipped), rep.Shards, len(rep.Skipped), dir+"/"+sample.ManifestFile)
	return nil
}

func run(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v (see --help)", c.Args().Slice())
	}
	dir, err := outputDir(c)
	if err != nil {
		return err
	}
	onError := c.String("on_error")
	if onError != "fail" && onError != "skip" {
		return fmt.Errorf("--on_error %q: want fail or skip", onError)
	}
	// Under torchrun every rank takes the shard of its rank, and they
	// meet in a c10d group before the merge.
	shard, numShards, g, err := launch.Shard(c)
	if err != nil {
		return err
	}
	if g != nil {
		defer g.Close()
	}
	job, closeJob, err := candidates.Job(c, dir, 0)
	defer closeJob()
	if err != nil {
		return err
	}
	job.Shard, job.NumShards = shard, numShards
	job.SkipBadInputs = onError == "skip"
	bar := progress.New(c, "candidates")
	job.Progress = bar.Update()
	sum, err := sample.Run(c.Context, job)
	bar.Finish()
	if err != nil {
		return err
	}
	m := job.Config.M()
	fmt.Fprintf(c.App.Writer, "sample: shard %d/%d: %d inputs × %d candidates: %d sampled now, %d already there, %d inputs skipped\n",
		job.Shard, job.NumShards, sum.Inputs, m, sum.Sampled, sum.Existing-len(sum.Skipped)*m, len(sum.Skipped))
	if job.NumShards == 1 {
		return runMerge(c)
	}
	if g != nil {
		// Every rank waits until all are done (or one failed); rank 0
		// then merges.
		if err := launch.Wait(c, g); err != nil {
			return fmt.Errorf("before the merge: %w", err)
		}
		if g.IsMain() {
			return runMerge(c)
		}
		return nil
	}
	fmt.Fprintf(c.App.Writer, "sample: when every shard is done: sample merge --output_dir %s (with the same inputs)\n", job.Dir)
	return nil
}
