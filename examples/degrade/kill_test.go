package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// runMainEnv makes the test binary act as the degrade program (see TestMain).
const runMainEnv = "DP2O_DEGRADE_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestKilledRunResumes kills the program (SIGKILL) part-way through a
// folder, reruns it, and checks that the result is byte-identical to an
// uninterrupted run.
func TestKilledRunResumes(t *testing.T) {
	hr := t.TempDir()
	const n = 40
	for i := 0; i < n; i++ {
		writePNG(t, filepath.Join(hr, fmt.Sprintf("im%02d.png", i)), 48, 44, i)
	}
	ref, killed := filepath.Join(t.TempDir(), "ref"), filepath.Join(t.TempDir(), "killed")
	args := func(out string) []string {
		return []string{"--hr_dir", hr, "--output_dir", out, "--gt_size", "32", "--seed", "11", "--quiet"}
	}
	if msg, err := runApp(context.Background(), args(ref)...); err != nil {
		t.Fatalf("%v: %s", err, msg)
	}

	cmd := exec.Command(os.Args[0], args(killed)...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		es, _ := os.ReadDir(filepath.Join(killed, "records"))
		if len(es) >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	es, _ := os.ReadDir(filepath.Join(killed, "records"))
	t.Logf("killed after %d of %d records", len(es), n)

	if msg, err := runApp(context.Background(), args(killed)...); err != nil {
		t.Fatalf("resume: %v: %s", err, msg)
	}
	want, got := digest(t, ref), digest(t, killed)
	if len(got) != len(want) {
		t.Fatalf("resumed run has %d files, uninterrupted %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s differs between the killed-and-resumed run and the uninterrupted one", k)
		}
	}
}
