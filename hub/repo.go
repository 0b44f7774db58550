package hub

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// repoIDRe is huggingface_hub's REPO_ID_REGEX: an optional namespace and a
// name of letters, digits, '-', '_' and '.', 1 to 96 characters, starting
// and ending with a letter or digit (a \b word boundary).
var repoIDRe = regexp.MustCompile(`^(?:[\w][\w\-.]*[\w]/|[\w]/)?(?:[\w][\w\-.]{0,94}[\w]|[\w])$`)

var commitRe = regexp.MustCompile(`^[0-9a-f]{40}$`)

// ValidateRepoID checks a model id as huggingface_hub's validate_repo_id
// does: "name" or "namespace/name", letters, digits, '-', '_' and '.',
// without "--" or "..", not ending in ".git", at most 96 characters.
func ValidateRepoID(id string) error {
	switch {
	case strings.Count(id, "/") > 1:
		return fmt.Errorf("hub: model id must be \"name\" or \"namespace/name\": %q", id)
	case !repoIDRe.MatchString(id):
		return fmt.Errorf("hub: model id must use letters, digits, '-', '_' and '.', '-' and '.' cannot start or end the name, max length is 96: %q", id)
	case strings.Contains(id, "--") || strings.Contains(id, ".."):
		return fmt.Errorf("hub: model id cannot contain \"--\" or \"..\": %q", id)
	case strings.HasSuffix(id, ".git"):
		return fmt.Errorf("hub: model id cannot end in \".git\": %q", id)
	}
	return nil
}

// IsCommitHash reports whether rev is a full (40 hex digits) commit hash.
func IsCommitHash(rev string) bool { return commitRe.MatchString(rev) }

// RepoFolderName is the cache folder of a model repository:
// "models--" followed by the id with '/' replaced by "--".
func RepoFolderName(repo string) string {
	return "models--" + strings.ReplaceAll(repo, "/", "--")
}

// RepoDir is the cache folder of repo under c.CacheDir.
func (c *Client) RepoDir(repo string) string { return filepath.Join(c.CacheDir, RepoFolderName(repo)) }

// SnapshotDir is the folder of repo's files at commit in the cache.
func (c *Client) SnapshotDir(repo, commit string) string {
	return filepath.Join(c.RepoDir(repo), "snapshots", commit)
}

// checkRelPath refuses repository file names that would leave the
// snapshot folder (absolute, "..", empty segments), as huggingface_hub's
// _get_pointer_path does.
func checkRelPath(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || path.Clean(name) != name ||
		name == "." || name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("invalid file name %q: not a path inside the repository", name)
	}
	return nil
}

// checkRevision refuses revisions that would leave refs/ when a ref file
// is written or read ("refs/pr/1" is fine).
func checkRevision(rev string) error {
	if rev == "" || strings.HasPrefix(rev, "/") || strings.Contains(rev, "\\") || path.Clean(rev) != rev ||
		rev == "." || rev == ".." || strings.HasPrefix(rev, "../") {
		return fmt.Errorf("invalid revision %q", rev)
	}
	return nil
}

// CachedCommit resolves revision to a commit hash from the cache alone: a
// commit hash is itself, a branch or tag is read from refs/<revision>.
func (c *Client) CachedCommit(repo, revision string) (string, bool) {
	if revision == "" {
		revision = DefaultRevision
	}
	if IsCommitHash(revision) {
		return revision, true
	}
	if checkRevision(revision) != nil {
		return "", false
	}
	b, err := os.ReadFile(filepath.Join(c.RepoDir(repo), "refs", filepath.FromSlash(revision)))
	if err != nil {
		return "", false
	}
	commit := string(b)
	if !IsCommitHash(commit) {
		return "", false
	}
	return commit, true
}

// CachedFile is huggingface_hub's try_to_load_from_cache: the path of
// file at revision when it is in the cache. noExist is true when the cache
// records that the file does not exist at that commit (.no_exist/).
func (c *Client) CachedFile(repo, revision, file string) (p string, noExist bool, ok bool) {
	commit, found := c.CachedCommit(repo, revision)
	if !found || checkRelPath(file) != nil {
		return "", false, false
	}
	rel := filepath.FromSlash(file)
	if st, err := os.Stat(filepath.Join(c.RepoDir(repo), ".no_exist", commit, rel)); err == nil && st.Mode().IsRegular() {
		return "", true, false
	}
	p = filepath.Join(c.SnapshotDir(repo, commit), rel)
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
		return p, false, true
	}
	return "", false, false
}

// writeRef records that revision (a branch or tag) points at commit, as
// _cache_commit_hash_for_specific_revision: only when it differs.
func (c *Client) writeRef(repo, revision, commit string) error {
	if revision == commit {
		return nil
	}
	if err := checkRevision(revision); err != nil {
		return err
	}
	p := filepath.Join(c.RepoDir(repo), "refs", filepath.FromSlash(revision))
	if b, err := os.ReadFile(p); err == nil && string(b) == commit {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(commit), 0o644)
}

// linkBlob makes snapshots/<commit>/<file> a relative symlink to
// blobs/<etag>, as _create_symlink does (it replaces what is there). Where
// symlinks are not supported the blob is copied.
func linkBlob(blob, pointer string) error {
	if err := os.MkdirAll(filepath.Dir(pointer), 0o755); err != nil {
		return err
	}
	_ = os.Remove(pointer)
	absBlob, err := filepath.Abs(blob)
	if err != nil {
		return err
	}
	absPtr, err := filepath.Abs(pointer)
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(absPtr), absBlob)
	if err != nil {
		rel = absBlob
	}
	err = os.Symlink(rel, absPtr)
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrExist) {
		if a, e1 := filepath.EvalSymlinks(absPtr); e1 == nil {
			if b, e2 := filepath.EvalSymlinks(absBlob); e2 == nil && a == b {
				return nil // linked concurrently
			}
		}
		return err
	}
	return copyFile(absBlob, absPtr)
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
