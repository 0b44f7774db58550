// Package imageio is the image front-end of the DP²O-SR pipeline: it loads
// pictures the way the official Python scripts do (PIL's
// Image.open(path).convert("RGB")), resizes them bit for bit like Pillow 9.4's
// Image.resize, applies the official process-size rules (SPEC §2.2), lists
// input folders like the scripts' glob and writes results as PNG files.
//
// Pixels travel as [RGB8]: 8-bit RGB, rows top to bottom, 3 bytes a pixel
// (HWC), the layout of numpy.array(pil_image).
//
// What is exact and what is not (testdata/gen_*.py make the references
// with Debian bookworm's Pillow 9.4, libjpeg-turbo 2.1.5 and libwebp 1.2.4):
//
//   - [Resize] reproduces Pillow 9.4's Image.resize for every filter: the
//     two-pass fixed-point ImagingResample and, for NEAREST, the affine
//     ImagingScaleAffine path. Tested byte for byte.
//   - PNG (8/16-bit, gray, alpha, palette, tRNS, 1/4-bit), BMP, TIFF, GIF
//     and WebP (lossy: libwebp's fancy upsampler and YUV→RGB arithmetic;
//     lossless) decode to exactly PIL's bytes on the test fixtures.
//   - JPEG is close, not exact: chroma upsampling and YCbCr→RGB follow
//     libjpeg-turbo, but the IDCT is image/jpeg's; a few percent of the bytes
//     differ by 1–3 levels from PIL's.
//   - Go's decoders lack some variants PIL reads (CMYK TIFF, RLE or 16-bit
//     BMP, animated WebP); [Load] reports them as decode errors.
package imageio
