// Package degrade synthesises low-resolution training inputs the way
// DP²O-SR does: ResShift's "first-order" Real-ESRGAN degradation
// (ResShift's RealESRGANDataset.degrade_fun with second_order_prob 0, over
// BasicSR's degradations.py, img_process_util.filter2D and diffjpeg.py).
//
// A degradation is split in two halves, as upstream splits it between its
// dataset (numpy/Python random) and its torch code:
//
//   - Config.Sample draws a Record: the blur kernel, the stage-1 resize, the
//     noise kind, the order of the final stage, the final sinc filter. Every
//     decision comes from one seeded torch.Generator, in the reference's
//     order of draws.
//   - Degrade runs the chain on an HR tensor. It is a pure function of the
//     Record and the generator state: the noise level, grey-noise flag, noise
//     fields and both JPEG qualities are drawn from the generator in the
//     reference's order (rand, rand, randn|poisson, uniform_, uniform_), and
//     the returned Record holds what was drawn.
//
// With the same (seed, image) pair the LR image is always the same. Given a
// record written by the reference (ResShift driven as its
// prepare_testing_imagenet_sr.py drives it) and a generator seeded with
// that run's torch seed, Degrade reproduces the reference's LR image.
//
// The pieces are exported for reuse and testing: Kernel (every kernel type
// of BasicSR), Filter2D, ResizeScale/ResizeSize (F.interpolate with
// scale_factor= and size=), AddGaussianNoise/AddPoissonNoise and DiffJPEG.
package degrade
