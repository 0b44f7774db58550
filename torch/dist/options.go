package dist

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dp2osr/dp2o/torch"
)

// Backend names.
const (
	Gloo = "gloo"
	NCCL = "nccl"
)

// DefaultTimeout is the collective and rendezvous timeout when none is
// given: torch.distributed's default of 30 minutes.
const DefaultTimeout = 30 * time.Minute

// DefaultBucketBytes is the bucket size of AverageGradients and
// BroadcastParameters: DistributedDataParallel's bucket_cap_mb of 25.
const DefaultBucketBytes = 25 << 20

// Options says how a process joins its group.
type Options struct {
	// Backend is Gloo or NCCL; empty picks NCCL when Device is a CUDA device
	// and Gloo otherwise.
	Backend string
	// Rank is this process's index in [0, WorldSize).
	Rank int
	// WorldSize is the number of processes.
	WorldSize int
	// LocalRank is the index of this process on its machine; an NCCL group
	// uses CUDA device LocalRank unless Device says otherwise.
	LocalRank int
	// MasterAddr and MasterPort locate the TCP store that rank 0 serves.
	MasterAddr string
	MasterPort int
	// StoreFile, when set, rendezvouses through a file every process can
	// reach (a shared file system) instead of the TCP store. Use a fresh
	// path for each run: c10d removes the file when every rank has closed
	// the group, but a crashed run leaves it, and its keys, behind.
	StoreFile string
	// LauncherStore says the launcher already serves the TCP store at
	// MasterAddr:MasterPort (torchrun's TORCHELASTIC_USE_AGENT_STORE=True),
	// so rank 0 connects to it instead of starting its own.
	LauncherStore bool
	// StorePrefix scopes the group's keys in the store; torchrun's restarts
	// get their own ("attempt_<TORCHELASTIC_RESTART_COUNT>/").
	StorePrefix string
	// Timeout bounds the rendezvous and every collective; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// Device is where the group's collectives run: CPU for Gloo, a CUDA
	// device for NCCL. The zero value means CPU for Gloo and
	// CUDA(LocalRank) for NCCL.
	Device torch.Device
	// GlooInterface (a network interface, like GLOO_SOCKET_IFNAME) or
	// GlooHostname (an address of this machine) choose the network Gloo
	// uses; both empty: the address of the machine's host name.
	GlooInterface string
	GlooHostname  string
	// BucketBytes is the bucket size of AverageGradients and
	// BroadcastParameters; zero means DefaultBucketBytes.
	BucketBytes int64
}

// Launched reports whether the environment holds a launcher's description
// of a group (torchrun sets WORLD_SIZE).
func Launched() bool { return os.Getenv("WORLD_SIZE") != "" }

// OptionsFromEnv reads the variables torchrun sets for each worker — RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, and
// TORCHELASTIC_USE_AGENT_STORE and TORCHELASTIC_RESTART_COUNT where the
// launcher serves the store itself — and these of its own:
// DP2O_DIST_BACKEND (gloo or nccl), DP2O_DIST_TIMEOUT (a Go duration such as
// "10m"), DP2O_DIST_STORE_FILE (file rendezvous), DP2O_DIST_BUCKET_MB, and
// GLOO_SOCKET_IFNAME (the first of its comma-separated interfaces).
// Without WORLD_SIZE it describes a single process (rank 0 of 1).
func OptionsFromEnv() (Options, error) {
	o := Options{WorldSize: 1}
	var err error
	geti := func(name string, dst *int, required bool) {
		v := os.Getenv(name)
		if v == "" {
			if required && err == nil {
				err = fmt.Errorf("dist: %s is not set", name)
			}
			return
		}
		n, e := strconv.Atoi(strings.TrimSpace(v))
		if e != nil && err == nil {
			err = fmt.Errorf("dist: %s=%q is not an integer", name, v)
		}
		*dst = n
	}
	if !Launched() {
		return o, nil
	}
	geti("WORLD_SIZE", &o.WorldSize, true)
	geti("RANK", &o.Rank, true)
	o.LocalRank = o.Rank
	geti("LOCAL_RANK", &o.LocalRank, false)
	o.StoreFile = os.Getenv("DP2O_DIST_STORE_FILE")
	o.LauncherStore = strings.EqualFold(os.Getenv("TORCHELASTIC_USE_AGENT_STORE"), "true")
	if v := os.Getenv("TORCHELASTIC_RESTART_COUNT"); v != "" {
		o.StorePrefix = "attempt_" + v + "/"
	}
	o.MasterAddr = os.Getenv("MASTER_ADDR")
	geti("MASTER_PORT", &o.MasterPort, o.StoreFile == "")
	if o.StoreFile == "" && o.MasterAddr == "" && err == nil {
		err = fmt.Errorf("dist: MASTER_ADDR is not set")
	}
	o.Backend = strings.ToLower(strings.TrimSpace(os.Getenv("DP2O_DIST_BACKEND")))
	if v := os.Getenv("DP2O_DIST_TIMEOUT"); v != "" {
		d, e := time.ParseDuration(v)
		if (e != nil || d <= 0) && err == nil {
			err = fmt.Errorf("dist: DP2O_DIST_TIMEOUT=%q is not a positive duration", v)
		}
		o.Timeout = d
	}
	if v := os.Getenv("DP2O_DIST_BUCKET_MB"); v != "" {
		mb, e := strconv.ParseFloat(v, 64)
		if (e != nil || mb <= 0) && err == nil {
			err = fmt.Errorf("dist: DP2O_DIST_BUCKET_MB=%q is not a positive number", v)
		}
		o.BucketBytes = int64(mb * (1 << 20))
	}
	if v := os.Getenv("GLOO_SOCKET_IFNAME"); v != "" {
		o.GlooInterface = strings.TrimSpace(strings.Split(v, ",")[0])
	}
	if o.Backend == "" && torch.CUDAAvailable() && HasBackend(NCCL) {
		o.Backend = NCCL
	}
	return o, err
}

// resolve validates o and fills its defaults.
func (o Options) resolve() (Options, error) {
	if o.WorldSize < 1 {
		return o, fmt.Errorf("dist: world size %d (want at least 1)", o.WorldSize)
	}
	if o.Rank < 0 || o.Rank >= o.WorldSize {
		return o, fmt.Errorf("dist: rank %d outside a world of %d", o.Rank, o.WorldSize)
	}
	if o.LocalRank < 0 {
		return o, fmt.Errorf("dist: negative local rank %d", o.LocalRank)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Timeout < 0 {
		return o, fmt.Errorf("dist: negative timeout %v", o.Timeout)
	}
	if o.BucketBytes == 0 {
		o.BucketBytes = DefaultBucketBytes
	}
	if o.BucketBytes < 0 {
		return o, fmt.Errorf("dist: negative bucket size %d", o.BucketBytes)
	}
	if o.Backend == "" {
		o.Backend = Gloo
		if o.Device.IsCUDA() {
			o.Backend = NCCL
		}
	}
	switch o.Backend {
	case Gloo:
		if o.Device == (torch.Device{}) {
			o.Device = torch.CPU
		}
	case NCCL:
		if !o.Device.IsCUDA() {
			o.Device = torch.CUDA(o.LocalRank)
		}
		if o.Device.Index < 0 {
			o.Device.Index = o.LocalRank
		}
	default:
		return o, fmt.Errorf("dist: unknown backend %q (want %s or %s)", o.Backend, Gloo, NCCL)
	}
	if o.StoreFile == "" {
		if o.MasterAddr == "" {
			return o, fmt.Errorf("dist: no rendezvous: set MasterAddr and MasterPort, or StoreFile")
		}
		if o.MasterPort <= 0 || o.MasterPort > 65535 {
			return o, fmt.Errorf("dist: master port %d out of range", o.MasterPort)
		}
	}
	return o, nil
}
