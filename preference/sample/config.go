package sample

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Format names the layout of a candidate folder (sample.json, manifests).
const Format = "dp2o-candidates/1"

// Settings are the pipeline settings every candidate of a set shares; they
// are copied into each manifest record.
type Settings struct {
	Model             string  `json:"model"`      // "sd2" (C-SD2) or "flux" (C-FLUX)
	Base              string  `json:"base"`       // base model folder or id
	ControlNet        string  `json:"controlnet"` // ControlNet checkpoint
	Steps             int     `json:"steps"`
	GuidanceScale     float64 `json:"guidance_scale"`
	ConditioningScale float64 `json:"conditioning_scale"`
	NegativePrompt    string  `json:"negative_prompt,omitempty"` // SD2's CFG negative prompt
	ProcessSize       int     `json:"process_size"`
	Upscale           int     `json:"upscale"`
	AlignMethod       string  `json:"align_method"`
	PadTo16           bool    `json:"pad16,omitempty"`
	DType             string  `json:"dtype"`
	Device            string  `json:"device"`  // device type ("cpu", "cuda"): outputs differ between them
	Prompts           string  `json:"prompts"` // where prompts come from: "fixed", "tagger", "file"
}

// Config is what a candidate set is made with (sample.json): the pipeline
// settings, the noise pool (candidate k of every input is sampled with
// Seeds[k]) and the batch size (part of the identity because batched
// networks round differently: the same batch size gives the same bytes).
type Config struct {
	Format    string   `json:"format"`
	Settings  Settings `json:"settings"`
	Seeds     []uint64 `json:"seeds"`
	BatchSize int      `json:"batch_size"`
}

// SeedPool is the noise pool of m candidates starting at base: base, base+1, ….
func SeedPool(base uint64, m int) []uint64 {
	s := make([]uint64, m)
	for k := range s {
		s[k] = base + uint64(k)
	}
	return s
}

// M is the number of candidates per input.
func (c Config) M() int { return len(c.Seeds) }

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Format != Format {
		return fmt.Errorf("sample: format %q, want %q", c.Format, Format)
	}
	if c.Settings.Model != "sd2" && c.Settings.Model != "flux" {
		return fmt.Errorf("sample: model %q: want sd2 or flux", c.Settings.Model)
	}
	if len(c.Seeds) == 0 {
		return errors.New("sample: empty noise pool (no candidates per input)")
	}
	seen := map[uint64]bool{}
	for _, s := range c.Seeds {
		if seen[s] {
			return fmt.Errorf("sample: seed %d appears twice in the noise pool", s)
		}
		seen[s] = true
	}
	if c.BatchSize < 1 {
		return fmt.Errorf("sample: batch size %d: want at least 1", c.BatchSize)
	}
	if c.Settings.Steps < 1 {
		return fmt.Errorf("sample: %d steps: want at least 1", c.Settings.Steps)
	}
	return nil
}

// ID is a short fingerprint of the configuration (hex of the first 8
// bytes of the SHA-256 of its JSON); every manifest record carries it.
func (c Config) ID() string {
	b, _ := json.Marshal(c)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// ConfigFile is the name of the configuration file in a candidate folder.
const ConfigFile = "sample.json"

// LoadConfig reads dir's sample.json.
func LoadConfig(dir string) (Config, error) {
	var c Config
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return c, fmt.Errorf("sample: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("sample: %s: %w", filepath.Join(dir, ConfigFile), err)
	}
	return c, c.Validate()
}

// prepareDir creates dir and its sample.json, or checks that an existing
// one holds the same configuration: a folder made with other settings is
// refused, never mixed.
func prepareDir(dir string, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, CandidateDir), 0o755); err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	want, err := json.MarshalIndent(c, "", " ")
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	want = append(want, '\n')
	path := filepath.Join(dir, ConfigFile)
	have, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return writeAtomic(path, want)
	case err != nil:
		return fmt.Errorf("sample: %w", err)
	}
	var old Config
	if err := json.Unmarshal(have, &old); err != nil {
		return fmt.Errorf("sample: %s: %w", path, err)
	}
	if old.ID() != c.ID() {
		return fmt.Errorf("sample: %s was made with another configuration (%s):\n  there: %s\n  now:   %s\nuse another output folder or the same settings",
			dir, describeDiff(old, c), compact(have), compact(want))
	}
	return nil
}

func compact(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// describeDiff names the top-level fields that differ.
func describeDiff(a, b Config) string {
	var d []string
	if a.Settings != b.Settings {
		d = append(d, "settings")
	}
	if fmt.Sprint(a.Seeds) != fmt.Sprint(b.Seeds) {
		d = append(d, fmt.Sprintf("noise pool (%d vs %d seeds)", len(a.Seeds), len(b.Seeds)))
	}
	if a.BatchSize != b.BatchSize {
		d = append(d, fmt.Sprintf("batch size %d vs %d", a.BatchSize, b.BatchSize))
	}
	if a.Format != b.Format {
		d = append(d, "format")
	}
	if len(d) == 0 {
		return "differs"
	}
	return fmt.Sprint(d)
}
