// Package hubtest runs an in-process stand-in for the Hugging Face Hub for
// tests: repositories with branches and commits, the resolve endpoint with
// the Hub's headers (X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size,
// X-Error-Code), LFS files redirected to a separate CDN host that honours
// Range requests, the repo_info API, gated and private repositories,
// renamed repositories (relative redirects) and injected faults
// (connections cut mid-file, corrupted bytes). Every request is logged.
package hubtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Repo is a repository on the fake Hub.
type Repo struct {
	// Refs maps branch and tag names to commit hashes.
	Refs map[string]string
	// Commits maps commit hashes to the files ('/'-separated paths) and
	// their contents at that commit.
	Commits map[string]map[string][]byte
	// Gated repositories answer 401 GatedRepo unless the request carries
	// the server's Token.
	Gated bool
	// LFS tells which files are stored in LFS (sha256 ETag, served by the
	// CDN). Nil: files ending in .safetensors, .bin, .pth or .ckpt.
	LFS func(name string) bool
}

// Request is one logged request.
type Request struct {
	Host   string // "hub" or "cdn"
	Method string
	Path   string
	Range  string
	Auth   string // Authorization header
}

// Server is the fake Hub and its CDN.
type Server struct {
	Hub, CDN *httptest.Server
	// Token is the bearer token gated repositories accept.
	Token string

	mu       sync.Mutex
	repos    map[string]*Repo
	renamed  map[string]string
	cuts     map[string][]int64 // file -> bytes sent before the connection is cut, one entry per request
	corrupt  map[string]bool
	requests []Request
}

// New starts a fake Hub and CDN; they stop at Close.
func New() *Server {
	s := &Server{repos: map[string]*Repo{}, renamed: map[string]string{}, cuts: map[string][]int64{}, corrupt: map[string]bool{}}
	s.Hub = httptest.NewServer(http.HandlerFunc(s.serveHub))
	s.CDN = httptest.NewServer(http.HandlerFunc(s.serveCDN))
	return s
}

// Close stops both servers.
func (s *Server) Close() {
	s.Hub.Close()
	s.CDN.Close()
}

// URL is the Hub's endpoint (for HF_ENDPOINT).
func (s *Server) URL() string { return s.Hub.URL }

// AddRepo adds (or replaces) repository id.
func (s *Server) AddRepo(id string, r *Repo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repos[id] = r
}

// Rename makes requests for old redirect (relative 307) to the same path
// under id, as the Hub does for a renamed repository.
func (s *Server) Rename(old, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.renamed[old] = id
}

// CutAfter makes the next downloads of file (a path in the repository)
// send only the given numbers of bytes each before the connection is cut.
func (s *Server) CutAfter(file string, bytes ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cuts[file] = append(s.cuts[file], bytes...)
}

// Corrupt makes the CDN serve file with its first byte flipped.
func (s *Server) Corrupt(file string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corrupt[file] = on
}

// Requests returns the requests logged so far and clears the log.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.requests
	s.requests = nil
	return r
}

// GitBlobSHA1 is the git object id of content: the ETag of a non-LFS file.
func GitBlobSHA1(content []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(content))
	h.Write(content)
	return hex.EncodeToString(h.Sum(nil))
}

// SHA256 is the hex sha256 of content: the ETag of an LFS file.
func SHA256(content []byte) string {
	s := sha256.Sum256(content)
	return hex.EncodeToString(s[:])
}

func (s *Server) log(host string, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, Request{Host: host, Method: r.Method, Path: r.URL.Path,
		Range: r.Header.Get("Range"), Auth: r.Header.Get("Authorization")})
}

func hubError(w http.ResponseWriter, status int, code, msg, commit string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	if commit != "" {
		w.Header().Set("X-Repo-Commit", commit)
	}
	w.WriteHeader(status)
}

// lookup finds the repository and the commit of revision.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request, id, rev string) (*Repo, string, bool) {
	s.mu.Lock()
	repo := s.repos[id]
	s.mu.Unlock()
	if repo == nil {
		hubError(w, http.StatusUnauthorized, "RepoNotFound", "Repository not found", "")
		return nil, "", false
	}
	if repo.Gated && r.Header.Get("Authorization") != "Bearer "+s.Token {
		hubError(w, http.StatusUnauthorized, "GatedRepo", "Access to model "+id+" is restricted.", "")
		return nil, "", false
	}
	commit := repo.Refs[rev]
	if commit == "" {
		if _, ok := repo.Commits[rev]; ok {
			commit = rev
		}
	}
	if commit == "" {
		hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev, "")
		return nil, "", false
	}
	return repo, commit, true
}

func (s *Server) serveHub(w http.ResponseWriter, r *http.Request) {
	s.log("hub", r)
	p := r.URL.EscapedPath()
	if rest, ok := strings.CutPrefix(p, "/api/models/"); ok {
		s.serveInfo(w, r, rest)
		return
	}
	// /{org}/{name}/resolve/{revision}/{file...}
	parts := strings.SplitN(strings.TrimPrefix(p, "/"), "/", 5)
	if len(parts) < 5 || parts[2] != "resolve" {
		http.NotFound(w, r)
		return
	}
	id := parts[0] + "/" + parts[1]
	s.mu.Lock()
	to, renamed := s.renamed[id]
	s.mu.Unlock()
	if renamed {
		w.Header().Set("Location", "/"+to+"/"+strings.Join(parts[2:], "/"))
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	rev, err1 := url.PathUnescape(parts[3])
	file, err2 := url.PathUnescape(parts[4])
	if err1 != nil || err2 != nil {
		http.Error(w, "bad path", http.StatusBadRequest)
		return
	}
	repo, commit, ok := s.lookup(w, r, id, rev)
	if !ok {
		return
	}
	content, ok := repo.Commits[commit][file]
	if !ok {
		hubError(w, http.StatusNotFound, "EntryNotFound", "Entry not found", commit)
		return
	}
	w.Header().Set("X-Repo-Commit", commit)
	lfs := repo.LFS
	if lfs == nil {
		lfs = defaultLFS
	}
	if lfs(file) {
		sum := SHA256(content)
		pointer := fmt.Sprintf("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n", sum, len(content))
		w.Header().Set("ETag", `"`+GitBlobSHA1([]byte(pointer))+`"`)
		w.Header().Set("X-Linked-Etag", `"`+sum+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(content)))
		q := url.Values{"repo": {id}, "commit": {commit}, "file": {file}, "X-Amz-Signature": {"sig"}}
		w.Header().Set("Location", s.CDN.URL+"/blobs/"+sum+"?"+q.Encode())
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+GitBlobSHA1(content)+`"`)
	s.serveBytes(w, r, file, content)
}

func defaultLFS(name string) bool {
	for _, ext := range []string{".safetensors", ".bin", ".pth", ".ckpt"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

func (s *Server) serveCDN(w http.ResponseWriter, r *http.Request) {
	s.log("cdn", r)
	q := r.URL.Query()
	s.mu.Lock()
	repo := s.repos[q.Get("repo")]
	s.mu.Unlock()
	if repo == nil || q.Get("X-Amz-Signature") == "" {
		http.Error(w, "AccessDenied", http.StatusForbidden)
		return
	}
	content, ok := repo.Commits[q.Get("commit")][q.Get("file")]
	if !ok || "/blobs/"+SHA256(content) != r.URL.Path {
		http.Error(w, "NoSuchKey", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Disposition", `inline; filename="`+q.Get("file")+`"`)
	s.serveBytes(w, r, q.Get("file"), content)
}

// serveBytes answers HEAD and GET (with an optional "bytes=N-" Range),
// applying the injected faults.
func (s *Server) serveBytes(w http.ResponseWriter, r *http.Request, file string, content []byte) {
	s.mu.Lock()
	if s.corrupt[file] && len(content) > 0 {
		content = slices.Clone(content)
		content[0] ^= 0xff
	}
	cut := int64(-1)
	if r.Method == http.MethodGet && len(s.cuts[file]) > 0 {
		cut = s.cuts[file][0]
		s.cuts[file] = s.cuts[file][1:]
	}
	s.mu.Unlock()
	start := int64(0)
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" {
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
		if err != nil || n < 0 || n >= int64(len(content)) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(content)))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, status = n, http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, len(content)-1, len(content)))
	}
	body := content[start:]
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Accept-Ranges", "bytes")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	if cut >= 0 && cut < int64(len(body)) {
		w.Write(body[:cut])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	w.Write(body)
}

func (s *Server) serveInfo(w http.ResponseWriter, r *http.Request, rest string) {
	// {org}/{name}/revision/{revision}
	parts := strings.SplitN(rest, "/", 4)
	if len(parts) != 4 || parts[2] != "revision" {
		http.NotFound(w, r)
		return
	}
	rev, err := url.PathUnescape(parts[3])
	if err != nil {
		http.Error(w, "bad revision", http.StatusBadRequest)
		return
	}
	id := parts[0] + "/" + parts[1]
	repo, commit, ok := s.lookup(w, r, id, rev)
	if !ok {
		return
	}
	type sibling struct {
		RFilename string `json:"rfilename"`
	}
	info := struct {
		ID       string    `json:"id"`
		SHA      string    `json:"sha"`
		Siblings []sibling `json:"siblings"`
	}{ID: id, SHA: commit}
	for name := range repo.Commits[commit] {
		info.Siblings = append(info.Siblings, sibling{name})
	}
	slices.SortFunc(info.Siblings, func(a, b sibling) int { return strings.Compare(a.RFilename, b.RFilename) })
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(info)
}
