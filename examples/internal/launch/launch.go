// Package launch holds what the example programs share about where they
// run: the --device and --mixed_precision rules, and the shard of the work
// a process takes, by flags or as one rank under torchrun.
package launch

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/dist"
)

// Device resolves a --device flag: cpu, cuda, cuda:N or auto (CUDA when
// libtorch sees a GPU). Under torchrun, auto and cuda mean cuda:$LOCAL_RANK
// (one process per GPU); an explicit cuda:N is taken as given.
func Device(flag string) (torch.Device, error) {
	if flag == "auto" || flag == "cuda" {
		if torch.CUDAAvailable() {
			return torch.CUDA(localRank()), nil
		}
		if flag == "cuda" {
			return torch.CPU, errors.New("--device cuda: libtorch sees no CUDA device")
		}
		return torch.CPU, nil
	}
	d, err := torch.ParseDevice(flag)
	if err != nil {
		return torch.CPU, fmt.Errorf("--device: %w", err)
	}
	if d.IsCUDA() && !torch.CUDAAvailable() {
		return torch.CPU, fmt.Errorf("--device %s: libtorch sees no CUDA device", flag)
	}
	return d, nil
}

// DeviceAndDType resolves --device and --mixed_precision (no, fp16, bf16):
// half precision applies on CUDA only, the CPU runs float32.
func DeviceAndDType(devFlag, mp string) (torch.Device, torch.DType, error) {
	dev, err := Device(devFlag)
	if err != nil {
		return dev, 0, err
	}
	dtype := torch.Float32
	switch mp {
	case "no":
	case "fp16":
		if dev.IsCUDA() {
			dtype = torch.Float16
		}
	case "bf16":
		if dev.IsCUDA() {
			dtype = torch.BFloat16
		}
	default:
		return dev, 0, fmt.Errorf("--mixed_precision must be no, fp16 or bf16, got %q", mp)
	}
	return dev, dtype, nil
}

// localRank is torchrun's LOCAL_RANK (0 outside torchrun).
func localRank() int {
	if !dist.Launched() {
		return 0
	}
	o, err := dist.OptionsFromEnv()
	if err != nil {
		return 0
	}
	return o.LocalRank
}

// ShardFlags are the flags Shard and Wait read; what ends the usage of
// --merge_wait (what rank 0 does once all ranks are done).
func ShardFlags(what string) []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "shard", Value: 0, Usage: "this process's shard, 0 ≤ shard < num_shards (inputs are split by a hash of their name); under torchrun: $RANK"},
		&cli.IntFlag{Name: "num_shards", Value: 1, Usage: "number of processes sharing the inputs; under torchrun: $WORLD_SIZE"},
		&cli.DurationFlag{Name: "merge_wait", Value: 48 * time.Hour, Usage: "under torchrun: how long the ranks that are done wait for the others before rank 0 " + what},
	}
}

// Shard is the part of the inputs this process takes: --shard of
// --num_shards, or under torchrun shard $RANK of $WORLD_SIZE, where the
// ranks also join a c10d group (Gloo: it only ever waits for them, see
// Wait) and the shard flags are refused. g is nil outside torchrun; the
// caller closes it.
func Shard(c *cli.Context) (shard, n int, g *dist.Group, err error) {
	shard, n = c.Int("shard"), c.Int("num_shards")
	if dist.Launched() {
		if c.IsSet("shard") || c.IsSet("num_shards") {
			return 0, 0, nil, errors.New("under torchrun the shard is the rank ($RANK of $WORLD_SIZE): drop --shard and --num_shards")
		}
		o, err := dist.OptionsFromEnv()
		if err != nil {
			return 0, 0, nil, err
		}
		o.Backend = dist.Gloo
		if g, err = dist.New(o); err != nil {
			return 0, 0, nil, fmt.Errorf("joining the other ranks: %w", err)
		}
		shard, n = g.Rank(), g.WorldSize()
	}
	if n < 1 || shard < 0 || shard >= n {
		if g != nil {
			g.Close()
		}
		return 0, 0, nil, fmt.Errorf("--shard %d --num_shards %d: want 0 ≤ shard < num_shards", shard, n)
	}
	return shard, n, g, nil
}

// Wait blocks until every rank of g has reached it (or --merge_wait has
// passed): the ranks that are done wait for the others before rank 0
// gathers their work.
func Wait(c *cli.Context, g *dist.Group) error {
	g.SetTimeout(c.Duration("merge_wait"))
	if err := g.Barrier(); err != nil {
		return fmt.Errorf("waiting for the other ranks: %w", err)
	}
	return nil
}
