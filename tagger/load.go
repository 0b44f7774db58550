package tagger

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/vision/swin"
)

// Options configure Load. The zero value loads RAM Swin-L 384 with the
// embedded tag list and thresholds on the CPU.
type Options struct {
	Device torch.Device
	// TagList and Thresholds are ram_tag_list.txt and
	// ram_tag_list_threshold.txt ("" = the embedded copies).
	TagList, Thresholds string
	// Vision and Head override the Swin-L 384 and q2l configs.
	Vision *swin.Config
	Head   *HeadConfig
}

// ErrLayout marks a checkpoint that is not in the layout of RAM's
// ram_swin_large_14m.pth (or of DAPE.pth).
var ErrLayout = errors.New("not a RAM/DAPE checkpoint")

// Config assembles the tagger configuration the options describe.
func (o Options) Config() (Config, error) {
	cfg := Config{Vision: swin.SwinL384(), Head: Q2LConfig()}
	if o.Vision != nil {
		cfg.Vision = *o.Vision
	}
	if o.Head != nil {
		cfg.Head = *o.Head
	}
	var err error
	if cfg.Tags, err = ReadTagList(o.TagList); err != nil {
		return Config{}, err
	}
	if cfg.Thresholds, err = ReadThresholds(o.Thresholds, len(cfg.Tags)); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

// Load reads RAM's ram_swin_large_14m.pth and, when dapePath is not empty,
// merges DAPE.pth into it, as ram_lora.ram(pretrained=ramPath,
// pretrained_condition=dapePath, image_size=384, vit='swin_l') followed by
// .eval() does. Either file may instead be a .safetensors file with the
// same keys (the RAM one holding checkpoint['model']'s entries).
func Load(ramPath, dapePath string, o Options) (*Tagger, error) {
	cfg, err := o.Config()
	if err != nil {
		return nil, err
	}
	t, err := LoadRAM(ramPath, cfg, o.Device)
	if err != nil {
		return nil, err
	}
	if dapePath != "" {
		if err := t.LoadDAPE(dapePath); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// tiedLayer matches the tagging head's layers that RAM ties to the
// tag_encoder's lowest layers.
var tiedLayer = regexp.MustCompile(`^tagging_head\.encoder\.layer\.(\d+)\.(.*)$`)

// tiedEncoderLayer matches the tag_encoder keys tied to the tagging head.
var tiedEncoderLayer = regexp.MustCompile(`^tag_encoder\.encoder\.layer\.(\d+)\.(crossattention|intermediate|output)\.`)

// wanted returns the filter of the checkpoint keys that can feed the
// tagging path of a head with the given number of layers (the buffers the
// official loader drops are left out).
func wanted(layers int64) func(string) bool {
	return func(k string) bool {
		if strings.Contains(k, "relative_position_index") || strings.Contains(k, "attn_mask") {
			return false
		}
		if m := tiedEncoderLayer.FindStringSubmatch(k); m != nil {
			n, err := strconv.ParseInt(m[1], 10, 64)
			return err == nil && n < layers
		}
		for _, p := range []string{"visual_encoder.", "image_proj.", "wordvec_proj.", "fc.", "tagging_head.", "vision_multi."} {
			if strings.HasPrefix(k, p) {
				return true
			}
		}
		return k == "label_embed"
	}
}

// openCheckpoint reads the tensors of a .pth (under key, "" for a flat
// dict) or .safetensors file that keep selects, into CPU tensors.
func openCheckpoint(path, key string, keep func(string) bool) (nn.MapSource, error) {
	if strings.EqualFold(filepath.Ext(path), ".safetensors") {
		f, err := nn.OpenSafetensors(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		m := nn.MapSource{}
		for _, k := range f.Names() {
			if !keep(k) {
				continue
			}
			t, err := f.Load(k)
			if err != nil {
				m.Close()
				return nil, err
			}
			m[k] = torch.Unscope(t)
		}
		return m, nil
	}
	sd, err := pickle.Load(path, pickle.WithKey(key), pickle.WithStripPrefix(""), pickle.WithFilter(keep))
	if err != nil {
		return nil, err
	}
	m := nn.MapSource{}
	for i := range sd.Tensors {
		pt := &sd.Tensors[i]
		dt, err := torch.DTypeFromSafetensors(pt.DType)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%s: tensor %q: %w", path, pt.Name, err)
		}
		t, err := torch.FromBytes(pt.Data, dt, pt.Shape)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%s: tensor %q: %w", path, pt.Name, err)
		}
		m[pt.Name] = torch.Unscope(t)
		pt.Data = nil // let the bytes go while the rest is converted
	}
	return m, nil
}

// ramSource presents checkpoint['model'] of a RAM file under the model's
// keys, applying the official loader's rules: vision_multi.* is the
// tagging head (and wins over tagging_head.*), a tagging_head layer absent
// from the file is read from the tag_encoder layer tied to it, and
// relative position tables of another window are interpolated.
type ramSource struct {
	file   nn.MapSource
	window int64
}

func (s *ramSource) resolve(k string) (string, bool) {
	try := []string{k}
	if rest, ok := strings.CutPrefix(k, "tagging_head."); ok {
		try = []string{"vision_multi." + rest, k}
		if m := tiedLayer.FindStringSubmatch(k); m != nil {
			try = append(try, "tag_encoder.encoder.layer."+m[1]+"."+m[2])
		}
	}
	for _, f := range try {
		if _, ok := s.file[f]; ok {
			return f, true
		}
	}
	return "", false
}

// Names lists the model keys the file provides (vision_multi renamed).
func (s *ramSource) Names() []string {
	var out []string
	for _, k := range s.file.Names() {
		if rest, ok := strings.CutPrefix(k, "vision_multi."); ok {
			k = "tagging_head." + rest
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *ramSource) isTable(k string) bool {
	return strings.Contains(k, "relative_position_bias_table")
}

// Meta is the shape and dtype of model key k as loaded (tables at the
// model's window size).
func (s *ramSource) Meta(k string) ([]int64, torch.DType, bool) {
	f, ok := s.resolve(k)
	if !ok {
		return nil, 0, false
	}
	shape, dt, _ := s.file.Meta(f)
	if s.isTable(k) && len(shape) == 2 {
		n := (2*s.window - 1) * (2*s.window - 1)
		shape = []int64{n, shape[1]}
	}
	return shape, dt, true
}

// Load reads model key k from the file, interpolating a table of another
// window size.
func (s *ramSource) Load(k string) (*torch.Tensor, error) {
	f, ok := s.resolve(k)
	if !ok {
		return nil, fmt.Errorf("no tensor %q", k)
	}
	t, err := s.file.Load(f)
	if err != nil || !s.isTable(k) {
		return t, err
	}
	defer t.Close()
	out, err := swin.InterpolateRelativePositionTable(t, (2*s.window-1)*(2*s.window-1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return out, nil
}

// Close frees the file's tensors.
func (s *ramSource) Close() error { return s.file.Close() }

// LoadRAM reads a RAM checkpoint (no LoRA) into a tagger on dev.
func LoadRAM(path string, cfg Config, dev torch.Device) (*Tagger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	file, err := openCheckpoint(path, "model", wanted(cfg.Head.NumHiddenLayers))
	if err != nil {
		return nil, fmt.Errorf("ram checkpoint: %w", err)
	}
	t, err := FromRAMState(file, cfg, dev)
	if err != nil {
		return nil, fmt.Errorf("ram checkpoint %s: %w", path, err)
	}
	return t, nil
}

// FromRAMState builds a tagger from the tensors of checkpoint['model'] of a
// RAM checkpoint under their file names, applying the official loader's
// renames, drops and interpolation. It closes state.
func FromRAMState(state nn.MapSource, cfg Config, dev torch.Device) (*Tagger, error) {
	src := &ramSource{file: state, window: cfg.Vision.WindowSize}
	defer src.Close()
	if _, _, ok := src.Meta("label_embed"); !ok {
		if _, _, ok := src.Meta("visual_encoder.patch_embed.proj.weight"); !ok {
			return nil, fmt.Errorf("%w: checkpoint['model'] has neither label_embed nor visual_encoder.* (%d tensors of the tagging path found)",
				ErrLayout, len(state))
		}
	}
	t, err := FromSource(src, cfg, dev)
	if err != nil {
		return nil, fmt.Errorf("%w (a RAM Swin-L %d px checkpoint is expected)", err, cfg.Vision.ImageSize)
	}
	return t, nil
}

// loraPair is one LoRA of DAPE: the weight it updates and, for a Swin
// qkv, the enabled row groups.
type loraPair struct {
	prefix string // the module key, e.g. visual_encoder.layers.0.blocks.0.attn.qkv
	weight string // the model key of the updated weight
	groups []bool // nil: a plain lora.Linear
	needed bool   // part of DAPE's trained tagging path
}

// loraPairs lists DAPE's pairs in loralib's merge order (module
// registration order: visual_encoder, tag_encoder, tagging_head).
func (t *Tagger) loraPairs() []loraPair {
	var out []loraPair
	for i, st := range t.Vision.Layers {
		for j := range st.Blocks {
			p := fmt.Sprintf("visual_encoder.layers.%d.blocks.%d.attn.qkv", i, j)
			out = append(out, loraPair{prefix: p, weight: p + ".weight", groups: []bool{true, false, true}, needed: true})
		}
	}
	for _, enc := range []string{"tag_encoder", "tagging_head"} {
		for l := range t.Head.layers {
			for _, m := range []string{"query", "key"} {
				p := fmt.Sprintf("%s.encoder.layer.%d.crossattention.self.%s", enc, l, m)
				w := fmt.Sprintf("tagging_head.encoder.layer.%d.crossattention.self.%s.weight", l, m)
				out = append(out, loraPair{prefix: p, weight: w, needed: enc == "tagging_head"})
			}
		}
	}
	return out
}

// LoadDAPE merges a DAPE checkpoint (a flat dict of lora_A / lora_B
// tensors) into the tagger's weights, as loralib does at eval().
func (t *Tagger) LoadDAPE(path string) error {
	file, err := openCheckpoint(path, "", func(k string) bool { return strings.Contains(k, "lora_") })
	if err != nil {
		return fmt.Errorf("dape checkpoint: %w", err)
	}
	defer file.Close()
	if err := t.MergeDAPE(file); err != nil {
		return fmt.Errorf("dape checkpoint %s: %w", path, err)
	}
	return nil
}

// MergeDAPE merges the LoRA tensors of src (DAPE.pth's keys) into the
// weights: every Swin qkv (q and v rows) and the head's cross-attention
// query and key. The tag_encoder's query/key LoRA of the two layers tied to
// the head is merged too when present (zero in DAPE as trained).
func (t *Tagger) MergeDAPE(src nn.Source) (err error) {
	defer torch.Recover(&err)
	pairs := t.loraPairs()
	// Check every pair before touching a weight, so that a bad file leaves
	// the tagger as it was.
	var todo []loraPair
	for _, p := range pairs {
		aShape, _, okA := src.Meta(p.prefix + ".lora_A")
		bShape, _, okB := src.Meta(p.prefix + ".lora_B")
		if !okA || !okB {
			if p.needed {
				if len(todo) == 0 {
					return fmt.Errorf("%w: no %s.lora_A / lora_B (a DAPE checkpoint holds the LoRA pairs of the 24 Swin qkv and the head's query/key)",
						ErrLayout, p.prefix)
				}
				return fmt.Errorf("%w: %s.lora_A / lora_B missing", ErrLayout, p.prefix)
			}
			continue
		}
		w := t.params.Get(p.weight)
		if w == nil {
			return fmt.Errorf("no weight %s to merge %s into", p.weight, p.prefix)
		}
		groups := int64(1)
		if p.groups != nil {
			groups = 0
			for _, g := range p.groups {
				if g {
					groups++
				}
			}
		}
		rows := w.Size(0)
		if p.groups != nil {
			rows = w.Size(0) / int64(len(p.groups)) * groups
		}
		wantA := []int64{LoRARank * groups, w.Size(1)}
		wantB := []int64{rows, LoRARank}
		if !slices.Equal(aShape, wantA) || !slices.Equal(bShape, wantB) {
			return fmt.Errorf("%s: lora_A %v and lora_B %v, want %v and %v (rank %d)", p.prefix, aShape, bShape, wantA, wantB, LoRARank)
		}
		todo = append(todo, p)
	}
	for _, p := range todo {
		if err := t.mergePair(src, p); err != nil {
			return fmt.Errorf("%s: %w", p.prefix, err)
		}
	}
	if t.dev.Type == torch.DeviceMeta {
		t.Head.release() // nothing to precompute without data
	} else {
		t.Head.Prepare()
	}
	return nil
}

func (t *Tagger) mergePair(src nn.Source, p loraPair) error {
	a, err := src.Load(p.prefix + ".lora_A")
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := src.Load(p.prefix + ".lora_B")
	if err != nil {
		return err
	}
	defer b.Close()
	ad, bd := a.ToDevice(t.dev), b.ToDevice(t.dev)
	defer ad.Close()
	defer bd.Close()
	w := t.params.Get(p.weight)
	if p.groups != nil {
		return MergeLoRAGroups(w, ad, bd, p.groups, LoRAScale)
	}
	return MergeLoRA(w, ad, bd, LoRAScale)
}
