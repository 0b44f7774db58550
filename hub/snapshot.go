package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// maxRepoInfo bounds the size of a repository listing read into memory.
const maxRepoInfo = 64 << 20

// RepoFiles lists the files of repo at revision ("" for main) and the
// commit the revision resolves to. Online it asks the Hub
// ({endpoint}/api/models/{repo}/revision/{revision}, as repo_info) and
// records refs/<revision>; offline, or when the Hub cannot be reached or
// refuses the token, it lists the cached snapshot of the revision, which
// holds only the files downloaded before.
func (c *Client) RepoFiles(ctx context.Context, repo, revision string) (commit string, files []string, err error) {
	if revision == "" {
		revision = DefaultRevision
	}
	fail := func(err error) (string, []string, error) {
		return "", nil, &Error{Repo: repo, Revision: revision, Err: err}
	}
	if err := ValidateRepoID(repo); err != nil {
		return fail(err)
	}
	if err := checkRevision(revision); err != nil {
		return fail(err)
	}
	var apiErr error
	if c.Offline {
		apiErr = ErrOffline
	} else {
		commit, files, apiErr = c.repoInfo(ctx, repo, revision)
		if apiErr == nil {
			if err := c.writeRef(repo, revision, commit); err != nil {
				return fail(err)
			}
			return commit, files, nil
		}
		if errors.Is(apiErr, ErrRevisionNotFound) || ctx.Err() != nil {
			return fail(apiErr)
		}
	}
	if commit, ok := c.CachedCommit(repo, revision); ok {
		if files, err := listSnapshot(c.SnapshotDir(repo, commit)); err == nil {
			return commit, files, nil
		}
	}
	var he *HTTPError
	switch {
	case errors.Is(apiErr, ErrOffline):
		return fail(fmt.Errorf("%w: no snapshot of this revision in %s", ErrOffline, c.RepoDir(repo)))
	case errors.As(apiErr, &he):
		return fail(apiErr)
	}
	return fail(fmt.Errorf("%w: %v", ErrNotCached, apiErr))
}

// repoInfo is HfApi.repo_info: the commit ("sha") and the file names
// ("siblings") of a revision.
func (c *Client) repoInfo(ctx context.Context, repo, revision string) (string, []string, error) {
	if c.MetadataTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.MetadataTimeout)
		defer cancel()
	}
	u := c.Endpoint + "/api/models/" + repo + "/revision/" + url.PathEscape(revision)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", nil, err
	}
	c.setHeaders(req, true)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", nil, statusError(resp, true)
	}
	var info struct {
		SHA      string `json:"sha"`
		Siblings []struct {
			RFilename string `json:"rfilename"`
		} `json:"siblings"`
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRepoInfo))
	if err != nil {
		return "", nil, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return "", nil, fmt.Errorf("%s: repository info is not valid JSON: %w", u, err)
	}
	if !IsCommitHash(info.SHA) {
		return "", nil, fmt.Errorf("%s: repository info has no commit hash (sha %q)", u, info.SHA)
	}
	files := make([]string, 0, len(info.Siblings))
	for _, s := range info.Siblings {
		if checkRelPath(s.RFilename) == nil {
			files = append(files, s.RFilename)
		}
	}
	slices.Sort(files)
	return info.SHA, files, nil
}

// listSnapshot lists the files of a cached snapshot folder ('/'-separated).
func listSnapshot(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isFile(p) {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	return files, nil
}

// Snapshot is snapshot_download with allow_patterns: it downloads the
// files of repo at revision that match any of patterns (all files when
// none are given) and returns the snapshot folder. Patterns are Python
// fnmatch patterns ('*' also matches '/', "unet/" means "unet/*"), so
// only what a pipeline needs is fetched. Offline, the cached snapshot
// folder of the revision is returned as it is.
func (c *Client) Snapshot(ctx context.Context, repo, revision string, patterns ...string) (string, error) {
	commit, files, err := c.RepoFiles(ctx, repo, revision)
	if err != nil {
		return "", err
	}
	dir := c.SnapshotDir(repo, commit)
	if c.Offline {
		return dir, nil
	}
	for _, f := range FilterFiles(files, patterns...) {
		if _, err := c.Download(ctx, repo, commit, f); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", &Error{Repo: repo, Revision: revision, Err: err}
	}
	return dir, nil
}

// FilterFiles keeps the files matching any of patterns (all of them when
// there are none), as huggingface_hub's filter_repo_objects.
func FilterFiles(files []string, patterns ...string) []string {
	if len(patterns) == 0 {
		return slices.Clone(files)
	}
	res := make([]*regexp.Regexp, len(patterns))
	for i, p := range patterns {
		if strings.HasSuffix(p, "/") {
			p += "*"
		}
		res[i] = fnmatchRegexp(p)
	}
	var out []string
	for _, f := range files {
		for _, re := range res {
			if re.MatchString(f) {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

// Match reports whether name matches the Python fnmatch pattern: '*' any
// run of characters ('/' included), '?' one character, [seq] and [!seq]
// character sets; case-sensitive (POSIX fnmatch).
func Match(pattern, name string) bool { return fnmatchRegexp(pattern).MatchString(name) }

// fnmatchRegexp translates an fnmatch pattern as Python's fnmatch.translate.
func fnmatchRegexp(pat string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`(?s)^`)
	for i := 0; i < len(pat); i++ {
		switch ch := pat[i]; ch {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '[':
			j := i + 1
			if j < len(pat) && pat[j] == '!' {
				j++
			}
			if j < len(pat) && pat[j] == ']' {
				j++
			}
			for j < len(pat) && pat[j] != ']' {
				j++
			}
			if j >= len(pat) {
				b.WriteString(`\[`)
				continue
			}
			set := pat[i+1 : j]
			i = j
			neg := strings.HasPrefix(set, "!")
			if neg {
				set = set[1:]
			}
			set = strings.ReplaceAll(set, `\`, `\\`)
			set = strings.ReplaceAll(set, `^`, `\^`)
			set = strings.ReplaceAll(set, `[`, `\[`)
			if neg {
				b.WriteString(`[^` + set + `]`)
			} else {
				b.WriteString(`[` + set + `]`)
			}
		default:
			b.WriteString(regexp.QuoteMeta(string(ch)))
		}
	}
	b.WriteString(`$`)
	re, err := regexp.Compile(b.String())
	if err != nil {
		return regexp.MustCompile(`^` + regexp.QuoteMeta(pat) + `$`)
	}
	return re
}

// IsLocal reports whether nameOrPath is an existing local folder or file,
// which diffusers loads as it is instead of resolving a model id.
func IsLocal(nameOrPath string) bool {
	_, err := os.Stat(nameOrPath)
	return err == nil
}

// Resolve returns a local folder for nameOrPath: an existing local path
// as it is, otherwise a model id whose files matching patterns are
// fetched with Snapshot (all files when no pattern is given).
func (c *Client) Resolve(ctx context.Context, nameOrPath, revision string, patterns ...string) (string, error) {
	if IsLocal(nameOrPath) {
		return nameOrPath, nil
	}
	if err := ValidateRepoID(nameOrPath); err != nil {
		return "", fmt.Errorf("%s is neither a local path nor a model id: %w", nameOrPath, err)
	}
	return c.Snapshot(ctx, nameOrPath, revision, patterns...)
}
