package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/hub/hubtest"
)

// repoOf serves the files of a local folder (but skip/) at one commit.
func repoOf(t *testing.T, dir, skip, commit string) *hubtest.Repo {
	t.Helper()
	files := map[string][]byte{}
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if skip != "" && strings.HasPrefix(rel, skip) {
			return nil
		}
		b, err := os.ReadFile(p)
		files[rel] = b
		return err
	}))
	return &hubtest.Repo{Refs: map[string]string{"main": commit}, Commits: map[string]map[string][]byte{commit: files}}
}

func TestSRModelIDs(t *testing.T) {
	srv := hubtest.New()
	defer srv.Close()
	const commit = "3333333333333333333333333333333333333333"
	srv.AddRepo("org/tiny-sd2", repoOf(t, tinyBase, "controlnet/", commit))
	srv.AddRepo("org/dp2o-sr", repoOf(t, filepath.Dir(tinyControlNet), "", commit))
	home := t.TempDir()
	t.Setenv("HF_HOME", home)
	t.Setenv("HF_ENDPOINT", srv.URL())
	for _, k := range []string{"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"} {
		t.Setenv(k, "")
	}
	ids := []string{"--pretrained_model_name_or_path", "org/tiny-sd2", "--revision", "main", "--variant", "fp16",
		"--controlnet_model_name_or_path", "org/dp2o-sr/" + filepath.Base(tinyControlNet)}

	out := t.TempDir()
	require.NoError(t, sr(t, append(ids, "--image_path", sampleDir, "--output_dir", out)...))
	require.Equal(t, []string{"lr_house.png"}, listDir(t, out))
	snap := filepath.Join(home, "hub", hub.RepoFolderName("org/tiny-sd2"), "snapshots", commit)
	require.FileExists(t, filepath.Join(snap, "unet", "config.json"))
	require.NotEmpty(t, srv.Requests())

	// Offline, the cache alone serves the same run.
	t.Setenv("HF_HUB_OFFLINE", "1")
	require.NoError(t, sr(t, append(ids, "--image_path", sampleDir, "--output_dir", t.TempDir())...))
	require.Empty(t, srv.Requests())

	t.Setenv("HF_HUB_OFFLINE", "")
	err := sr(t, "--pretrained_model_name_or_path", "org/tiny-sd2", "--revision", "v2", "--image_path", sampleDir, "--output_dir", out)
	require.ErrorIs(t, err, hub.ErrRevisionNotFound)
	require.ErrorContains(t, err, "org/tiny-sd2@v2")
}
