package hub

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultEndpoint is the Hub's address when HF_ENDPOINT is not set.
const DefaultEndpoint = "https://huggingface.co"

// DefaultRevision is the revision used when none is given.
const DefaultRevision = "main"

// Client downloads files from a Hub into the local cache. The zero value is
// not usable: build one with [FromEnv] and adjust its fields.
type Client struct {
	// Endpoint is the Hub's base URL, without a trailing slash.
	Endpoint string
	// Token is sent as "Authorization: Bearer <token>" to the Hub (not to
	// the CDN hosts that LFS files are redirected to). Empty: none.
	Token string
	// CacheDir is the hub cache folder holding models--org--name/.
	CacheDir string
	// Offline forbids every network access: files come from the cache or
	// the call fails with an error matching ErrOffline.
	Offline bool
	// HTTP is the client requests go through (nil: http.DefaultClient's
	// transport). Its CheckRedirect is not used: redirects are handled
	// here as huggingface_hub handles them.
	HTTP *http.Client
	// Progress receives a progress bar per downloaded file; nil: quiet.
	Progress io.Writer
	// Retries is how many times a download cut mid-file is resumed within
	// one call (huggingface_hub retries 5 times); the partial file is kept
	// for the next call either way.
	Retries int
	// MetadataTimeout bounds the HEAD and listing requests (0: none).
	MetadataTimeout time.Duration
	// UserAgent is sent with every request.
	UserAgent string
}

// FromEnv returns a client configured from the environment as
// huggingface_hub reads it: HF_ENDPOINT (default https://huggingface.co),
// HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, or the token file at HF_TOKEN_PATH,
// default $HF_HOME/token), HF_HUB_CACHE (or HUGGINGFACE_HUB_CACHE, default
// $HF_HOME/hub with HF_HOME defaulting to $XDG_CACHE_HOME/huggingface or
// ~/.cache/huggingface), HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE; 1, ON,
// YES or TRUE), HF_HUB_ETAG_TIMEOUT (seconds, default 10). Progress bars
// go to standard error unless HF_HUB_DISABLE_PROGRESS_BARS is true.
func FromEnv() *Client {
	c := &Client{
		Endpoint:        strings.TrimRight(envOr("HF_ENDPOINT", DefaultEndpoint), "/"),
		Token:           envToken(),
		CacheDir:        CacheDir(),
		Offline:         isTrue(os.Getenv("HF_HUB_OFFLINE")) || isTrue(os.Getenv("TRANSFORMERS_OFFLINE")),
		Retries:         5,
		MetadataTimeout: time.Duration(envInt("HF_HUB_ETAG_TIMEOUT", 10)) * time.Second,
		UserAgent:       "dp2o-hub/1",
	}
	if !isTrue(os.Getenv("HF_HUB_DISABLE_PROGRESS_BARS")) {
		c.Progress = os.Stderr
	}
	c.HTTP = &http.Client{Transport: transport(time.Duration(envInt("HF_HUB_DOWNLOAD_TIMEOUT", 10)) * time.Second)}
	return c
}

var (
	transportsMu sync.Mutex
	transports   = map[time.Duration]*http.Transport{}
)

// transport is a shared transport (its idle connections reused by every
// client of FromEnv) whose servers must answer within timeout.
func transport(timeout time.Duration) *http.Transport {
	transportsMu.Lock()
	defer transportsMu.Unlock()
	tr := transports[timeout]
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = timeout
		transports[timeout] = tr
	}
	return tr
}

// Home is huggingface_hub's HF_HOME: $HF_HOME, else
// $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface.
func Home() string {
	if h := os.Getenv("HF_HOME"); h != "" {
		return expandUser(h)
	}
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
		return filepath.Join(expandUser(x), "huggingface")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "~"
	}
	return filepath.Join(home, ".cache", "huggingface")
}

// CacheDir is huggingface_hub's HF_HUB_CACHE: $HF_HUB_CACHE, else the
// legacy $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub.
func CacheDir() string {
	if d := os.Getenv("HF_HUB_CACHE"); d != "" {
		return expandUser(d)
	}
	if d := os.Getenv("HUGGINGFACE_HUB_CACHE"); d != "" {
		return expandUser(d)
	}
	return filepath.Join(Home(), "hub")
}

// envToken reads the token as huggingface_hub's get_token does (without
// its Google Colab source): HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the
// token file. Line breaks and surrounding spaces are removed.
func envToken() string {
	clean := func(s string) string {
		return strings.TrimSpace(strings.NewReplacer("\r", "", "\n", "").Replace(s))
	}
	if t := clean(os.Getenv("HF_TOKEN")); t != "" {
		return t
	}
	if t := clean(os.Getenv("HUGGING_FACE_HUB_TOKEN")); t != "" {
		return t
	}
	path := os.Getenv("HF_TOKEN_PATH")
	if path == "" {
		path = filepath.Join(Home(), "token")
	}
	b, err := os.ReadFile(expandUser(path))
	if err != nil {
		return ""
	}
	return clean(string(b))
}

// isTrue is huggingface_hub's _is_true: 1, ON, YES or TRUE in any case.
func isTrue(v string) bool {
	switch strings.ToUpper(v) {
	case "1", "ON", "YES", "TRUE":
		return true
	}
	return false
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(key)); err == nil && n > 0 {
		return n
	}
	return def
}

func expandUser(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}
