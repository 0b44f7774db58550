package hub

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Errors matched with errors.Is. Each comes wrapped in an [*Error] naming
// the repository, revision and file.
var (
	// ErrOffline: offline mode (HF_HUB_OFFLINE) and the file is not cached.
	ErrOffline = errors.New("offline mode (HF_HUB_OFFLINE=1) and not in the local cache")
	// ErrRepoNotFound: the Hub knows no such repository, or it is private
	// or gated and no valid token was sent.
	ErrRepoNotFound = errors.New("repository not found (if it is private or gated, set HF_TOKEN to a token with access)")
	// ErrGated: the repository is gated and the token has no access.
	ErrGated = errors.New("gated repository: accept its conditions on the Hub with your account and set HF_TOKEN")
	// ErrRevisionNotFound: the repository has no such branch, tag or commit.
	ErrRevisionNotFound = errors.New("revision not found")
	// ErrEntryNotFound: the repository has no such file at that revision.
	ErrEntryNotFound = errors.New("file not found in the repository")
	// ErrChecksum: the downloaded bytes do not match the Hub's sha256 (or
	// size); the partial file is removed.
	ErrChecksum = errors.New("downloaded file does not match the Hub's checksum")
	// ErrNotCached: the Hub could not be reached and the file is not cached.
	ErrNotCached = errors.New("the Hub could not be reached and the file is not in the local cache")
)

// Error reports a failed Hub operation on one repository file (File is
// empty for repository-wide operations such as listing).
type Error struct {
	Repo     string
	Revision string
	File     string
	Err      error
}

// Error formats the error as "hub: <repo>@<revision>: <file>: <problem>".
func (e *Error) Error() string {
	s := "hub: " + e.Repo
	if e.Revision != "" {
		s += "@" + e.Revision
	}
	if e.File != "" {
		s += ": " + e.File
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// HTTPError is an unexpected HTTP status from the Hub or its CDN. It
// matches the sentinel its X-Error-Code (or status) stands for.
type HTTPError struct {
	Status  int
	URL     string
	Code    string // X-Error-Code
	Message string // X-Error-Message, or the start of the body
	kind    error
}

// Error formats the status, the URL and the Hub's explanation.
func (e *HTTPError) Error() string {
	s := fmt.Sprintf("%d %s for %s", e.Status, http.StatusText(e.Status), e.URL)
	if e.kind != nil {
		s += ": " + e.kind.Error()
	}
	if e.Message != "" {
		s += " (" + e.Message + ")"
	}
	return s
}

// Unwrap returns the sentinel matching the status (ErrRepoNotFound, ...), if any.
func (e *HTTPError) Unwrap() error { return e.kind }

// statusError reads a failed response the way huggingface_hub's
// hf_raise_for_status does: X-Error-Code decides the kind; a 401 on an API
// URL means the repository was not found (or is private/gated).
func statusError(r *http.Response, api bool) error {
	e := &HTTPError{Status: r.StatusCode, URL: r.Request.URL.Redacted(), Code: r.Header.Get("X-Error-Code"),
		Message: r.Header.Get("X-Error-Message")}
	if e.Message == "" && r.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 300))
		e.Message = strings.TrimSpace(string(b))
	}
	switch {
	case e.Code == "RevisionNotFound":
		e.kind = ErrRevisionNotFound
	case e.Code == "EntryNotFound":
		e.kind = ErrEntryNotFound
	case e.Code == "GatedRepo":
		e.kind = ErrGated
	case e.Code == "RepoNotFound", r.StatusCode == http.StatusUnauthorized && api:
		e.kind = ErrRepoNotFound
	case r.StatusCode == http.StatusUnauthorized, r.StatusCode == http.StatusForbidden:
		e.kind = ErrRepoNotFound
	case r.StatusCode == http.StatusNotFound:
		e.kind = ErrEntryNotFound
	}
	return e
}
