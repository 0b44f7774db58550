package flow

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/hub/hubtest"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// repoOf reads the files of a local folder tree (following symlinks) into
// a fake Hub repository at one commit, with extra files added.
func repoOf(t *testing.T, dir, commit string, extra map[string][]byte) *hubtest.Repo {
	t.Helper()
	files := map[string][]byte{}
	var walk func(d, rel string)
	walk = func(d, rel string) {
		es, err := os.ReadDir(d)
		require.NoError(t, err)
		for _, e := range es {
			p := filepath.Join(d, e.Name())
			st, err := os.Stat(p)
			require.NoError(t, err)
			r := filepath.ToSlash(filepath.Join(rel, e.Name()))
			if st.IsDir() {
				walk(p, r)
				continue
			}
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			files[r] = b
		}
	}
	walk(dir, "")
	for k, v := range extra {
		files[k] = v
	}
	return &hubtest.Repo{Refs: map[string]string{"main": commit}, Commits: map[string]map[string][]byte{commit: files}}
}

// TestLoadFromModelIDs loads the pipeline from a FLUX.1-layout model id
// and a ControlNet file inside another repository on a stand-in Hub: only
// the pipeline's files are fetched (not the root checkpoints FLUX.1-dev
// also publishes), the cache then serves offline, and unknown ids are
// clear errors.
func TestLoadFromModelIDs(t *testing.T) {
	testutil.NoLeak(t)
	cc := loadTiny(t, torch.CPU).ControlNet.Config
	base, cn := fullFluxFolder(t)
	extra := map[string][]byte{
		"flux1-dev.safetensors": []byte("not fetched"),
		"ae.safetensors":        []byte("not fetched"),
		"README.md":             []byte("# tiny"),
	}
	srv := hubtest.New()
	defer srv.Close()
	const baseCommit, cnCommit = "3333333333333333333333333333333333333333", "4444444444444444444444444444444444444444"
	srv.AddRepo("org/tiny-flux", repoOf(t, base, baseCommit, extra))
	cnDir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(cnDir, "dp2o-flux"), 0o755))
	cnBytes, err := os.ReadFile(cn)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(cnDir, "dp2o-flux", "model.safetensors"), cnBytes, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(cnDir, "c-flux.safetensors"), cnBytes, 0o644))
	srv.AddRepo("org/dp2o-sr", repoOf(t, cnDir, cnCommit, nil))

	t.Setenv("HF_HOME", t.TempDir())
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_ENDPOINT", srv.URL())
	t.Setenv("HF_HUB_OFFLINE", "")
	c := hub.FromEnv()
	c.Progress = nil
	o := LoadOptions{Device: torch.CPU, DType: torch.Float32, NumDoubleLayers: cc.NumLayers, NumSingleLayers: cc.NumSingleLayers, Hub: c}

	p, err := LoadCFLUX("org/tiny-flux", "org/dp2o-sr/dp2o-flux/model.safetensors", o)
	require.NoError(t, err)
	require.NotNil(t, p.TextEncoder2)
	p.Close()
	for _, r := range srv.Requests() {
		if r.Host == "cdn" || r.Method == "GET" && !strings.HasPrefix(r.Path, "/api/") {
			// The root README (a fixture folder's own README.md, copied
			// into a model folder, may be fetched with it).
			for _, skip := range []string{"flux1-dev", "ae.safetensors", baseCommit + "/README.md", "c-flux"} {
				require.NotContains(t, r.Path, skip, "only the pipeline's files are fetched")
			}
		}
	}

	// Offline, from the cache alone.
	off := *c
	off.Offline = true
	o.Hub = &off
	p, err = LoadCFLUX("org/tiny-flux", "org/dp2o-sr/dp2o-flux/model.safetensors", o)
	require.NoError(t, err)
	p.Close()
	require.Empty(t, srv.Requests())
	_, err = LoadCFLUX("org/tiny-flux", "org/dp2o-sr/c-flux.safetensors", o)
	require.ErrorIs(t, err, hub.ErrOffline)

	// Unknown ids and files.
	o.Hub = c
	_, err = LoadCFLUX("org/nope", cn, o)
	require.ErrorIs(t, err, hub.ErrRepoNotFound)
	require.ErrorContains(t, err, "org/nope")
	_, err = LoadCFLUX("org/tiny-flux", "org/dp2o-sr/nope/model.safetensors", o)
	require.ErrorIs(t, err, hub.ErrEntryNotFound)
	_, err = LoadCFLUX("./no/such/folder", cn, o)
	require.ErrorContains(t, err, "no such folder")
}
