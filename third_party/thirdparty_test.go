package thirdparty

import (
	"encoding/json"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type manifest struct {
	Entries []struct {
		Name     string   `json:"name"`
		Project  string   `json:"project"`
		Version  string   `json:"version"`
		Upstream string   `json:"upstream"`
		License  string   `json:"license"`
		Paths    []string `json:"paths"`
	} `json:"entries"`
	Ported []struct {
		Project string `json:"project"`
		Version string `json:"version"`
		License string `json:"license"`
		What    string `json:"what"`
	} `json:"ported"`
}

// upstreamNames are the file names (path.Match patterns) of data that
// other projects publish and this one may ship: tokenizer vocabularies,
// merges and models, tag lists and their thresholds. Every such file in
// the repository must be covered by a manifest entry.
var upstreamNames = []string{
	"vocab.json", "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model", "tokenizer.json",
	"*.bpe", "*.txt.gz", "*tag_list*", "*taglist*", "*_thresholds*",
}

func readManifest(t *testing.T) manifest {
	t.Helper()
	data, err := os.ReadFile("manifest.json")
	require.NoError(t, err)
	var m manifest
	require.NoError(t, json.Unmarshal(data, &m))
	require.NotEmpty(t, m.Entries)
	return m
}

// match reports whether the slash-separated path p matches pattern, where
// a "**" segment matches any number of folders and other segments are
// path.Match patterns.
func match(pattern, p string) bool {
	return matchSegs(strings.Split(pattern, "/"), strings.Split(p, "/"))
}

func matchSegs(pat, segs []string) bool {
	if len(pat) == 0 {
		return len(segs) == 0
	}
	if pat[0] == "**" {
		for i := 0; i <= len(segs); i++ {
			if matchSegs(pat[1:], segs[i:]) {
				return true
			}
		}
		return false
	}
	if len(segs) == 0 {
		return false
	}
	ok, err := path.Match(pat[0], segs[0])
	return err == nil && ok && matchSegs(pat[1:], segs[1:])
}

// repoFiles lists the repository's files (slash-separated, relative to its
// root), skipping version control and build output.
func repoFiles(t *testing.T) []string {
	t.Helper()
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() && p != root && (strings.HasPrefix(name, ".") || name == "build") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	require.NoError(t, err)
	return files
}

func TestMatch(t *testing.T) {
	require.True(t, match("**/vocab.json", "vocab.json"))
	require.True(t, match("**/vocab.json", "a/b/vocab.json"))
	require.True(t, match("assets/*/tokenizer/merges.txt", "assets/tiny-sd2/tokenizer/merges.txt"))
	require.False(t, match("assets/*/tokenizer/merges.txt", "assets/a/b/tokenizer/merges.txt"))
	require.True(t, match("**/t5_tokenizer/tokenizer.json", "flow/t5/testdata/flux/t5_tokenizer/tokenizer.json"))
	require.False(t, match("**/t5_tokenizer/tokenizer.json", "x/clip/tokenizer.json"))
}

// TestManifestEntries checks every entry: its fields, its licence text, and
// that each of its patterns matches a shipped file.
func TestManifestEntries(t *testing.T) {
	m := readManifest(t)
	files := repoFiles(t)
	for _, e := range m.Entries {
		require.NotEmpty(t, e.Name)
		require.NotEmpty(t, e.Project, e.Name)
		require.NotEmpty(t, e.Version, e.Name)
		require.NotEmpty(t, e.Upstream, e.Name)
		lic, err := os.ReadFile(e.License)
		require.NoError(t, err, "%s: licence", e.Name)
		require.NotEmpty(t, strings.TrimSpace(string(lic)), "%s: empty licence %s", e.Name, e.License)
		for _, pat := range e.Paths {
			found := false
			for _, f := range files {
				if match(pat, f) {
					found = true
					break
				}
			}
			require.True(t, found, "%s: pattern %s matches no file", e.Name, pat)
		}
	}
	for _, p := range m.Ported {
		require.NotEmpty(t, p.Project)
		_, err := os.Stat(p.License)
		require.NoError(t, err, "%s: licence", p.Project)
	}
}

// TestEveryUpstreamFileIsListed fails when the repository ships a file
// that looks like upstream data (a tokenizer file, a tag list, …) that no
// manifest entry covers, or one that two entries claim.
func TestEveryUpstreamFileIsListed(t *testing.T) {
	m := readManifest(t)
	for _, f := range repoFiles(t) {
		base := path.Base(f)
		if strings.HasSuffix(base, ".go") || strings.HasSuffix(base, ".md") {
			continue // code and docs of this project
		}
		upstream := false
		for _, n := range upstreamNames {
			if ok, _ := path.Match(n, base); ok {
				upstream = true
				break
			}
		}
		if !upstream {
			continue
		}
		var owners []string
		for _, e := range m.Entries {
			for _, pat := range e.Paths {
				if match(pat, f) {
					owners = append(owners, e.Name)
					break
				}
			}
		}
		require.Len(t, owners, 1, "%s: shipped upstream file needs exactly one entry in third_party/manifest.json (has %v)", f, owners)
	}
}
