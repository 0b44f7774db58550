package tagger

import (
	"fmt"
	"strings"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/swin"
)

// TapFunc receives named intermediates of a tagging pass: "pixel_values",
// the encoder's (prefixed "visual_encoder."), "image_embeds_raw",
// "image_embeds", the head's ("label_feat",
// "tagging_head.layer.<i>.crossattention", "tagging_head.layer.<i>"),
// "logits" and "probs". Tensors are valid only during the call.
type TapFunc func(name string, t *torch.Tensor)

// Tagger is RAM + DAPE ready to tag images. A Tagger is not safe for
// concurrent use (one forward at a time; Tap is shared).
type Tagger struct {
	Config    Config
	Vision    *swin.Model
	ImageProj *nn.Linear
	Head      *Head
	// Tap, when set, receives the intermediates.
	Tap    TapFunc
	dev    torch.Device
	params *nn.Params
	thr    *torch.Tensor
}

// New builds the tagger's modules from b with the official keys
// (visual_encoder.*, image_proj.*, label_embed, wordvec_proj.*,
// tagging_head.encoder.layer.*, fc.*). The weights stay the builder's
// (FromSource builds, checks and hands them to the tagger in one call);
// Close frees the buffers.
func New(b *nn.Builder, cfg Config) (*Tagger, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	v, err := swin.New(b.Sub("visual_encoder"), cfg.Vision)
	if err != nil {
		return nil, err
	}
	h, err := NewHead(b, cfg.Head, cfg.NumClasses())
	if err != nil {
		v.Close()
		return nil, err
	}
	t := &Tagger{Config: cfg, Vision: v, Head: h, dev: b.Device(),
		ImageProj: nn.NewLinear(b.Sub("image_proj"), cfg.Vision.NumFeatures(), cfg.Head.EncoderWidth, true)}
	if b.Device().Type != torch.DeviceMeta {
		if err := torch.Try(func() {
			t.thr = torch.Unscope(torch.Scoped(func() *torch.Tensor {
				return torch.FromSlice(cfg.Thresholds, int64(len(cfg.Thresholds))).ToDevice(b.Device())
			}))
		}); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// FromSource builds a tagger from a source holding the model's keys (as
// New names them), on dev. The tagger owns its weights (Close frees them).
func FromSource(src nn.Source, cfg Config, dev torch.Device) (*Tagger, error) {
	b := nn.NewBuilder(src, torch.Float32, dev, nn.AllowUnused())
	t, err := New(b, cfg)
	if err != nil {
		b.Params().Close()
		return nil, err
	}
	p, err := b.Finish()
	if err != nil {
		t.Close() // the buffers; Finish freed the weights
		return nil, err
	}
	t.params = p
	return t, nil
}

// Params are the tagger's weights (by key).
func (t *Tagger) Params() *nn.Params { return t.params }

// Device is where the tagger runs.
func (t *Tagger) Device() torch.Device { return t.dev }

// Close frees the weights and buffers.
func (t *Tagger) Close() {
	if t.Head != nil {
		t.Head.Close()
	}
	if t.Vision != nil {
		t.Vision.Close()
	}
	if t.thr != nil {
		t.thr.Close()
		t.thr = nil
	}
	if t.params != nil {
		t.params.Close()
		t.params = nil
	}
}

func (t *Tagger) tap(name string, x *torch.Tensor) {
	if t.Tap != nil {
		t.Tap(name, x)
	}
}

// Logits runs normalised pixels (B, 3, S, S) through the encoder and the
// head: (B, classes) float32 logits, without autograd.
func (t *Tagger) Logits(pixels *torch.Tensor) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	torch.NoGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		t.tap("pixel_values", pixels)
		if t.Tap != nil {
			t.Vision.Tap = func(name string, x *torch.Tensor) { t.Tap("visual_encoder."+name, x) }
			defer func() { t.Vision.Tap = nil }()
		}
		raw := t.Vision.Forward(pixels)
		t.tap("image_embeds_raw", raw)
		img := linear(t.ImageProj, raw)
		raw.Close()
		t.tap("image_embeds", img)
		var headTap func(string, *torch.Tensor)
		if t.Tap != nil {
			headTap = t.Tap
		}
		logits := t.Head.Forward(img, headTap)
		t.tap("logits", logits)
		out = s.Keep(logits)
	})
	return out, nil
}

// Decide applies the thresholds to logits (B, classes): the (B, classes)
// probabilities sigmoid(logits) and, per image, the indices of the classes
// whose probability is strictly above its threshold, in class order.
func (t *Tagger) Decide(logits *torch.Tensor) (probs *torch.Tensor, passed [][]int, err error) {
	defer torch.Recover(&err)
	return decide(logits, t.thr)
}

func decide(logits, thr *torch.Tensor) (*torch.Tensor, [][]int, error) {
	if logits.Dim() != 2 || logits.Size(1) != thr.Size(0) {
		return nil, nil, fmt.Errorf("tagger: logits %v for %d classes", logits.Shape(), thr.Size(0))
	}
	s := torch.NewScope()
	defer s.Close()
	probs := logits.Sigmoid()
	dec := probs.Gt(thr.ToDevice(probs.Device()).To(probs.DType())).ToDevice(torch.CPU).To(torch.Uint8)
	b, n := dec.Size(0), dec.Size(1)
	flags := dec.Bytes()
	passed := make([][]int, b)
	for i := int64(0); i < b; i++ {
		passed[i] = []int{}
		for j := int64(0); j < n; j++ {
			if flags[i*n+j] != 0 {
				passed[i] = append(passed[i], int(j))
			}
		}
	}
	return s.Keep(probs), passed, nil
}

// Result is the tagging of one image.
type Result struct {
	// Indices of the passing tags, in tag-list order.
	Indices []int
	// Tags are their names.
	Tags []string
	// Prompt is the tags joined with ", " ("" when none passes).
	Prompt string
}

// TagPixels tags a batch of normalised pixels (B, 3, S, S).
func (t *Tagger) TagPixels(pixels *torch.Tensor) ([]Result, error) {
	logits, err := t.Logits(pixels)
	if err != nil {
		return nil, err
	}
	defer logits.Close()
	probs, passed, err := t.Decide(logits)
	if err != nil {
		return nil, err
	}
	t.tap("probs", probs)
	probs.Close()
	out := make([]Result, len(passed))
	for i, idx := range passed {
		tags := make([]string, len(idx))
		for k, j := range idx {
			tags[k] = t.Config.Tags[j]
		}
		out[i] = Result{Indices: idx, Tags: tags, Prompt: JoinTags(tags)}
	}
	return out, nil
}

// Tag tags one RGB image (imageio.Load converts any file as PIL's
// convert("RGB") does) the way the official scripts build their prompt.
func (t *Tagger) Tag(img *imageio.RGB8) (Result, error) {
	x, err := Preprocess(img, t.Config.Vision.ImageSize, t.dev)
	if err != nil {
		return Result{}, err
	}
	defer x.Close()
	res, err := t.TagPixels(x)
	if err != nil {
		return Result{}, err
	}
	return res[0], nil
}

// Prompt returns the tag prompt of the image file at path.
func (t *Tagger) Prompt(path string) (string, error) {
	img, err := imageio.Load(path)
	if err != nil {
		return "", err
	}
	r, err := t.Tag(img)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return r.Prompt, nil
}

// String describes the tagger.
func (t *Tagger) String() string {
	return fmt.Sprintf("RAM tagger (Swin %d px, depths %v, %d tags: %s, …)", t.Config.Vision.ImageSize, t.Config.Vision.Depths,
		len(t.Config.Tags), strings.Join(t.Config.Tags[:min(3, len(t.Config.Tags))], ", "))
}
