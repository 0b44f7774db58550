package dist

import (
	"strings"
	"testing"
	"time"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

func TestSingle(t *testing.T) {
	testutil.NoLeak(t)
	g := Single()
	defer g.Close()
	if g.Rank() != 0 || g.WorldSize() != 1 || !g.IsMain() || g.Backend() != "" {
		t.Fatalf("single: rank %d of %d, backend %q", g.Rank(), g.WorldSize(), g.Backend())
	}
	x := torch.FromSlice([]float32{1, 2, 3}, 3)
	defer x.Close()
	for _, op := range []ReduceOp{Sum, Average, Max, Min} {
		if err := g.AllReduce(op, x); err != nil {
			t.Fatalf("%v: %v", op, err)
		}
	}
	if got := x.Float32s(); got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("a group of one changed its tensor: %v", got)
	}
	i := torch.FromSlice([]int64{1}, 1)
	defer i.Close()
	if err := g.AllReduce(Average, i); err == nil {
		t.Errorf("average of an int64 tensor: no error")
	}
	parts, err := g.AllGather(x)
	if err != nil || len(parts) != 1 {
		t.Fatalf("all_gather: %v, %d parts", err, len(parts))
	}
	testutil.AssertEqual(t, "all_gather", parts[0], x)
	parts[0].Close()
	if err := g.Barrier(); err != nil {
		t.Fatal(err)
	}
	if err := g.Broadcast(1, x); err == nil {
		t.Errorf("broadcast from rank 1 of 1: no error")
	}
	if err := g.AllReduce(Sum, nil); err == nil {
		t.Errorf("all_reduce of a nil tensor: no error")
	}
	if _, err := g.StoreGet("k"); err == nil {
		t.Errorf("store of a single group: no error")
	}
	g.Close()
	if err := g.AllReduce(Sum, x); err != ErrClosed {
		t.Errorf("after close: %v, want ErrClosed", err)
	}
}

func TestOptionsFromEnv(t *testing.T) {
	set := func(kv map[string]string) {
		for _, k := range []string{"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
			"DP2O_DIST_BACKEND", "DP2O_DIST_TIMEOUT", "DP2O_DIST_STORE_FILE", "DP2O_DIST_BUCKET_MB", "GLOO_SOCKET_IFNAME",
			"TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"} {
			t.Setenv(k, kv[k])
		}
	}
	set(nil)
	if Launched() {
		t.Fatal("launched without WORLD_SIZE")
	}
	g, err := FromEnv()
	if err != nil || g.WorldSize() != 1 || g.Backend() != "" {
		t.Fatalf("FromEnv without a launcher: %v", err)
	}
	g.Close()

	set(map[string]string{"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.1",
		"MASTER_PORT": "29500", "DP2O_DIST_BACKEND": "gloo", "DP2O_DIST_TIMEOUT": "90s",
		"DP2O_DIST_BUCKET_MB": "50", "GLOO_SOCKET_IFNAME": "eth1,eth2",
		"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "3"})
	o, err := OptionsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	want := Options{Backend: Gloo, Rank: 2, WorldSize: 4, LocalRank: 0, MasterAddr: "10.0.0.1", MasterPort: 29500,
		Timeout: 90 * time.Second, BucketBytes: 50 << 20, GlooInterface: "eth1", LauncherStore: true, StorePrefix: "attempt_3/"}
	if o != want {
		t.Fatalf("options from env:\n got %+v\nwant %+v", o, want)
	}

	bad := map[string]map[string]string{
		"rank missing":   {"WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
		"rank not int":   {"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
		"no master addr": {"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"},
		"no master port": {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "a"},
		"bad timeout":    {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1", "DP2O_DIST_TIMEOUT": "soon"},
		"bad bucket":     {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1", "DP2O_DIST_BUCKET_MB": "-1"},
	}
	for name, env := range bad {
		set(env)
		if _, err := FromEnv(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestNewRejects(t *testing.T) {
	base := Options{Rank: 0, WorldSize: 2, MasterAddr: "127.0.0.1", MasterPort: 1, Timeout: time.Second}
	cases := map[string]func(o *Options){
		"rank outside the world": func(o *Options) { o.Rank = 2 },
		"no world":               func(o *Options) { o.WorldSize = 0 },
		"unknown backend":        func(o *Options) { o.Backend = "mpi" },
		"no rendezvous":          func(o *Options) { o.MasterAddr = "" },
		"port out of range":      func(o *Options) { o.MasterPort = 70000 },
		"negative timeout":       func(o *Options) { o.Timeout = -time.Second },
	}
	for name, edit := range cases {
		o := base
		edit(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// A backend this build lacks is an error at use, naming it.
	for _, b := range []string{Gloo, NCCL} {
		if HasBackend(b) {
			continue
		}
		o := base
		o.Backend = b
		_, err := New(o)
		if err == nil || !strings.Contains(err.Error(), "not available") {
			t.Errorf("%s without the backend: %v", b, err)
		}
	}
}

// TestRendezvousTimeout: a rank whose peers never come fails after the
// timeout instead of waiting forever.
func TestRendezvousTimeout(t *testing.T) {
	requireGloo(t)
	const timeout = 2 * time.Second
	start := time.Now()
	_, err := New(Options{Rank: 1, WorldSize: 2, MasterAddr: "127.0.0.1", MasterPort: testutil.FreePort(t), Timeout: timeout,
		GlooInterface: "lo"})
	took := time.Since(start)
	if err == nil {
		t.Fatal("no error without a store server")
	}
	if took > timeout+10*time.Second {
		t.Fatalf("gave up after %v (timeout %v)", took, timeout)
	}
	t.Logf("after %v: %v", took, err)
}

func TestRange(t *testing.T) {
	for world := 1; world <= 5; world++ {
		for n := 0; n <= 12; n++ {
			next := 0
			for r := range world {
				lo, hi := Range(n, r, world)
				if lo != next || hi < lo {
					t.Fatalf("Range(%d, %d, %d) = [%d, %d), want to start at %d", n, r, world, lo, hi, next)
				}
				if size := hi - lo; size != n/world && size != n/world+1 {
					t.Fatalf("Range(%d, %d, %d): share of %d", n, r, world, size)
				}
				next = hi
			}
			if next != n {
				t.Fatalf("Range(%d, *, %d) covers [0, %d)", n, world, next)
			}
		}
	}
	if lo, hi := Range(5, 3, 3); lo != hi {
		t.Errorf("rank outside the world got [%d, %d)", lo, hi)
	}
	if _, err := Batch(Single(), []int{1, 2, 3}); err != nil {
		t.Errorf("batch in a group of one: %v", err)
	}
	g := &Group{opts: Options{Rank: 1, WorldSize: 2}}
	if _, err := Batch(g, []int{1, 2, 3}); err == nil {
		t.Errorf("a batch of 3 over 2 ranks: no error")
	}
	if b, err := Batch(g, []int{1, 2, 3, 4}); err != nil || len(b) != 2 || b[0] != 3 {
		t.Errorf("rank 1's half of 4: %v, %v", b, err)
	}
}
