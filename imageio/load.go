package imageio

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/gif"  // register GIF
	_ "image/jpeg" // register JPEG
	_ "image/png"  // register PNG
	"io"
	"io/fs"
	"os"

	_ "golang.org/x/image/bmp"  // register BMP
	_ "golang.org/x/image/tiff" // register TIFF
	_ "golang.org/x/image/webp" // register WebP
)

// MaxDecodePixels is the largest image Decode accepts, in pixels: PIL's
// DecompressionBombError threshold, 2 × Image.MAX_IMAGE_PIXELS.
const MaxDecodePixels = 2 * 89478485

// Errors Decode and Load wrap; test with errors.Is.
var (
	// ErrEmptyFile: the file or stream has no bytes.
	ErrEmptyFile = errors.New("empty file")
	// ErrNoPixels: the image has zero width or height.
	ErrNoPixels = errors.New("image has zero width or height")
	// ErrTooLarge: the image has more than MaxDecodePixels pixels.
	ErrTooLarge = errors.New("image too large")
	// ErrDecode: the bytes are not an image of a supported format or are
	// corrupt. The message carries the decoder's own error.
	ErrDecode = errors.New("decode")
)

// decodeError wraps a decoder failure so that errors.Is(err, ErrDecode) and
// errors.Is(err, image.ErrFormat) both work.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return "decode: " + e.err.Error() }

func (e *decodeError) Unwrap() []error { return []error{ErrDecode, e.err} }

// Load reads an image file and converts it to RGB as
// PIL.Image.open(path).convert("RGB") does (see [Decode]). Errors name the
// file: "imageio: photo.png: decode: ...", "imageio: photo.png: empty
// file", "imageio: photo.png: open: no such file or directory" (which
// matches fs.ErrNotExist).
func Load(path string) (*RGB8, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("imageio: %s: open: %w", path, unwrapPathError(err))
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("imageio: %s: is a directory", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("imageio: %s: read: %w", path, unwrapPathError(err))
	}
	img, err := decodeBytes(data)
	if err != nil {
		return nil, fmt.Errorf("imageio: %s: %w", path, err)
	}
	return img, nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Decode reads a whole image stream (PNG, JPEG, GIF, BMP, TIFF or WebP,
// recognised by content) and converts it to RGB as PIL 9.4's
// convert("RGB") does:
//
//   - alpha is dropped, never composited: the stored colour values stay;
//   - 16-bit colour channels keep their high byte (PIL's "RGB;16B"
//     unpacker); 16-bit grayscale is clipped to 255 (PIL opens it as mode
//     "I"/"I;16", whose conversion clips);
//   - grayscale is replicated; palettes (PNG, GIF, BMP, TIFF) are expanded,
//     a transparent GIF entry keeping its stored colour;
//   - CMYK (JPEG, TIFF) uses PIL's cmyk2rgb;
//   - JPEG chroma is upsampled and converted like libjpeg-turbo
//     (see the package documentation for what remains inexact);
//   - lossy WebP is converted like libwebp (fancy upsampling);
//   - for animated or multi-page files, the first frame.
//
// EXIF orientation is not applied (PIL's open does not either).
func Decode(r io.Reader) (*RGB8, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("imageio: read: %w", err)
	}
	img, err := decodeBytes(data)
	if err != nil {
		return nil, fmt.Errorf("imageio: %w", err)
	}
	return img, nil
}

// decodeBytes does Decode's work; its errors carry no "imageio:" prefix.
func decodeBytes(data []byte) (out *RGB8, err error) {
	if len(data) == 0 {
		return nil, ErrEmptyFile
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, &decodeError{err}
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("%w (%dx%d)", ErrNoPixels, cfg.Width, cfg.Height)
	}
	if n, ok := mulInts(cfg.Width, cfg.Height); !ok || n > MaxDecodePixels {
		return nil, fmt.Errorf("%w: %dx%d exceeds %d pixels", ErrTooLarge, cfg.Width, cfg.Height, MaxDecodePixels)
	}
	defer func() {
		// Some decoders panic on hostile input; report it as corrupt.
		if p := recover(); p != nil {
			out, err = nil, &decodeError{fmt.Errorf("%s: decoder panic: %v", format, p)}
		}
	}()
	img, format, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, &decodeError{err}
	}
	b := img.Bounds()
	if b.Dx() <= 0 || b.Dy() <= 0 {
		return nil, fmt.Errorf("%w (%dx%d)", ErrNoPixels, b.Dx(), b.Dy())
	}
	switch format {
	case "jpeg":
		if m, ok := img.(*image.YCbCr); ok {
			if rgb, ok := jpegToRGB(m); ok {
				return rgb, nil
			}
		}
	case "webp":
		if rgb, ok := webpImageToRGB(img); ok {
			return rgb, nil
		}
	case "gif":
		if rgb, ok := gifToRGB(data, img); ok {
			return rgb, nil
		}
	case "png":
		// 16-bit grayscale with a tRNS chunk: image/png gives NRGBA64, but
		// PIL still opens mode "I" and clips rather than taking the high
		// byte. (IHDR: bit depth at byte 24, colour type at byte 25.)
		if m, ok := img.(*image.NRGBA64); ok && len(data) > 25 && data[24] == 16 && data[25] == 0 {
			return gray16NRGBAToRGB(m), nil
		}
	}
	return FromImage(img), nil
}

// gray16NRGBAToRGB converts a gray-with-alpha NRGBA64 (R = G = B) with PIL's
// clipping of 16-bit gray values.
func gray16NRGBAToRGB(m *image.NRGBA64) *RGB8 {
	b := m.Bounds()
	out := NewRGB8(b.Dx(), b.Dy())
	for y := 0; y < b.Dy(); y++ {
		row := m.Pix[m.PixOffset(b.Min.X, b.Min.Y+y):]
		o := out.Pix[3*b.Dx()*y:]
		for x := 0; x < b.Dx(); x++ {
			v := clampU8(int(row[8*x])<<8 | int(row[8*x+1]))
			o[3*x], o[3*x+1], o[3*x+2] = v, v, v
		}
	}
	return out
}
