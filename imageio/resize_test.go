package imageio

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// resizeCase is one entry of testdata/resize/cases.json, written by
// testdata/gen_resize.py with Pillow 9.4.
type resizeCase struct {
	Input  string `json:"input"`
	W      int    `json:"w"`
	H      int    `json:"h"`
	Filter string `json:"filter"`
	SHA256 string `json:"sha256"`
	Offset *int   `json:"offset"`
}

func loadResizeCases(t testing.TB) ([]resizeCase, []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "resize", "cases.json"))
	require.NoError(t, err)
	var doc struct {
		Pillow string       `json:"pillow"`
		Cases  []resizeCase `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.Equal(t, "9.4.0", doc.Pillow)
	f, err := os.Open(filepath.Join("testdata", "resize", "outputs.bin.gz"))
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	blob, err := io.ReadAll(zr)
	require.NoError(t, err)
	return doc.Cases, blob
}

// TestResizeMatchesPillow requires bit-exact equality with Pillow 9.4's
// Image.resize for every filter, up and down, non-integer ratios, one-axis
// resizes and degenerate sizes.
func TestResizeMatchesPillow(t *testing.T) {
	cases, blob := loadResizeCases(t)
	require.NotEmpty(t, cases)
	inputs := map[string]*RGB8{}
	for _, c := range cases {
		in := inputs[c.Input]
		if in == nil {
			var err error
			in, err = Load(filepath.Join("testdata", "resize", "inputs", c.Input+".png"))
			require.NoError(t, err)
			inputs[c.Input] = in
		}
		f, err := ParseFilter(c.Filter)
		require.NoError(t, err)
		name := fmt.Sprintf("%s_%dx%d_to_%dx%d_%s", c.Input, in.W, in.H, c.W, c.H, c.Filter)
		t.Run(name, func(t *testing.T) {
			got := Resize(in, c.W, c.H, f)
			require.Equal(t, c.W, got.W)
			require.Equal(t, c.H, got.H)
			if c.Offset != nil {
				want := blob[*c.Offset : *c.Offset+3*c.W*c.H]
				if !bytes.Equal(want, got.Pix) {
					n, maxd, first := diffStats(want, got.Pix)
					t.Fatalf("%d of %d bytes differ (max |diff| %d), first at pixel %d", n, len(want), maxd, first/3)
				}
			}
			sum := sha256.Sum256(got.Pix)
			require.Equal(t, c.SHA256, hex.EncodeToString(sum[:]), "output differs from Pillow's")
		})
	}
}

func diffStats(a, b []byte) (n, maxd, first int) {
	first = -1
	for i := range a {
		d := int(a[i]) - int(b[i])
		if d < 0 {
			d = -d
		}
		if d != 0 {
			n++
			if first < 0 {
				first = i
			}
			maxd = max(maxd, d)
		}
	}
	return
}

func TestResizeSameSizeCopies(t *testing.T) {
	in := NewRGB8(4, 3)
	for i := range in.Pix {
		in.Pix[i] = uint8(i * 7)
	}
	for f := Nearest; f <= Hamming; f++ {
		out := Resize(in, 4, 3, f)
		require.Equal(t, in.Pix, out.Pix)
		out.Pix[0]++
		require.NotEqual(t, in.Pix[0], out.Pix[0], "Resize must return a copy")
	}
}

func TestResizePanicsOnBadSize(t *testing.T) {
	in := NewRGB8(4, 3)
	require.Panics(t, func() { Resize(in, 0, 3, Bicubic) })
	require.Panics(t, func() { Resize(in, 3, -1, Bicubic) })
	require.Panics(t, func() { Resize(in, 3, 3, Filter(42)) })
}

func TestParseFilter(t *testing.T) {
	for f := Nearest; f <= Hamming; f++ {
		g, err := ParseFilter(f.String())
		require.NoError(t, err)
		require.Equal(t, f, g)
	}
	f, err := ParseFilter("bicubic")
	require.NoError(t, err)
	require.Equal(t, Bicubic, f)
	f, err = ParseFilter("antialias")
	require.NoError(t, err)
	require.Equal(t, Lanczos, f)
	_, err = ParseFilter("spline")
	require.Error(t, err)
	require.Equal(t, "Filter(9)", Filter(9).String())
}

func BenchmarkResizeBicubic512(b *testing.B) {
	in := NewRGB8(128, 128)
	for i := range in.Pix {
		in.Pix[i] = uint8(i*31 + i/384)
	}
	b.SetBytes(512 * 512 * 3)
	b.ResetTimer()
	for b.Loop() {
		Resize(in, 512, 512, Bicubic)
	}
}

// lcgImage rebuilds gen_resize.py's lcg_image.
func lcgImage(seed, w, h int) *RGB8 {
	m := NewRGB8(w, h)
	x := uint64(seed)
	for i := range m.Pix {
		x = (x*1103515245 + 12345) % (1 << 31)
		r := int(x>>16) & 255
		if seed%2 == 1 {
			p := i / 3
			px, py := p%w, p/w
			v := (px*9 + py*5 + (i%3)*60) % 256
			if (px/5+py/3)%4 == 0 {
				v = 255 - v
			}
			r = (v + r&15) % 256
		}
		m.Pix[i] = uint8(r)
	}
	return m
}

// TestResizeSweepMatchesPillow checks Pillow's output hashes for generated
// inputs at random sizes (testdata/resize/sweep.json).
func TestResizeSweepMatchesPillow(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "resize", "sweep.json"))
	require.NoError(t, err)
	var doc struct {
		Pillow string  `json:"pillow"`
		Cases  [][]any `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.Equal(t, "9.4.0", doc.Pillow)
	require.NotEmpty(t, doc.Cases)
	bad := 0
	for _, c := range doc.Cases {
		seed, iw, ih := int(c[0].(float64)), int(c[1].(float64)), int(c[2].(float64))
		w, h := int(c[3].(float64)), int(c[4].(float64))
		f, err := ParseFilter(c[5].(string))
		require.NoError(t, err)
		got := Resize(lcgImage(seed, iw, ih), w, h, f)
		sum := sha256.Sum256(got.Pix)
		if hex.EncodeToString(sum[:]) != c[6].(string) {
			bad++
			t.Errorf("seed %d %dx%d → %dx%d %v: differs from Pillow", seed, iw, ih, w, h, f)
		}
	}
	t.Logf("%d sweep cases, %d differ", len(doc.Cases), bad)
}
