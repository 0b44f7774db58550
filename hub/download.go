package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
)

// fileMeta is what a HEAD request on a resolve URL tells (HfFileMetadata).
type fileMeta struct {
	commit   string // X-Repo-Commit
	etag     string // X-Linked-Etag or ETag, normalised: the blob's name
	location string // where to GET the file: the CDN for LFS files
	size     int64  // X-Linked-Size or Content-Length
}

var (
	sha256Re = regexp.MustCompile(`^[0-9a-f]{64}$`)
	etagRe   = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]*$`)
)

// Download returns the local path of file (a '/'-separated path in the
// repository) in repo at revision ("" for main), downloading it into the
// cache if it is not there, as huggingface_hub's hf_hub_download:
//
//   - with a commit hash whose snapshot holds the file, no request is made;
//   - offline (c.Offline), the file comes from the cache (a branch or tag
//     resolved through refs/) or the call fails with ErrOffline;
//   - otherwise a HEAD request gives the commit, the blob's ETag and size;
//     refs/<revision> is updated, and a blob already present is linked
//     without downloading; when the Hub cannot be reached (or refuses the
//     token) the cached file is used if there is one;
//   - a download goes to blobs/<etag>.incomplete, resuming a previous
//     partial file with a Range request, is checked against the size and,
//     for LFS files (a sha256 ETag), the sha256, then renamed into
//     blobs/<etag> and linked from snapshots/<commit>/<file>.
func (c *Client) Download(ctx context.Context, repo, revision, file string) (string, error) {
	if revision == "" {
		revision = DefaultRevision
	}
	fail := func(err error) (string, error) {
		return "", &Error{Repo: repo, Revision: revision, File: file, Err: err}
	}
	if err := ValidateRepoID(repo); err != nil {
		return fail(err)
	}
	if err := checkRelPath(file); err != nil {
		return fail(err)
	}
	if err := checkRevision(revision); err != nil {
		return fail(err)
	}
	rel := filepath.FromSlash(file)
	if IsCommitHash(revision) {
		if p := filepath.Join(c.SnapshotDir(repo, revision), rel); isFile(p) {
			return p, nil
		}
	}
	if c.Offline {
		if p, _, ok := c.CachedFile(repo, revision, file); ok {
			return p, nil
		}
		return fail(fmt.Errorf("%w (cache: %s)", ErrOffline, c.RepoDir(repo)))
	}
	meta, err := c.metadata(ctx, repo, revision, file)
	if err != nil {
		if errors.Is(err, ErrEntryNotFound) || errors.Is(err, ErrRevisionNotFound) || ctx.Err() != nil {
			return fail(err)
		}
		// The Hub is down, unreachable, or refuses the token: use the cached
		// copy if there is one, as huggingface_hub does.
		if p, _, ok := c.CachedFile(repo, revision, file); ok {
			return p, nil
		}
		var he *HTTPError
		if errors.As(err, &he) {
			return fail(err)
		}
		return fail(fmt.Errorf("%w: %v", ErrNotCached, err))
	}
	repoDir := c.RepoDir(repo)
	blob := filepath.Join(repoDir, "blobs", meta.etag)
	pointer := filepath.Join(c.SnapshotDir(repo, meta.commit), rel)
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(filepath.Dir(pointer), 0o755); err != nil {
		return fail(err)
	}
	if err := c.writeRef(repo, revision, meta.commit); err != nil {
		return fail(err)
	}
	if isFile(pointer) {
		return pointer, nil
	}
	if isFile(blob) {
		if err := linkBlob(blob, pointer); err != nil {
			return fail(err)
		}
		return pointer, nil
	}
	lockPath := filepath.Join(c.CacheDir, ".locks", RepoFolderName(repo), meta.etag+".lock")
	unlock, err := lockFile(ctx, lockPath)
	if err != nil {
		return fail(err)
	}
	err = c.fetchBlob(ctx, meta, file, blob)
	if err == nil && !isFile(pointer) {
		err = linkBlob(blob, pointer)
	}
	unlock()
	if err != nil {
		return fail(err)
	}
	return pointer, nil
}

// FileURL is the resolve URL of file in repo at revision.
func (c *Client) FileURL(repo, revision, file string) string {
	segs := strings.Split(file, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return c.Endpoint + "/" + repo + "/resolve/" + url.PathEscape(revision) + "/" + strings.Join(segs, "/")
}

// headers are those of build_hf_headers; the token only goes to the Hub.
func (c *Client) setHeaders(req *http.Request, auth bool) {
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	if auth && c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	// Never compressed: the size must be the file's.
	req.Header.Set("Accept-Encoding", "identity")
}

// metadata is get_hf_file_metadata: a HEAD request that follows relative
// redirects (a renamed repository) but not absolute ones (the CDN of LFS
// files, whose signed URL becomes the download location). A 404
// EntryNotFound is recorded in .no_exist/<commit>/ as huggingface_hub does.
func (c *Client) metadata(ctx context.Context, repo, revision, file string) (fileMeta, error) {
	if c.MetadataTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.MetadataTimeout)
		defer cancel()
	}
	hc := *c.httpClient()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	u := c.FileURL(repo, revision, file)
	var resp *http.Response
	for hops := 0; ; hops++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
		if err != nil {
			return fileMeta{}, err
		}
		c.setHeaders(req, true)
		resp, err = hc.Do(req)
		if err != nil {
			return fileMeta{}, err
		}
		resp.Body.Close()
		if resp.StatusCode < 300 || resp.StatusCode > 399 {
			break
		}
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil {
			return fileMeta{}, fmt.Errorf("redirect with a bad Location: %w", err)
		}
		if loc.Host != "" || hops >= 10 {
			break // to a CDN: its URL is where the file is downloaded from
		}
		next := *req.URL // relative: same site, the path of the target
		next.Path, next.RawPath = loc.Path, loc.RawPath
		u = next.String()
	}
	if resp.StatusCode >= 400 {
		err := statusError(resp, false)
		if resp.Header.Get("X-Error-Code") == "EntryNotFound" {
			if commit := resp.Header.Get("X-Repo-Commit"); IsCommitHash(commit) {
				ne := filepath.Join(c.RepoDir(repo), ".no_exist", commit, filepath.FromSlash(file))
				if os.MkdirAll(filepath.Dir(ne), 0o755) == nil {
					if f, e := os.OpenFile(ne, os.O_CREATE|os.O_WRONLY, 0o644); e == nil {
						f.Close()
					}
				}
				_ = c.writeRef(repo, revision, commit)
			}
		}
		return fileMeta{}, err
	}
	m := fileMeta{commit: resp.Header.Get("X-Repo-Commit"), location: resp.Header.Get("Location")}
	if m.location == "" {
		m.location = resp.Request.URL.String()
	} else if lu, err := resp.Request.URL.Parse(m.location); err == nil {
		m.location = lu.String()
	}
	etag := resp.Header.Get("X-Linked-Etag")
	if etag == "" {
		etag = resp.Header.Get("ETag")
	}
	m.etag = normalizeETag(etag)
	sz := resp.Header.Get("X-Linked-Size")
	if sz == "" {
		sz = resp.Header.Get("Content-Length")
	}
	size, err := strconv.ParseInt(sz, 10, 64)
	if sz == "" && resp.ContentLength >= 0 {
		size, err = resp.ContentLength, nil
	}
	switch {
	case m.commit == "":
		return m, fmt.Errorf("%s: no X-Repo-Commit header: the server does not look like a Hugging Face Hub (check HF_ENDPOINT, proxy and firewall)", u)
	case !IsCommitHash(m.commit):
		return m, fmt.Errorf("%s: X-Repo-Commit %q is not a commit hash", u, m.commit)
	case m.etag == "":
		return m, fmt.Errorf("%s: no ETag: the file's version cannot be checked", u)
	case !etagRe.MatchString(m.etag):
		return m, fmt.Errorf("%s: ETag %q cannot name a blob", u, m.etag)
	case err != nil || size < 0:
		return m, fmt.Errorf("%s: no valid X-Linked-Size or Content-Length (%q)", u, sz)
	}
	m.size = size
	return m, nil
}

// normalizeETag is _normalize_etag: without a weak "W/" prefix and quotes.
func normalizeETag(etag string) string {
	return strings.Trim(strings.TrimLeft(etag, "W/"), `"`)
}

// fetchBlob downloads meta.location into blob (through blob.incomplete),
// resuming a partial file, retrying cuts c.Retries times, and checking the
// size and, for LFS blobs, the sha256 before the atomic rename.
func (c *Client) fetchBlob(ctx context.Context, meta fileMeta, file, blob string) error {
	if isFile(blob) {
		return nil
	}
	incomplete := blob + ".incomplete"
	f, err := os.OpenFile(incomplete, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return err
	}
	defer f.Close()
	var h hash.Hash
	if sha256Re.MatchString(meta.etag) {
		h = sha256.New()
	}
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if have > meta.size {
		have = 0 // not a prefix of this file
		if err := f.Truncate(0); err != nil {
			return err
		}
	}
	if h != nil && have > 0 {
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, have)); err != nil {
			return err
		}
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return err
	}
	var bar *progressbar.ProgressBar
	if c.Progress != nil && have < meta.size {
		bar = progressbar.NewOptions64(meta.size, progressbar.OptionSetWriter(c.Progress),
			progressbar.OptionSetDescription(displayName(file)), progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true), progressbar.OptionSetWidth(10), progressbar.OptionShowCount(),
			progressbar.OptionThrottle(65*time.Millisecond), progressbar.OptionClearOnFinish())
		_ = bar.Set64(have)
		defer bar.Finish()
	}
	// The token goes to the Hub only: a CDN's URL is signed.
	auth := sameHost(meta.location, c.Endpoint)
	for try := 0; have < meta.size; try++ {
		n, restart, err := c.get(ctx, meta.location, have, auth, f, h, bar)
		if restart {
			have = 0 // the server ignored the Range: the body is the whole file
			if h != nil {
				h.Reset()
			}
		}
		have += n
		if err == nil {
			break
		}
		if ctx.Err() != nil || try >= c.Retries || !isTransient(err) {
			return fmt.Errorf("download interrupted at %d of %d bytes (the partial file %s is resumed on the next call): %w",
				have, meta.size, incomplete, err)
		}
	}
	if have != meta.size {
		f.Close()
		os.Remove(incomplete)
		return fmt.Errorf("%w: size should be %d but is %d (removed the partial file)", ErrChecksum, meta.size, have)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != meta.etag {
			f.Close()
			os.Remove(incomplete)
			return fmt.Errorf("%w: sha256 should be %s but is %s (removed the partial file)", ErrChecksum, meta.etag, got)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(incomplete, blob)
}

// get streams location from byte offset into w (and h, bar). restart is
// true when the server answered a Range request with the whole file (w
// was truncated first).
func (c *Client) get(ctx context.Context, location string, offset int64, auth bool, w *os.File, h hash.Hash, bar *progressbar.ProgressBar) (n int64, restart bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, location, nil)
	if err != nil {
		return 0, false, err
	}
	c.setHeaders(req, auth)
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	hc := *c.httpClient()
	hc.CheckRedirect = nil
	resp, err := hc.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 400:
		return 0, false, statusError(resp, false)
	case offset > 0 && resp.StatusCode == http.StatusOK:
		if err := w.Truncate(0); err != nil {
			return 0, false, err
		}
		if _, err := w.Seek(0, io.SeekStart); err != nil {
			return 0, false, err
		}
		restart = true
	case offset > 0 && resp.StatusCode == http.StatusPartialContent:
		var start int64 = -1
		fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start)
		if start != offset {
			return 0, false, fmt.Errorf("asked for bytes from %d, got Content-Range %q", offset, resp.Header.Get("Content-Range"))
		}
	case resp.StatusCode != http.StatusOK:
		return 0, false, fmt.Errorf("GET %s: unexpected status %s", resp.Request.URL.Redacted(), resp.Status)
	}
	ws := []io.Writer{w}
	if h != nil {
		ws = append(ws, h)
	}
	if bar != nil {
		if restart {
			bar.Reset()
		}
		ws = append(ws, bar)
	}
	n, err = io.Copy(io.MultiWriter(ws...), resp.Body)
	return n, restart, err
}

// isTransient tells errors worth resuming after: a cut connection or a
// timeout, not an HTTP status or a local disk error.
func isTransient(err error) bool {
	var he *HTTPError
	if errors.As(err, &he) {
		return false
	}
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.As(err, &ne) ||
		strings.Contains(err.Error(), "connection reset")
}

func sameHost(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Host == ub.Host
}

func displayName(file string) string {
	if len(file) > 40 {
		return "(…)" + file[len(file)-40:]
	}
	return file
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
