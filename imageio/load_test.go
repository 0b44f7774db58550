package imageio

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// JPEG is the one format Load does not decode bit-exactly like PIL. Chroma
// upsampling and the YCbCr→RGB conversion follow libjpeg-turbo exactly, but
// the IDCT is image/jpeg's, which rounds differently from libjpeg's ISLOW
// IDCT. On the fixtures (4:4:4, 4:2:2, 4:2:0, 4:4:0, 4:1:1, progressive,
// gray, CMYK) at most 3 levels differ, on at most 5% of the bytes (without
// the libjpeg-style upsampling, 4:2:0 differed by up to 99 levels on 90% of
// the bytes). The test allows:
const (
	jpegMaxDiff     = 4    // largest |difference| of one byte
	jpegMaxFraction = 0.10 // largest fraction of differing bytes
)

// unsupported are fixtures PIL reads but Go's decoders do not: Load must
// fail on them with a decode error.
var unsupported = map[string]string{
	"cmyk.tif": "unsupported", // x/image/tiff has no CMYK
}

type loadCase struct {
	File string `json:"file"`
	Mode string `json:"mode"`
	W    int    `json:"w"`
	H    int    `json:"h"`
}

// TestLoadMatchesPIL compares Load with PIL 9.4's
// Image.open(f).convert("RGB") (testdata/gen_load.py) for PNG (8/16-bit,
// gray, alpha, palette, tRNS, 1-bit), JPEG, BMP, TIFF, WebP and GIF.
func TestLoadMatchesPIL(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "load", "cases.json"))
	require.NoError(t, err)
	var doc struct {
		Pillow string     `json:"pillow"`
		Cases  []loadCase `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.Equal(t, "9.4.0", doc.Pillow)
	require.NotEmpty(t, doc.Cases)
	for _, c := range doc.Cases {
		t.Run(c.File, func(t *testing.T) {
			got, err := Load(filepath.Join("testdata", "load", c.File))
			if msg, ok := unsupported[c.File]; ok {
				require.ErrorIs(t, err, ErrDecode)
				require.ErrorContains(t, err, msg)
				return
			}
			require.NoError(t, err)
			want, err := Load(filepath.Join("testdata", "load", "expected", c.File+".png"))
			require.NoError(t, err)
			require.Equal(t, c.W, want.W)
			require.Equal(t, [2]int{want.W, want.H}, [2]int{got.W, got.H})
			n, maxd, first := diffStats(want.Pix, got.Pix)
			if strings.HasSuffix(c.File, ".jpg") {
				t.Logf("%s (PIL mode %s): %d of %d bytes differ from libjpeg-turbo, max |diff| %d", c.File, c.Mode, n, len(want.Pix), maxd)
				require.LessOrEqual(t, maxd, jpegMaxDiff)
				require.LessOrEqual(t, float64(n)/float64(len(want.Pix)), jpegMaxFraction)
				return
			}
			if n != 0 {
				t.Fatalf("%s (PIL mode %s): %d of %d bytes differ, max |diff| %d, first at pixel (%d,%d)", c.File, c.Mode, n, len(want.Pix), maxd, first/3%want.W, first/3/want.W)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o644))
		return p
	}
	good, err := os.ReadFile(filepath.Join("testdata", "load", "rgb.png"))
	require.NoError(t, err)

	missing := filepath.Join(dir, "missing.png")
	_, err = Load(missing)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.Equal(t, "imageio: "+missing+": open: no such file or directory", err.Error())

	_, err = Load(dir)
	require.ErrorContains(t, err, "is a directory")

	empty := write("empty.png", nil)
	_, err = Load(empty)
	require.ErrorIs(t, err, ErrEmptyFile)
	require.Equal(t, "imageio: "+empty+": empty file", err.Error())

	text := write("photo.png", []byte("this is not an image\n"))
	_, err = Load(text)
	require.ErrorIs(t, err, ErrDecode)
	require.ErrorIs(t, err, image.ErrFormat)
	require.Equal(t, "imageio: "+text+": decode: image: unknown format", err.Error())

	trunc := write("trunc.png", good[:len(good)/2])
	_, err = Load(trunc)
	require.ErrorIs(t, err, ErrDecode)
	require.True(t, strings.HasPrefix(err.Error(), "imageio: "+trunc+": decode: "), err.Error())

	// A GIF whose logical screen is 0×0.
	zero := write("zero.gif", []byte("GIF89a\x00\x00\x00\x00\x00\x00\x00;"))
	_, err = Load(zero)
	require.ErrorIs(t, err, ErrNoPixels)

	// A PNG claiming 100000×100000 pixels: refused before decoding, as PIL's
	// DecompressionBombError.
	huge := append([]byte(nil), good...)
	copy(huge[16:24], []byte{0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0})
	binary.BigEndian.PutUint32(huge[29:33], crc32.ChecksumIEEE(huge[12:29]))
	_, err = Load(write("huge.png", huge))
	require.ErrorIs(t, err, ErrTooLarge)
	require.ErrorContains(t, err, "100000x100000 exceeds 178956970 pixels")

	_, err = Decode(bytes.NewReader(nil))
	require.ErrorIs(t, err, ErrEmptyFile)
	require.Equal(t, "imageio: empty file", err.Error())
	_, err = Decode(strings.NewReader("GIF89a"))
	require.ErrorIs(t, err, ErrDecode)
	require.True(t, strings.HasPrefix(err.Error(), "imageio: decode: "), err.Error())
}

func TestTooLargeBeforeDecoding(t *testing.T) {
	// A GIF header claims the size; no pixel data follows.
	hdr := []byte("GIF89a\xff\xff\xff\xff\x00\x00\x00")
	_, err := Decode(bytes.NewReader(hdr))
	require.ErrorIs(t, err, ErrTooLarge)
}

func TestDecodeMatchesLoad(t *testing.T) {
	p := filepath.Join("testdata", "load", "q90_420.jpg")
	a, err := Load(p)
	require.NoError(t, err)
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	b, err := Decode(f)
	require.NoError(t, err)
	require.Equal(t, a, b)
}
