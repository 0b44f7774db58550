package sample

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// childEnv makes the test binary a sampling process (see child) that the
// kill test SIGKILLs part-way.
const childEnv = "DP2O_SAMPLE_CHILD"

type childArgs struct {
	Dir    string
	Inputs []Input
	Config Config
}

// child runs the job described by $DP2O_SAMPLE_CHILD (JSON).
func child() int {
	var a childArgs
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	p, err := diffusion.LoadSD2(sd2Base, filepath.Join(sd2Base, "controlnet", "model.safetensors"), diffusion.LoadOptions{Device: torch.CPU})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err = Run(context.Background(), Job{Dir: a.Dir, Config: a.Config, Inputs: a.Inputs,
		Open:   func() (Sampler, error) { return &SD2{P: p, Opts: sd2Options()}, nil },
		Prompt: func(in Input, _ *imageio.RGB8) (string, error) { return "house, " + in.ID, nil },
		// A pause after each batch keeps the child from finishing before
		// the parent sees its first record, however loaded the machine.
		Progress: func(done, total int) { time.Sleep(300 * time.Millisecond) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestResumeAfterSIGKILL(t *testing.T) {
	ref, ins, cfg := reference(t)
	dir := t.TempDir()
	args, err := json.Marshal(childArgs{Dir: dir, Inputs: ins, Config: cfg})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(args))
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	// Kill it once the first batch is recorded (it is then in the middle
	// of the next one), or after a while.
	manifest := filepath.Join(dir, ShardManifest(0, 1))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if recs, err := ReadRecords(manifest); err == nil && len(recs) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	recs, err := ReadRecords(manifest)
	require.NoError(t, err)
	require.NotEmpty(t, recs, "the child recorded nothing before it was killed")
	require.Less(t, len(recs), len(ins)*cfg.M(), "the child finished before it was killed")

	_, err = Run(context.Background(), sd2Job(t, dir, ins, cfg))
	require.NoError(t, err)
	_, err = Merge(dir, ins)
	require.NoError(t, err)
	require.Equal(t, fileSums(t, ref), fileSums(t, dir))
	assertSameManifest(t, ref, dir)
	// No temporary file is left behind.
	tmp, err := filepath.Glob(filepath.Join(dir, CandidateDir, "*", ".*"))
	require.NoError(t, err)
	require.Empty(t, tmp)
}
