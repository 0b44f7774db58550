package hub

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/hub/hubtest"
)

const (
	repoID  = "org/model"
	commitA = "0123456789abcdef0123456789abcdef01234567"
	commitB = "89abcdef0123456789abcdef0123456789abcdef"
)

// weights is an LFS-sized payload that is not all one byte.
func weights(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// files of the test repository at commitA.
func repoFiles() map[string][]byte {
	return map[string][]byte{
		"model_index.json":                              []byte(`{"_class_name": "StableDiffusionPipeline"}`),
		"unet/config.json":                              []byte(`{"sample_size": 8}`),
		"unet/diffusion_pytorch_model.safetensors":      weights(5000),
		"unet/diffusion_pytorch_model.fp16.safetensors": weights(2500),
		"unet/diffusion_pytorch_model.bin":              weights(5100),
		"tokenizer/vocab.json":                          []byte(`{"a": 0}`),
		"tokenizer/merges.txt":                          []byte("#version: 0.2\n"),
		"text_encoder/model.safetensors":                weights(3000),
		"scheduler/scheduler_config.json":               []byte(`{"num_train_timesteps": 1000}`),
		"weird name/a b+c.json":                         []byte(`{}`),
	}
}

// newHub starts a fake Hub with repoID (main → commitA, tag v1 → commitB)
// and a client whose cache lives in a temporary HF_HOME.
func newHub(t *testing.T) (*hubtest.Server, *Client) {
	t.Helper()
	srv := hubtest.New()
	t.Cleanup(srv.Close)
	srv.Token = "hf_secret"
	old := map[string][]byte{"unet/config.json": []byte(`{"sample_size": 4}`)}
	srv.AddRepo(repoID, &hubtest.Repo{
		Refs:    map[string]string{"main": commitA, "v1": commitB},
		Commits: map[string]map[string][]byte{commitA: repoFiles(), commitB: old},
	})
	t.Setenv("HF_HOME", t.TempDir())
	for _, k := range []string{"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
		"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME"} {
		t.Setenv(k, "")
	}
	t.Setenv("HF_ENDPOINT", srv.URL())
	t.Setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
	c := FromEnv()
	c.Token = srv.Token
	return srv, c
}

func count(reqs []hubtest.Request, host, method string) int {
	n := 0
	for _, r := range reqs {
		if r.Host == host && r.Method == method {
			n++
		}
	}
	return n
}

func TestDownloadLaysOutTheCacheAsHuggingfaceHub(t *testing.T) {
	srv, c := newHub(t)
	ctx := context.Background()
	want := repoFiles()

	for _, f := range []string{"unet/config.json", "unet/diffusion_pytorch_model.safetensors", "weird name/a b+c.json"} {
		p, err := c.Download(ctx, repoID, "", f)
		require.NoError(t, err, f)
		require.Equal(t, filepath.Join(c.CacheDir, "models--org--model", "snapshots", commitA, filepath.FromSlash(f)), p)
		got, err := os.ReadFile(p)
		require.NoError(t, err)
		require.Equal(t, want[f], got, f)

		// A relative symlink into blobs/<etag>: git sha1 for a regular
		// file, sha256 for an LFS one.
		etag := hubtest.GitBlobSHA1(want[f])
		if strings.HasSuffix(f, ".safetensors") {
			etag = hubtest.SHA256(want[f])
		}
		link, err := os.Readlink(p)
		require.NoError(t, err)
		require.False(t, filepath.IsAbs(link), link)
		// From snapshots/<commit>/<dirs of f>: up to the repo folder.
		ups := strings.Count(f, "/") + 2
		require.Equal(t, strings.Repeat("../", ups)+"blobs/"+etag, filepath.ToSlash(link))
		_, err = os.Stat(filepath.Join(c.RepoDir(repoID), "blobs", etag+".incomplete"))
		require.ErrorIs(t, err, os.ErrNotExist)
	}
	ref, err := os.ReadFile(filepath.Join(c.RepoDir(repoID), "refs", "main"))
	require.NoError(t, err)
	require.Equal(t, commitA, string(ref))
	_, err = os.Stat(filepath.Join(c.CacheDir, ".locks", "models--org--model"))
	require.NoError(t, err, "locks live where huggingface_hub keeps them")

	// The token goes to the Hub, never to the CDN; the LFS file came from
	// the CDN after an absolute redirect.
	reqs := srv.Requests()
	require.Equal(t, 1, count(reqs, "cdn", "GET"))
	for _, r := range reqs {
		if r.Host == "hub" {
			require.Equal(t, "Bearer hf_secret", r.Auth, r.Path)
		} else {
			require.Empty(t, r.Auth, r.Path)
		}
	}

	// Cached: a branch costs one HEAD and no download; a commit hash no
	// request at all.
	_, err = c.Download(ctx, repoID, "main", "unet/diffusion_pytorch_model.safetensors")
	require.NoError(t, err)
	reqs = srv.Requests()
	require.Equal(t, 1, len(reqs))
	require.Equal(t, "HEAD", reqs[0].Method)
	_, err = c.Download(ctx, repoID, commitA, "unet/diffusion_pytorch_model.safetensors")
	require.NoError(t, err)
	require.Empty(t, srv.Requests())

	// A tag resolves to its own commit and ref.
	p, err := c.Download(ctx, repoID, "v1", "unet/config.json")
	require.NoError(t, err)
	require.Contains(t, p, commitB)
	ref, err = os.ReadFile(filepath.Join(c.RepoDir(repoID), "refs", "v1"))
	require.NoError(t, err)
	require.Equal(t, commitB, string(ref))
}

func TestRelativeRedirectOfARenamedRepo(t *testing.T) {
	srv, c := newHub(t)
	srv.Rename("org/old-name", repoID)
	p, err := c.Download(context.Background(), "org/old-name", "", "unet/diffusion_pytorch_model.fp16.safetensors")
	require.NoError(t, err)
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, repoFiles()["unet/diffusion_pytorch_model.fp16.safetensors"], got)
	// Stored under the id that was asked for, as huggingface_hub does.
	require.True(t, strings.HasPrefix(p, filepath.Join(c.CacheDir, "models--org--old-name")), p)
	var heads []string
	for _, r := range srv.Requests() {
		if r.Method == "HEAD" {
			heads = append(heads, r.Path)
		}
	}
	require.Equal(t, []string{"/org/old-name/resolve/main/unet/diffusion_pytorch_model.fp16.safetensors",
		"/org/model/resolve/main/unet/diffusion_pytorch_model.fp16.safetensors"}, heads)
}

func TestHubErrorsAreClear(t *testing.T) {
	srv, c := newHub(t)
	ctx := context.Background()
	srv.AddRepo("org/gated", &hubtest.Repo{Gated: true, Refs: map[string]string{"main": commitA},
		Commits: map[string]map[string][]byte{commitA: {"config.json": []byte("{}")}}})

	anon := *c
	anon.Token = ""
	_, err := anon.Download(ctx, "org/gated", "", "config.json")
	require.ErrorIs(t, err, ErrGated)
	require.Contains(t, err.Error(), "org/gated@main: config.json")
	require.Contains(t, err.Error(), "HF_TOKEN")
	p, err := c.Download(ctx, "org/gated", "", "config.json")
	require.NoError(t, err, "the token opens the gated repository")
	require.FileExists(t, p)

	_, err = c.Download(ctx, "org/nope", "", "config.json")
	require.ErrorIs(t, err, ErrRepoNotFound)
	require.Contains(t, err.Error(), "401")
	_, _, err = c.RepoFiles(ctx, "org/nope", "")
	require.ErrorIs(t, err, ErrRepoNotFound)

	_, err = c.Download(ctx, repoID, "", "unet/missing.json")
	require.ErrorIs(t, err, ErrEntryNotFound)
	require.Contains(t, err.Error(), "unet/missing.json")
	require.Contains(t, err.Error(), "404")
	_, noExist, ok := c.CachedFile(repoID, "main", "unet/missing.json")
	require.True(t, noExist, "non-existence is cached in .no_exist/<commit>/ as huggingface_hub does")
	require.False(t, ok)
	require.FileExists(t, filepath.Join(c.RepoDir(repoID), ".no_exist", commitA, "unet", "missing.json"))

	_, err = c.Download(ctx, repoID, "no-such-branch", "unet/config.json")
	require.ErrorIs(t, err, ErrRevisionNotFound)

	for _, bad := range []string{"../evil", "/abs", "a//b", "a/./b"} {
		_, err = c.Download(ctx, repoID, "", bad)
		require.ErrorContains(t, err, "invalid file name", bad)
	}
	_, err = c.Download(ctx, "a/b/c", "", "x")
	require.ErrorContains(t, err, "namespace/name")
	_, err = c.Download(ctx, repoID, "../x", "unet/config.json")
	require.ErrorContains(t, err, "invalid revision")
}

func TestCutDownloadResumesWithRange(t *testing.T) {
	srv, c := newHub(t)
	ctx := context.Background()
	const f = "unet/diffusion_pytorch_model.safetensors"
	want := repoFiles()[f]
	blob := filepath.Join(c.RepoDir(repoID), "blobs", hubtest.SHA256(want))

	c.Retries = 0
	srv.CutAfter(f, 1234)
	_, err := c.Download(ctx, repoID, "", f)
	require.Error(t, err)
	require.Contains(t, err.Error(), "resumed on the next call")
	part, err := os.ReadFile(blob + ".incomplete")
	require.NoError(t, err)
	require.Equal(t, want[:1234], part, "the partial file keeps what arrived")
	require.NoFileExists(t, blob)
	require.NoFileExists(t, filepath.Join(c.SnapshotDir(repoID, commitA), filepath.FromSlash(f)))
	srv.Requests()

	p, err := c.Download(ctx, repoID, "", f)
	require.NoError(t, err)
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, want, got)
	var ranges []string
	for _, r := range srv.Requests() {
		if r.Host == "cdn" {
			ranges = append(ranges, r.Range)
		}
	}
	require.Equal(t, []string{"bytes=1234-"}, ranges)
	require.NoFileExists(t, blob+".incomplete")

	// Within one call, cuts are resumed Retries times.
	const g = "text_encoder/model.safetensors"
	c.Retries = 2
	srv.CutAfter(g, 100, 900)
	p, err = c.Download(ctx, repoID, "", g)
	require.NoError(t, err)
	got, err = os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, repoFiles()[g], got)
	ranges = nil
	for _, r := range srv.Requests() {
		if r.Host == "cdn" {
			ranges = append(ranges, r.Range)
		}
	}
	require.Equal(t, []string{"", "bytes=100-", "bytes=1000-"}, ranges)
}

func TestChecksumMismatchIsRefused(t *testing.T) {
	srv, c := newHub(t)
	const f = "unet/diffusion_pytorch_model.safetensors"
	srv.Corrupt(f, true)
	_, err := c.Download(context.Background(), repoID, "", f)
	require.ErrorIs(t, err, ErrChecksum)
	require.Contains(t, err.Error(), "sha256 should be "+hubtest.SHA256(repoFiles()[f]))
	blobs, err := os.ReadDir(filepath.Join(c.RepoDir(repoID), "blobs"))
	require.NoError(t, err)
	require.Empty(t, blobs, "neither the blob nor the partial file stays")
	require.NoFileExists(t, filepath.Join(c.SnapshotDir(repoID, commitA), filepath.FromSlash(f)))

	// A corrupt partial file from an earlier run is caught too.
	srv.Corrupt(f, false)
	srv.CutAfter(f, 10)
	c.Retries = 0
	_, err = c.Download(context.Background(), repoID, "", f)
	require.Error(t, err)
	inc := filepath.Join(c.RepoDir(repoID), "blobs", hubtest.SHA256(repoFiles()[f])+".incomplete")
	b, err := os.ReadFile(inc)
	require.NoError(t, err)
	b[0] ^= 1
	require.NoError(t, os.WriteFile(inc, b, 0o644))
	_, err = c.Download(context.Background(), repoID, "", f)
	require.ErrorIs(t, err, ErrChecksum)
	require.NoFileExists(t, inc)
}

func TestOffline(t *testing.T) {
	srv, c := newHub(t)
	ctx := context.Background()
	t.Setenv("HF_HUB_OFFLINE", "1")
	off := FromEnv()
	require.True(t, off.Offline)

	_, err := off.Download(ctx, repoID, "", "unet/config.json")
	require.ErrorIs(t, err, ErrOffline)
	require.Contains(t, err.Error(), "org/model@main: unet/config.json")
	require.Contains(t, err.Error(), "HF_HUB_OFFLINE")
	_, _, err = off.RepoFiles(ctx, repoID, "")
	require.ErrorIs(t, err, ErrOffline)
	require.Empty(t, srv.Requests(), "offline makes no request")

	_, err = c.Download(ctx, repoID, "", "unet/config.json")
	require.NoError(t, err)
	srv.Requests()
	for _, rev := range []string{"", "main", commitA} {
		p, err := off.Download(ctx, repoID, rev, "unet/config.json")
		require.NoError(t, err, rev)
		require.Equal(t, filepath.Join(off.SnapshotDir(repoID, commitA), "unet", "config.json"), p)
	}
	commit, files, err := off.RepoFiles(ctx, repoID, "main")
	require.NoError(t, err)
	require.Equal(t, commitA, commit)
	require.Equal(t, []string{"unet/config.json"}, files, "offline lists what is cached")
	_, err = off.Download(ctx, repoID, "", "unet/diffusion_pytorch_model.safetensors")
	require.ErrorIs(t, err, ErrOffline)
	require.Contains(t, err.Error(), "unet/diffusion_pytorch_model.safetensors")
	require.Empty(t, srv.Requests())
}

// pythonCache lays out a cache the way huggingface_hub writes it, by hand.
func pythonCache(t *testing.T, cacheDir string, files map[string][]byte) {
	t.Helper()
	repo := filepath.Join(cacheDir, "models--org--model")
	require.NoError(t, os.MkdirAll(filepath.Join(repo, "refs"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(repo, "refs", "main"), []byte(commitA), 0o644))
	for f, b := range files {
		etag := hubtest.GitBlobSHA1(b)
		if strings.HasSuffix(f, ".safetensors") {
			etag = hubtest.SHA256(b)
		}
		require.NoError(t, os.MkdirAll(filepath.Join(repo, "blobs"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(repo, "blobs", etag), b, 0o644))
		ptr := filepath.Join(repo, "snapshots", commitA, filepath.FromSlash(f))
		require.NoError(t, os.MkdirAll(filepath.Dir(ptr), 0o755))
		rel := strings.Repeat("../", strings.Count(f, "/")+2) + "blobs/" + etag
		require.NoError(t, os.Symlink(rel, ptr))
	}
}

func TestPythonCacheIsReusedWithoutNetwork(t *testing.T) {
	srv, c := newHub(t)
	ctx := context.Background()
	files := map[string][]byte{}
	for _, f := range []string{"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"} {
		files[f] = repoFiles()[f]
	}
	pythonCache(t, c.CacheDir, files)

	// Unreachable Hub: the cached snapshot serves the branch.
	down := *c
	down.Endpoint = "http://127.0.0.1:1"
	commit, listed, err := down.RepoFiles(ctx, repoID, "")
	require.NoError(t, err)
	require.Equal(t, commitA, commit)
	require.Equal(t, []string{"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"}, listed)
	p, err := down.Download(ctx, repoID, "main", "unet/diffusion_pytorch_model.safetensors")
	require.NoError(t, err)
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, files["unet/diffusion_pytorch_model.safetensors"], got)
	_, err = down.Download(ctx, repoID, "main", "unet/diffusion_pytorch_model.fp16.safetensors")
	require.ErrorIs(t, err, ErrNotCached)

	// Online, a snapshot of cached files lists the repository and
	// downloads nothing.
	dir, err := c.Snapshot(ctx, repoID, "", "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors")
	require.NoError(t, err)
	require.Equal(t, c.SnapshotDir(repoID, commitA), dir)
	reqs := srv.Requests()
	require.Equal(t, 1, len(reqs), "only the listing: %v", reqs)
	require.Equal(t, "/api/models/org/model/revision/main", reqs[0].Path)
}

func TestSnapshotFetchesOnlyWhatMatches(t *testing.T) {
	srv, c := newHub(t)
	dir, err := c.Snapshot(context.Background(), repoID, "", "unet/config.json", "unet/*.fp16.safetensors", "tokenizer/")
	require.NoError(t, err)
	got, err := listSnapshot(dir)
	require.NoError(t, err)
	require.Equal(t, []string{"tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json",
		"unet/diffusion_pytorch_model.fp16.safetensors"}, got)
	require.Equal(t, 1, count(srv.Requests(), "cdn", "GET"), "one LFS file")
}

func TestFnmatchAsPython(t *testing.T) {
	// Expected values are those of Python's fnmatch.fnmatchcase.
	cases := []struct {
		pat, name string
		want      bool
	}{
		{"*.json", "unet/config.json", true}, // '*' crosses '/'
		{"unet/*", "unet/a/b.bin", true},
		{"unet/*.safetensors", "unet/x.fp16.safetensors", true},
		{"unet/config.json", "unet/config.json", true},
		{"unet/config.json", "unet/config.jsonx", false},
		{"unet/config.jso?", "unet/config.json", true},
		{"[!u]*", "unet/x", false},
		{"[a-v]net/*", "unet/x", true},
		{"a[", "a[", true},
		{"*.JSON", "a.json", false},
		{"a.b", "axb", false},
	}
	for _, c := range cases {
		require.Equal(t, c.want, Match(c.pat, c.name), "%s vs %s", c.pat, c.name)
	}
	require.Equal(t, []string{"tokenizer/a", "tokenizer/b/c"},
		FilterFiles([]string{"tokenizer/a", "tokenizer/b/c", "tokenizer2/x", "unet/y"}, "tokenizer/"))
}

func TestValidateRepoID(t *testing.T) {
	for _, ok := range []string{"gpt2", "org/name", "stabilityai/stable-diffusion-2-base", "a/b", "Foo-BAR_foo.bar123"} {
		require.NoError(t, ValidateRepoID(ok), ok)
	}
	for _, bad := range []string{"", "a/b/c", ".repo", "repo-", "foo--bar", "foo..bar", "foo.git", "/abs", "org/", "a b",
		strings.Repeat("x", 97)} {
		require.Error(t, ValidateRepoID(bad), bad)
	}
}

func TestFromEnv(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HF_HOME", home)
	for _, k := range []string{"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
		"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_DISABLE_PROGRESS_BARS"} {
		t.Setenv(k, "")
	}
	c := FromEnv()
	require.Equal(t, DefaultEndpoint, c.Endpoint)
	require.Equal(t, filepath.Join(home, "hub"), c.CacheDir)
	require.False(t, c.Offline)
	require.Empty(t, c.Token)
	require.NotNil(t, c.Progress)

	require.NoError(t, os.WriteFile(filepath.Join(home, "token"), []byte("hf_file\n"), 0o600))
	require.Equal(t, "hf_file", FromEnv().Token)
	t.Setenv("HF_TOKEN", " hf_env ")
	t.Setenv("HF_ENDPOINT", "http://mirror.example/")
	t.Setenv("HF_HUB_CACHE", filepath.Join(home, "elsewhere"))
	t.Setenv("HF_HUB_OFFLINE", "yes")
	t.Setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
	c = FromEnv()
	require.Equal(t, "hf_env", c.Token)
	require.Equal(t, "http://mirror.example", c.Endpoint)
	require.Equal(t, filepath.Join(home, "elsewhere"), c.CacheDir)
	require.True(t, c.Offline)
	require.Nil(t, c.Progress)
}

func TestProgressBarWritesToItsWriter(t *testing.T) {
	_, c := newHub(t)
	var buf bytes.Buffer
	c.Progress = &buf
	_, err := c.Download(context.Background(), repoID, "", "text_encoder/model.safetensors")
	require.NoError(t, err)
	require.Contains(t, buf.String(), "text_encoder/model.safetensors")
}

func TestCancelledContext(t *testing.T) {
	_, c := newHub(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Download(ctx, repoID, "", "unet/config.json")
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
}

func TestConcurrentDownloadsOfOneBlob(t *testing.T) {
	srv, c := newHub(t)
	const f = "unet/diffusion_pytorch_model.safetensors"
	paths := make([]string, 4)
	errs := make([]error, len(paths))
	done := make(chan int)
	for i := range paths {
		go func() {
			paths[i], errs[i] = c.Download(context.Background(), repoID, "", f)
			done <- i
		}()
	}
	for range paths {
		<-done
	}
	for i := range paths {
		require.NoError(t, errs[i])
		require.Equal(t, paths[0], paths[i])
	}
	got, err := os.ReadFile(paths[0])
	require.NoError(t, err)
	require.Equal(t, repoFiles()[f], got)
	require.Equal(t, 1, count(srv.Requests(), "cdn", "GET"), "the blob lock lets one download through")
}

func TestResolvePassesLocalFoldersThrough(t *testing.T) {
	srv, c := newHub(t)
	local := t.TempDir()
	got, err := c.Resolve(context.Background(), local, "")
	require.NoError(t, err)
	require.Equal(t, local, got)
	require.Empty(t, srv.Requests())

	got, err = c.Resolve(context.Background(), repoID, "v1")
	require.NoError(t, err)
	require.Equal(t, c.SnapshotDir(repoID, commitB), got)
	files, err := listSnapshot(got)
	require.NoError(t, err)
	require.Equal(t, []string{"unet/config.json"}, files)

	_, err = c.Resolve(context.Background(), filepath.Join(local, "a", "b"), "")
	require.ErrorContains(t, err, "neither a local path nor a model id")
}
