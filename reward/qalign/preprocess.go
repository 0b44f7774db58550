package qalign

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// ProcessorFile is the image processor configuration of the checkpoint
// folder (transformers' CLIPImageProcessor).
const ProcessorFile = "preprocessor_config.json"

// Processor is the CLIPImageProcessor configuration of q-future/one-align
// (preprocessor_config.json) with the expand2square fill pyiqa derives
// from the mean.
type Processor struct {
	// Size is the shortest edge after the resize; CropSize the side of the
	// centre crop.
	Size     int `json:"size"`
	CropSize int `json:"crop_size"`
	// Resample is PIL's filter (3, bicubic).
	Resample  int        `json:"resample"`
	ImageMean [3]float64 `json:"image_mean"`
	ImageStd  [3]float64 `json:"image_std"`
}

// DefaultProcessor is one-align's preprocessor_config.json: size and crop
// 448, PIL bicubic, OpenAI CLIP mean and std.
var DefaultProcessor = Processor{Size: 448, CropSize: 448, Resample: int(imageio.Bicubic),
	ImageMean: [3]float64{0.48145466, 0.4578275, 0.40821073},
	ImageStd:  [3]float64{0.26862954, 0.26130258, 0.27577711}}

// LoadProcessor reads preprocessor_config.json.
func LoadProcessor(path string) (Processor, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Processor{}, err
	}
	p, err := ParseProcessor(b)
	if err != nil {
		return Processor{}, err
	}
	return p, nil
}

// ParseProcessor reads a CLIPImageProcessor configuration over
// DefaultProcessor ("size" as a number or as {"shortest_edge": n},
// "crop_size" as a number or {"height","width"}).
func ParseProcessor(b []byte) (p Processor, err error) {
	var raw struct {
		Size      json.RawMessage `json:"size"`
		CropSize  json.RawMessage `json:"crop_size"`
		Resample  *int            `json:"resample"`
		ImageMean []float64       `json:"image_mean"`
		ImageStd  []float64       `json:"image_std"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Processor{}, err
	}
	p = DefaultProcessor
	side := func(m json.RawMessage, keys ...string) (int, error) {
		var n int
		if json.Unmarshal(m, &n) == nil {
			return n, nil
		}
		var d map[string]int
		if err := json.Unmarshal(m, &d); err != nil {
			return 0, fmt.Errorf("size %s", m)
		}
		for _, k := range keys {
			if v, ok := d[k]; ok {
				return v, nil
			}
		}
		return 0, fmt.Errorf("size %s", m)
	}
	if raw.Size != nil {
		if p.Size, err = side(raw.Size, "shortest_edge"); err != nil {
			return Processor{}, err
		}
	}
	if raw.CropSize != nil {
		if p.CropSize, err = side(raw.CropSize, "height", "width"); err != nil {
			return Processor{}, err
		}
	}
	if raw.Resample != nil {
		p.Resample = *raw.Resample
	}
	if raw.ImageMean != nil {
		if len(raw.ImageMean) != 3 {
			return Processor{}, fmt.Errorf("image_mean %v", raw.ImageMean)
		}
		copy(p.ImageMean[:], raw.ImageMean)
	}
	if raw.ImageStd != nil {
		if len(raw.ImageStd) != 3 {
			return Processor{}, fmt.Errorf("image_std %v", raw.ImageStd)
		}
		copy(p.ImageStd[:], raw.ImageStd)
	}
	return p, p.check()
}

func (p Processor) check() error {
	if p.Size < 1 || p.CropSize < 1 || p.CropSize > p.Size {
		return fmt.Errorf("processor size %d, crop %d", p.Size, p.CropSize)
	}
	if imageio.Filter(p.Resample).String() == "" || p.Resample < 0 || p.Resample > int(imageio.Hamming) {
		return fmt.Errorf("processor resample %d", p.Resample)
	}
	for _, s := range p.ImageStd {
		if !(s > 0) {
			return fmt.Errorf("processor image_std %v", p.ImageStd)
		}
	}
	return nil
}

// Fill is expand2square's background: int(mean·255) per channel.
func (p Processor) Fill() [3]uint8 {
	var f [3]uint8
	for c, m := range p.ImageMean {
		f[c] = uint8(int(m * 255))
	}
	return f
}

// ToUint8 is torchvision's to_pil_image of every image of x (N,3,H,W)
// floating point in [0,1]: x·255 in x's dtype, truncated to uint8
// (Tensor.byte()), HWC.
func ToUint8(x *torch.Tensor) (out []*imageio.RGB8, err error) {
	sh := x.Shape()
	if len(sh) != 4 || sh[1] != 3 {
		return nil, fmt.Errorf("image of shape %v: want (N,3,H,W)", sh)
	}
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		u := x.ToDevice(torch.CPU).MulScalar(255).To(torch.Uint8).Permute([]int64{0, 2, 3, 1}).Contiguous()
		b := u.Bytes()
		n := int(sh[2] * sh[3] * 3)
		for i := 0; i < int(sh[0]); i++ {
			out = append(out, &imageio.RGB8{W: int(sh[3]), H: int(sh[2]), Pix: b[i*n : (i+1)*n : (i+1)*n]})
		}
	})
	return out, err
}

// ExpandToSquare is pyiqa's expand2square: a canvas of side max(W,H)
// filled with fill, the image pasted at ((S−W)/2, (S−H)/2).
func ExpandToSquare(m *imageio.RGB8, fill [3]uint8) *imageio.RGB8 {
	s := max(m.W, m.H)
	if s == m.W && s == m.H {
		return m.Clone()
	}
	out := imageio.NewRGB8(s, s)
	for i := 0; i < len(out.Pix); i += 3 {
		copy(out.Pix[i:i+3], fill[:])
	}
	x0, y0 := (s-m.W)/2, (s-m.H)/2
	for y := 0; y < m.H; y++ {
		copy(out.Pix[((y0+y)*s+x0)*3:], m.Pix[y*m.W*3:(y+1)*m.W*3])
	}
	return out
}

// ResizeCrop is CLIPImageProcessor's resize (shortest edge to Size, the
// other edge int(Size·long/short), PIL's filter on the uint8 image) and
// centre crop to CropSize.
func (p Processor) ResizeCrop(m *imageio.RGB8) (*imageio.RGB8, error) {
	if m.W < 1 || m.H < 1 {
		return nil, fmt.Errorf("empty %dx%d image", m.W, m.H)
	}
	w, h := p.Size, p.Size
	if m.W > m.H {
		w = int(float64(p.Size) * float64(m.W) / float64(m.H))
	} else if m.H > m.W {
		h = int(float64(p.Size) * float64(m.H) / float64(m.W))
	}
	r := imageio.Resize(m, w, h, imageio.Filter(p.Resample))
	c := p.CropSize
	if w == c && h == c {
		return r, nil
	}
	if w < c || h < c {
		return nil, errors.New("image smaller than the crop") // not reachable: Size >= CropSize
	}
	top, left := (h-c)/2, (w-c)/2
	out := imageio.NewRGB8(c, c)
	for y := 0; y < c; y++ {
		copy(out.Pix[y*c*3:(y+1)*c*3], r.Pix[((top+y)*w+left)*3:])
	}
	return out, nil
}

// Normalize is the processor's rescale and normalise of equally sized
// images into (N,3,H,W) float32 on the CPU: float32(float64(u8)·(1/255)),
// then (v − mean) / std in float32.
func (p Processor) Normalize(ms []*imageio.RGB8) (*torch.Tensor, error) {
	if len(ms) == 0 {
		return nil, errors.New("no images")
	}
	w, h := ms[0].W, ms[0].H
	var mean, std [3]float32
	for c := range mean {
		mean[c], std[c] = float32(p.ImageMean[c]), float32(p.ImageStd[c])
	}
	var lut [3][256]float32
	for c := range lut {
		for v := range lut[c] {
			lut[c][v] = (float32(float64(v)*(1.0/255)) - mean[c]) / std[c]
		}
	}
	plane := w * h
	data := make([]float32, len(ms)*3*plane)
	for i, m := range ms {
		if m.W != w || m.H != h {
			return nil, fmt.Errorf("image %d is %dx%d, want %dx%d", i, m.W, m.H, w, h)
		}
		base := data[i*3*plane:]
		r, g, b := base[:plane], base[plane:2*plane], base[2*plane:3*plane]
		pix := m.Pix[:3*plane]
		for j := range r {
			px := pix[3*j : 3*j+3]
			r[j], g[j], b[j] = lut[0][px[0]], lut[1][px[1]], lut[2][px[2]]
		}
	}
	var t *torch.Tensor
	err := torch.Try(func() { t = torch.FromSlice(data, int64(len(ms)), 3, int64(h), int64(w)) })
	return t, err
}

// Preprocess runs the whole chain on x (N,3,H,W) in [0,1]: uint8 by
// truncation, expand2square, resize and crop, normalise. It returns
// pixel_values (N,3,CropSize,CropSize) float32 on the CPU.
func (p Processor) Preprocess(x *torch.Tensor) (*torch.Tensor, error) {
	u8, err := ToUint8(x)
	if err != nil {
		return nil, err
	}
	fill := p.Fill()
	for i, m := range u8 {
		if u8[i], err = p.ResizeCrop(ExpandToSquare(m, fill)); err != nil {
			return nil, err
		}
	}
	return p.Normalize(u8)
}
