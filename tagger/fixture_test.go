package tagger

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/vision/swin"
)

// taggerCases is fixtures/ram/tagger/cases.json.
type taggerCases struct {
	Thresholds        string `json:"thresholds"`
	VariantThresholds string `json:"variant_thresholds"`
	LoRA              struct {
		R       int     `json:"r"`
		Alpha   float64 `json:"lora_alpha"`
		Scaling float64 `json:"scaling"`
		File    string  `json:"file"`
	} `json:"lora"`
	MergedKeys int `json:"merged_keys"`
	Cases      []taggerCase
}

type decisionRef struct {
	Thresholds string  `json:"thresholds"`
	Tags       string  `json:"tags"`
	TagIndices []int   `json:"tag_indices"`
	NTags      int     `json:"n_tags"`
	MinMargin  float64 `json:"min_margin"`
}

type taggerCase struct {
	Name     string `json:"name"`
	Input    string `json:"input"`
	Tensors  string `json:"tensors"`
	TagsFile string `json:"tags_file"`
	decisionRef
	Variant    decisionRef        `json:"variant"`
	Base       decisionRef        `json:"base_no_dape"`
	ProbeTags  []int64            `json:"probe_tags"`
	Shapes     map[string][]int64 `json:"shapes"`
	image      string             // the PNG, relative to ram/
	pixels     string             // the safetensors file of the model input, relative to ram/
	pixelsName string             // the tensor in it
}

// parseInput reads "swin/0003.png -> swin/0003_input.safetensors:pixel_values".
func (c *taggerCase) parseInput() error {
	img, rest, ok := strings.Cut(c.Input, "->")
	file, name, ok2 := strings.Cut(strings.TrimSpace(rest), ":")
	if !ok || !ok2 {
		return fmt.Errorf("case %s: cannot read input %q", c.Name, c.Input)
	}
	c.image, c.pixels, c.pixelsName = strings.TrimSpace(img), file, name
	return nil
}

func readTaggerCases() (*taggerCases, error) {
	raw, err := os.ReadFile(fixturePath("ram/tagger/cases.json"))
	if err != nil {
		return nil, err
	}
	var c taggerCases
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	if len(c.Cases) == 0 {
		return nil, fmt.Errorf("tagger/cases.json: no cases")
	}
	for i := range c.Cases {
		if err := c.Cases[i].parseInput(); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// fixtureModel is the full-size tagger loaded once for the package through
// the published checkpoint layouts: the regenerated weights written as
// ram_swin_large_14m.pth (checkpoint['model'], training-time vision_multi
// names, buffers, every unused Tag2Text tensor) and DAPE.pth (flat, all
// 248 LoRA tensors), then read back by Load's path. The logits of each case
// without DAPE are kept from before the LoRA merge.
type fixtureModel struct {
	tagger            *Tagger
	cases             *taggerCases
	baseLogits        map[string]*torch.Tensor
	dir               string
	ramPath, dapePath string
	ramKeys, dapeKeys int
}

var fixtureStarted atomic.Bool

var loadFixture = sync.OnceValues(func() (*fixtureModel, error) {
	fixtureStarted.Store(true)
	cases, err := readTaggerCases()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "dp2o-tagger-")
	if err != nil {
		return nil, err
	}
	fm := &fixtureModel{cases: cases, dir: dir, baseLogits: map[string]*torch.Tensor{},
		ramPath: filepath.Join(dir, "ram_swin_large_14m.pth"), dapePath: filepath.Join(dir, "DAPE.pth")}
	w, base, err := fixtureWeights()
	if err != nil {
		return fm, err
	}
	ramLayout, err := readLayout("ram/keys/ram_swin_large_14m.model.json")
	if err != nil {
		base.Close()
		return fm, err
	}
	toTraining := func(k string) string {
		if rest, ok := strings.CutPrefix(k, "tagging_head."); ok {
			return "vision_multi." + rest
		}
		return k
	}
	fm.ramKeys, err = writeLayout(fm.ramPath, "model", ramLayout, base, toTraining)
	base.Close()
	if err != nil {
		return fm, err
	}
	lora, err := loadShippedLoRA(w)
	if err != nil {
		return fm, err
	}
	dapeLayout, err := readLayout("ram/keys/DAPE.json")
	if err == nil {
		fm.dapeKeys, err = writeLayout(fm.dapePath, "", dapeLayout, lora, func(k string) string { return k })
	}
	lora.Close()
	if err != nil {
		return fm, err
	}
	vision, err := fixtureVisionConfig()
	if err != nil {
		return fm, err
	}
	cfg, err := Options{TagList: fixturePath("ram/data/ram_tag_list.txt"), Thresholds: fixturePath(filepath.Join("ram", cases.Thresholds)),
		Vision: &vision}.Config()
	if err != nil {
		return fm, err
	}
	t, err := LoadRAM(fm.ramPath, cfg, torch.CPU)
	if err != nil {
		return fm, err
	}
	fm.tagger = t
	for _, c := range cases.Cases {
		x, err := casePixels(c, cfg.Vision.ImageSize)
		if err != nil {
			return fm, err
		}
		logits, err := t.Logits(x)
		x.Close()
		if err != nil {
			return fm, err
		}
		fm.baseLogits[c.Name] = logits
	}
	return fm, t.LoadDAPE(fm.dapePath)
})

func loadCaseImage(c taggerCase) (*imageio.RGB8, error) {
	return imageio.Load(fixturePath(filepath.Join("ram", c.image)))
}

// casePixels preprocesses the case's PNG as the official script does.
func casePixels(c taggerCase, size int64) (*torch.Tensor, error) {
	img, err := imageio.Load(fixturePath(filepath.Join("ram", c.image)))
	if err != nil {
		return nil, err
	}
	return Preprocess(img, size, torch.CPU)
}

// fixtureVisionConfig is the encoder config of swin/cases.json.
func fixtureVisionConfig() (swin.Config, error) {
	raw, err := os.ReadFile(fixturePath("ram/swin/cases.json"))
	if err != nil {
		return swin.Config{}, err
	}
	var doc struct {
		Model json.RawMessage `json:"model"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return swin.Config{}, err
	}
	return swin.ParseConfig(doc.Model)
}

func (fm *fixtureModel) close() {
	if fm == nil {
		return
	}
	if fm.tagger != nil {
		fm.tagger.Close()
	}
	for _, t := range fm.baseLogits {
		t.Close()
	}
	os.RemoveAll(fm.dir)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureStarted.Load() {
		fm, _ := loadFixture()
		fm.close()
	}
	os.Exit(code)
}

func fixture(t *testing.T) *fixtureModel {
	t.Helper()
	fm, err := loadFixture()
	require.NoError(t, err)
	return fm
}

func maxAbs(t *torch.Tensor) float64 {
	var m float64
	for _, v := range t.Float64s() {
		if v < 0 {
			v = -v
		}
		m = max(m, v)
	}
	return m
}

func decisionBytes(n int, idx []int) []byte {
	b := make([]byte, n)
	for _, i := range idx {
		b[i] = 1
	}
	return b
}

func joinIndices(tags []string, idx []int) string {
	names := make([]string, len(idx))
	for i, j := range idx {
		names[i] = tags[j]
	}
	return JoinTags(names)
}
