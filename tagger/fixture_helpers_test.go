package tagger

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/internal/ramfixture"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/vision/swin"
)

// fixtureRoot is $DP2O_FIXTURES or the package's testdata.
func fixtureRoot() string {
	if d := os.Getenv("DP2O_FIXTURES"); d != "" {
		return d
	}
	return "testdata"
}

func fixturePath(rel string) string { return filepath.Join(fixtureRoot(), rel) }

// layoutKey is one entry of a keys/*.json checkpoint layout.
type layoutKey struct {
	Name         string
	Shape        []int64  `json:"shape"`
	DType        string   `json:"dtype"`
	Role         string   `json:"role"`
	SameTensorAs []string `json:"same_tensor_as"`
}

// readLayout reads a keys/*.json layout in file order.
func readLayout(rel string) ([]layoutKey, error) {
	raw, err := os.ReadFile(fixturePath(rel))
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	var out []layoutKey
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		k := layoutKey{Name: tok.(string)}
		if err := dec.Decode(&k); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", rel, k.Name, err)
		}
		out = append(out, k)
	}
	return out, nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

func stCode(dtype string) (string, error) {
	dt, err := torch.ParseDType(dtype)
	if err != nil {
		return "", err
	}
	return dt.SafetensorsCode(), nil
}

// bufferBytes recomputes a buffer the official loader drops: a Swin
// relative_position_index (N, N) or attn_mask (nW, N, N) of window √N.
func bufferBytes(k layoutKey) ([]byte, error) {
	n := k.Shape[len(k.Shape)-1]
	win := int64(math.Round(math.Sqrt(float64(n))))
	var t *torch.Tensor
	switch {
	case strings.HasSuffix(k.Name, "relative_position_index"):
		t = torch.FromSlice(swin.RelativePositionIndex([2]int64{win, win}), k.Shape...)
	case strings.HasSuffix(k.Name, "attn_mask"):
		res := win * int64(math.Round(math.Sqrt(float64(k.Shape[0]))))
		t = torch.FromSlice(swin.ShiftMask(res, res, win, win/2), k.Shape...)
	default:
		return nil, fmt.Errorf("%s: unknown buffer", k.Name)
	}
	defer t.Close()
	return t.Bytes(), nil
}

// writeLayout writes a .pth checkpoint with every key of layout, in order:
// the keys the tagging path reads from tensors (under fileName(key)), the
// dropped buffers recomputed, the other keys as zero views of one shared
// storage per dtype; keys listed as the same tensor share a storage. It
// returns the number of tensors written.
func writeLayout(path, topKey string, layout []layoutKey, tensors nn.MapSource, fileName func(string) string) (int, error) {
	var storages []pickle.Storage
	var views []pickle.View
	zeros := map[string]int{} // dtype → shared zero storage
	group := map[string]int{} // name → storage of a tied group
	zeroSize := map[string]int64{}
	for _, k := range layout {
		if k.Role != "tagging" && k.Role != "dropped-by-loader" {
			code, err := stCode(k.DType)
			if err != nil {
				return 0, err
			}
			zeroSize[code] = max(zeroSize[code], numel(k.Shape))
		}
	}
	for _, k := range layout {
		code, err := stCode(k.DType)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", k.Name, err)
		}
		idx, tied := group[k.Name]
		if !tied && len(k.SameTensorAs) > 0 {
			// One storage for the whole tied group, holding the data of
			// its member the tagging path reads.
			members := append([]string{k.Name}, k.SameTensorAs...)
			for _, m := range members {
				if t, ok := tensors[m]; ok {
					storages = append(storages, pickle.Storage{DType: code, Numel: numel(k.Shape),
						Data: func() ([]byte, error) { return t.Bytes(), nil }})
					idx, tied = len(storages)-1, true
					for _, m := range members {
						group[m] = idx
					}
					break
				}
			}
		}
		switch {
		case tied:
		case k.Role == "tagging":
			t, ok := tensors[k.Name]
			if !ok {
				return 0, fmt.Errorf("no tensor for %s", k.Name)
			}
			storages = append(storages, pickle.Storage{DType: code, Numel: numel(k.Shape),
				Data: func() ([]byte, error) { return t.Bytes(), nil }})
			idx = len(storages) - 1
		case k.Role == "dropped-by-loader":
			kk := k
			storages = append(storages, pickle.Storage{DType: code, Numel: numel(k.Shape),
				Data: func() ([]byte, error) { return bufferBytes(kk) }})
			idx = len(storages) - 1
		default:
			var ok bool
			if idx, ok = zeros[code]; !ok {
				n := zeroSize[code]
				size := int64(map[string]int{"F32": 4, "I64": 8, "F16": 2, "BF16": 2, "I32": 4, "U8": 1, "BOOL": 1}[code])
				storages = append(storages, pickle.Storage{DType: code, Numel: n,
					Data: func() ([]byte, error) { return make([]byte, n*size), nil }})
				idx = len(storages) - 1
				zeros[code] = idx
			}
		}
		views = append(views, pickle.View{Name: fileName(k.Name), Storage: idx, Shape: k.Shape})
	}
	return len(views), pickle.Write(path, topKey, nil, storages, views)
}

// fixtureWeights rebuilds the base weights (overrides applied, checked
// against check_values) and the LoRA tensors.
func fixtureWeights() (*ramfixture.Weights, nn.MapSource, error) {
	w, err := ramfixture.Read(fixturePath("ram/weights"))
	if err != nil {
		return nil, nil, err
	}
	base, err := w.BaseWeights(nil)
	if err != nil {
		return nil, nil, err
	}
	if err := ramfixture.Check(base, w.Base.CheckValues); err != nil {
		base.Close()
		return nil, nil, fmt.Errorf("regenerated base weights: %w", err)
	}
	return w, base, nil
}

// loadShippedLoRA reads weights/lora.safetensors.
func loadShippedLoRA(w *ramfixture.Weights) (nn.MapSource, error) {
	f, err := nn.OpenSafetensors(w.Path(w.LoRA.File))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := nn.MapSource{}
	for _, k := range f.Names() {
		t, err := f.Load(k)
		if err != nil {
			m.Close()
			return nil, err
		}
		m[k] = torch.Unscope(t)
	}
	return m, nil
}
