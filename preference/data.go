package preference

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/diffusion/vae"
	flowsched "github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// dataError carries an error out of the batch assembly's helpers.
type dataError struct{ err error }

func failData(err error) { panic(dataError{err}) }

// recoverData turns a dataError or a *torch.Error panic into *err.
func recoverData(err *error) {
	if r := recover(); r != nil {
		if d, ok := r.(dataError); ok {
			*err = fmt.Errorf("preference: loader: %w", d.err)
			return
		}
		var te *torch.Error
		if e, ok := r.(error); ok && errors.As(e, &te) {
			*err = fmt.Errorf("preference: loader: %w", te)
			return
		}
		panic(r)
	}
}

// PromptEncoder embeds one prompt: the text embedding (1, T, D) and, for
// FLUX, the pooled embedding (1, D) (nil for SD2). The caller closes both.
type PromptEncoder func(prompt string) (text, pooled *torch.Tensor, err error)

// DataConfig is the frozen data side of a backbone: the VAE that turns
// images into latents, the prompt encoder, and the noise-level sampling.
type DataConfig struct {
	// Kind is KindSD2 or KindFlux.
	Kind string
	// VAE encodes the winner and loser images (and FLUX's control image).
	VAE *vae.Model
	// EncodePrompt embeds a group's prompt (cached per prompt, on the CPU).
	EncodePrompt PromptEncoder
	// NumTrainTimesteps is SD2's DDPM training horizon: t ~ U{0, …, T−1}.
	NumTrainTimesteps int
	// Flow and Density are FLUX's training schedule and timestep density
	// (flowsched.DefaultDensity is the FLUX ControlNet recipe's).
	Flow    flowsched.Config
	Density flowsched.Density
	// Device is where the batches go (the models' device).
	Device torch.Device
	// LatentCacheBytes and PromptCacheBytes bound the Loader's caches of
	// VAE posteriors and prompt embeddings, both in CPU memory: between
	// batches the least recently used entries go until the rest fit (an
	// evicted one is computed again when needed). 0 means
	// DefaultLatentCacheBytes and DefaultPromptCacheBytes; a negative
	// value, no bound.
	LatentCacheBytes, PromptCacheBytes int64
}

// moments is a VAE posterior: mean and std (1, C, h, w), on the CPU.
type moments struct{ mean, std *torch.Tensor }

// Loader reads batches of pairs from a pair file: a per-epoch shuffled
// order (seeded; epoch and position are the data state a checkpoint
// saves), the images VAE-encoded through a cache of posterior moments keyed
// by the VAE's fingerprint and the image file's SHA-256, latents sampled
// from them, the LR control image and the prompt embedding shared by the
// pair (cached too; both caches are bounded, see DataConfig), and per pair
// one timestep and one noise. Every random draw comes
// from Gen (a CPU generator, saved in checkpoints), in this order per
// batch: the timesteps (SD2: randint(0, T, (P,)); FLUX: the density's
// draws), the noise (P, C, h, w) (FLUX: packed after drawing), then for
// each pair the VAE samples of winner, loser and (FLUX) control.
type Loader struct {
	Config DataConfig
	Pairs  *PairFile
	// Root resolves relative image paths (the pair file's folder).
	Root string
	// PairsPerBatch is P.
	PairsPerBatch int
	// Seed fixes the shuffling; Epoch and Pos are the position in the data.
	Seed       uint64
	Epoch, Pos int
	// Gen draws timesteps, noise and VAE samples.
	Gen *torch.Generator

	// rank and world shard every batch (SetShard); world ≤ 1: no sharding.
	rank, world int

	vaeKey  string
	order   []int
	latents *tensorCache // VAE posteriors: mean, std
	prompts *tensorCache // prompt embeddings: text, pooled (nil for SD2)
}

// NewLoader checks the pair file's images (they must exist) and prepares
// the data order. root is the folder relative image paths are taken from.
func NewLoader(cfg DataConfig, pf *PairFile, root string, pairsPerBatch int, seed uint64) (*Loader, error) {
	if pf == nil || len(pf.Pairs) == 0 {
		return nil, errors.New("preference: loader: the pair file has no pairs")
	}
	if cfg.VAE == nil || cfg.EncodePrompt == nil {
		return nil, errors.New("preference: loader: a VAE and a prompt encoder are required")
	}
	switch cfg.Kind {
	case KindSD2:
		if cfg.NumTrainTimesteps < 1 {
			return nil, fmt.Errorf("preference: loader: %d training timesteps", cfg.NumTrainTimesteps)
		}
	case KindFlux:
		if cfg.Flow.NumTrainTimesteps < 1 {
			return nil, errors.New("preference: loader: FLUX needs its flow-matching scheduler config")
		}
	default:
		return nil, fmt.Errorf("preference: loader: unknown backbone %q", cfg.Kind)
	}
	if pairsPerBatch < 1 {
		return nil, fmt.Errorf("preference: loader: %d pairs per batch", pairsPerBatch)
	}
	l := &Loader{Config: cfg, Pairs: pf, Root: root, PairsPerBatch: pairsPerBatch, Seed: seed,
		latents: newTensorCache(cacheBudget(cfg.LatentCacheBytes, DefaultLatentCacheBytes)),
		prompts: newTensorCache(cacheBudget(cfg.PromptCacheBytes, DefaultPromptCacheBytes))}
	for i := range pf.Pairs {
		im, err := pf.Images(i)
		if err != nil {
			return nil, err
		}
		for _, f := range []struct{ what, path string }{{"winner", im.Winner}, {"loser", im.Loser}, {"LR (control)", im.LR}} {
			if f.path == "" {
				return nil, fmt.Errorf("preference: loader: pair %d has no %s image", i, f.what)
			}
			if _, err := os.Stat(l.path(f.path)); err != nil {
				return nil, fmt.Errorf("preference: loader: pair %d: %s image: %w", i, f.what, err)
			}
		}
	}
	if cfg.VAE.Params == nil {
		return nil, errors.New("preference: loader: the VAE has no weights")
	}
	fp, err := FingerprintOf(optim.Named(cfg.VAE.Params))
	if err != nil {
		return nil, fmt.Errorf("preference: loader: VAE fingerprint: %w", err)
	}
	l.vaeKey = fp.SHA256
	gen, err := torch.NewGenerator(torch.CPU, seed)
	if err != nil {
		return nil, err
	}
	l.Gen = gen
	l.shuffle()
	return l, nil
}

// Close frees the caches.
func (l *Loader) Close() {
	if l == nil {
		return
	}
	for _, c := range []*tensorCache{l.latents, l.prompts} {
		if c != nil {
			c.clear()
		}
	}
}

// CacheStats are a Loader's cache counts since it was made.
type CacheStats struct {
	// Entries and Bytes are what the cache holds now.
	Entries int
	Bytes   int64
	// Hits, Misses and Evictions count lookups and entries dropped to fit
	// the bound.
	Hits, Misses, Evictions int
}

// CacheStats reports the VAE posterior cache and the prompt cache.
func (l *Loader) CacheStats() (latents, prompts CacheStats) {
	of := func(c *tensorCache) CacheStats {
		return CacheStats{Entries: c.ll.Len(), Bytes: c.used, Hits: c.hits, Misses: c.misses, Evictions: c.evictions}
	}
	return of(l.latents), of(l.prompts)
}

func (l *Loader) path(p string) string {
	if filepath.IsAbs(p) || l.Root == "" {
		return p
	}
	return filepath.Join(l.Root, p)
}

// shuffle sets the order of the current epoch: a permutation drawn from
// PCG(seed, epoch), so the order of any epoch is reproducible.
func (l *Loader) shuffle() {
	r := rand.New(rand.NewPCG(l.Seed, uint64(l.Epoch)))
	l.order = r.Perm(len(l.Pairs.Pairs))
}

// SetPosition moves to pair pos of epoch epoch (a resumed run).
func (l *Loader) SetPosition(epoch, pos int) error {
	if epoch < 0 || pos < 0 || pos > len(l.Pairs.Pairs) {
		return fmt.Errorf("preference: loader: position %d of epoch %d is outside the %d pairs", pos, epoch, len(l.Pairs.Pairs))
	}
	l.Epoch, l.Pos = epoch, pos
	l.shuffle()
	return nil
}

// SetShard makes the loader one of world data-parallel ranks: each batch
// of PairsPerBatch pairs (the global batch) is read, checked and drawn for
// exactly as without sharding, every random draw included, but Next
// returns only this rank's contiguous share of world-th of its pairs (the
// VAE encodes only those) with Batch.LossScale set so that the average of
// the ranks' gradients is the global batch's. So world ranks with the same
// seed train like one process with the whole batch. PairsPerBatch must be
// a multiple of world; world 1 is no sharding.
func (l *Loader) SetShard(rank, world int) error {
	if world < 1 || rank < 0 || rank >= world {
		return fmt.Errorf("preference: loader: rank %d of %d", rank, world)
	}
	if l.PairsPerBatch%world != 0 {
		return fmt.Errorf("preference: loader: a batch of %d pairs does not split over %d ranks", l.PairsPerBatch, world)
	}
	l.rank, l.world = rank, world
	return nil
}

// nextIndex is the next pair of the data order.
func (l *Loader) nextIndex() int {
	if l.Pos >= len(l.order) {
		l.Epoch++
		l.Pos = 0
		l.shuffle()
	}
	i := l.order[l.Pos]
	l.Pos++
	return i
}

type loadedPair struct {
	im                PairImages
	winner, loser, lr *imageio.RGB8
	wKey, lKey, lrKey string
}

func fileKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

func (l *Loader) loadImage(what, path string) (*imageio.RGB8, string, error) {
	p := l.path(path)
	key, err := fileKey(p)
	if err != nil {
		return nil, "", fmt.Errorf("%s image: %w", what, err)
	}
	img, err := imageio.Load(p)
	if err != nil {
		return nil, "", fmt.Errorf("%s image %s: %w", what, p, err)
	}
	return img, key, nil
}

// Next returns the next batch of PairsPerBatch pairs. The caller closes it.
func (l *Loader) Next() (b *Batch, err error) {
	if l == nil || l.Gen == nil {
		return nil, errors.New("preference: loader not set up (use NewLoader)")
	}
	p := l.PairsPerBatch
	pairs := make([]loadedPair, p)
	var w, h int
	for k := range pairs {
		i := l.nextIndex()
		im, err := l.Pairs.Images(i)
		if err != nil {
			return nil, err
		}
		lp := loadedPair{im: im}
		if lp.winner, lp.wKey, err = l.loadImage("winner", im.Winner); err == nil {
			if lp.loser, lp.lKey, err = l.loadImage("loser", im.Loser); err == nil {
				lp.lr, lp.lrKey, err = l.loadImage("LR", im.LR)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("preference: loader: pair %d: %w", i, err)
		}
		if lp.winner.W != lp.loser.W || lp.winner.H != lp.loser.H {
			return nil, fmt.Errorf("preference: loader: pair %d: winner %s is %d×%d, loser %s is %d×%d (a pair must have one size)",
				i, im.Winner, lp.winner.W, lp.winner.H, im.Loser, lp.loser.W, lp.loser.H)
		}
		if k == 0 {
			w, h = lp.winner.W, lp.winner.H
		} else if lp.winner.W != w || lp.winner.H != h {
			return nil, fmt.Errorf("preference: loader: pair %d is %d×%d but the batch's first pair is %d×%d (one size per batch)",
				i, lp.winner.W, lp.winner.H, w, h)
		}
		pairs[k] = lp
	}
	f := l.Config.VAE.Config.DownsampleFactor()
	if l.Config.Kind == KindFlux {
		f *= 2
	}
	if w%f != 0 || h%f != 0 {
		return nil, fmt.Errorf("preference: loader: images are %d×%d; %s training needs multiples of %d", w, h, l.Config.Kind, f)
	}
	defer recoverData(&err)
	// The batch holds copies of what it took from the caches: they may
	// shrink to their bounds now.
	defer l.prompts.trim()
	defer l.latents.trim()
	return l.assemble(pairs, w, h)
}

// encodeMoments returns the cached VAE posterior of an image (x in [0, 1]
// (1, 3, H, W) on the CPU), keyed by key.
func (l *Loader) encodeMoments(key string, x *torch.Tensor) moments {
	k := l.vaeKey + ":" + key
	if ts, ok := l.latents.get(k); ok {
		return moments{mean: ts[0], std: ts[1]}
	}
	s := torch.NewScope()
	defer s.Close()
	var m moments
	torch.NoGrad(func() {
		in := x.MulScalar(2).SubScalar(1).ToDevice(l.Config.VAE.Params.List()[0].Device())
		post, err := l.Config.VAE.Encode(in)
		if err != nil {
			failData(err)
		}
		defer post.Close()
		m = moments{mean: torch.Unscope(post.Mean.ToDevice(torch.CPU).To(torch.Float32)),
			std: torch.Unscope(post.Std.ToDevice(torch.CPU).To(torch.Float32))}
	})
	l.latents.put(k, m.mean, m.std)
	return m
}

// sampleLatent draws mean + std·ε (latent_dist.sample) and scales it.
func (l *Loader) sampleLatent(m moments) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	eps := torch.RandnFor(m.mean.Shape(), l.Gen, torch.Float32, torch.CPU)
	z := l.Config.VAE.ScaleLatents(m.mean.Add(m.std.Mul(eps)))
	if l.Config.Kind == KindFlux {
		pk, err := transformer.PackLatents(z)
		if err != nil {
			failData(err)
		}
		z = pk
	}
	return s.Keep(z)
}

func imageTensor(img *imageio.RGB8) *torch.Tensor {
	x, err := colorfix.ToTensor(img.Pix, img.W, img.H)
	if err != nil {
		failData(err)
	}
	return x
}

// ownCPU is t in CPU storage of its own: the copy to the CPU, or a clone
// of a tensor already there (one copy either way).
func ownCPU(t *torch.Tensor) *torch.Tensor {
	if t.Device() == torch.CPU {
		return t.Clone()
	}
	return t.ToDevice(torch.CPU)
}

// prompt returns the prompt's embeddings on the CPU, cached.
func (l *Loader) prompt(text string) (emb, pooled *torch.Tensor) {
	if ts, ok := l.prompts.get(text); ok {
		return ts[0], ts[1]
	}
	var err error
	torch.NoGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		var e, p *torch.Tensor
		if e, p, err = l.Config.EncodePrompt(text); err != nil {
			return
		}
		// Copies on the CPU: the encoder's outputs are the caller's to
		// close, and the cache must not hold device memory.
		emb = torch.Unscope(ownCPU(e))
		e.Close()
		if p != nil {
			pooled = torch.Unscope(ownCPU(p))
			p.Close()
		}
	})
	if err != nil {
		failData(fmt.Errorf("prompt %q: %w", text, err))
	}
	l.prompts.put(text, emb, pooled)
	return emb, pooled
}

func (l *Loader) assemble(pairs []loadedPair, w, h int) (*Batch, error) {
	s := torch.NewScope()
	defer s.Close()
	p := int64(len(pairs))
	kind := l.Config.Kind
	b := &Batch{}
	// This rank's pairs [lo, hi) of the batch (all of them unsharded).
	sharded := l.world > 1
	lo, hi := 0, len(pairs)
	if sharded {
		n := len(pairs) / l.world
		lo, hi = l.rank*n, (l.rank+1)*n
	}
	var sig []float32
	if kind == KindSD2 {
		b.Timesteps = torch.Randint(0, int64(l.Config.NumTrainTimesteps), []int64{p}, l.Gen, torch.Int64, torch.CPU)
	} else {
		d, err := l.Config.Flow.SampleTraining(l.Config.Density, len(pairs), l.Gen)
		if err != nil {
			return nil, err
		}
		ts := make([]float32, len(d.Timesteps))
		for i, t := range d.Timesteps {
			ts[i] = t / 1000
		}
		b.Timesteps, sig = torch.FromSlice(ts, p), d.Sigmas
	}
	f := int64(l.Config.VAE.Config.DownsampleFactor())
	c := int64(l.Config.VAE.Config.LatentChannels)
	noise := torch.RandnFor([]int64{p, c, int64(h) / f, int64(w) / f}, l.Gen, torch.Float32, torch.CPU)
	if kind == KindFlux {
		pk, err := transformer.PackLatents(noise)
		if err != nil {
			return nil, err
		}
		noise = pk
	}
	b.Noise = noise
	if sharded {
		b.Timesteps = b.Timesteps.Narrow(0, int64(lo), int64(hi-lo))
		b.Noise = b.Noise.Narrow(0, int64(lo), int64(hi-lo))
		if sig != nil {
			sig = sig[lo:hi]
		}
	}
	// The VAE samples' shape: other ranks' pairs draw their samples from
	// Gen too (discarded), so the generator advances as without sharding.
	latent := []int64{1, c, int64(h) / f, int64(w) / f}
	var xw, xl, ctrl, text, pooled []*torch.Tensor
	weights := make([]float32, p)
	for k, lp := range pairs {
		weights[k] = float32(lp.im.Weight)
		if k < lo || k >= hi {
			draws := 2
			if kind == KindFlux {
				draws = 3
			}
			for range draws {
				torch.RandnFor(latent, l.Gen, torch.Float32, torch.CPU)
			}
			continue
		}
		if sharded {
			if m := l.encodeMoments(lp.wKey, imageTensor(lp.winner)); fmt.Sprint(m.mean.Shape()) != fmt.Sprint(latent) {
				return nil, fmt.Errorf("the VAE's latents are %v, sharding expects %v", m.mean.Shape(), latent)
			}
		}
		xw = append(xw, l.sampleLatent(l.encodeMoments(lp.wKey, imageTensor(lp.winner))))
		xl = append(xl, l.sampleLatent(l.encodeMoments(lp.lKey, imageTensor(lp.loser))))
		lr := lp.lr
		if lr.W != w || lr.H != h {
			lr = imageio.Resize(lr, w, h, imageio.Bicubic)
		}
		if kind == KindSD2 {
			ctrl = append(ctrl, imageTensor(lr))
		} else {
			key := fmt.Sprintf("%s@%dx%d", lp.lrKey, w, h)
			ctrl = append(ctrl, l.sampleLatent(l.encodeMoments(key, imageTensor(lr))))
		}
		e, pl := l.prompt(lp.im.Prompt)
		text = append(text, e)
		if kind == KindFlux {
			if pl == nil {
				return nil, errors.New("the prompt encoder gave no pooled embedding (FLUX needs one)")
			}
			pooled = append(pooled, pl)
		}
	}
	b.X0W, b.X0L, b.Control, b.Text = torch.Cat(xw, 0), torch.Cat(xl, 0), torch.Cat(ctrl, 0), torch.Cat(text, 0)
	if sharded {
		// Σ_rank w·ℓ / Σ_batch w, times world: the mean over the ranks is
		// the global batch's weighted mean loss.
		var all, mine float64
		for k, v := range weights {
			all += float64(v)
			if k >= lo && k < hi {
				mine += float64(v)
			}
		}
		if !(all > 0) {
			return nil, fmt.Errorf("the pair weights of the batch sum to %v", all)
		}
		b.LossScale = float64(l.world) * mine / all
		weights = weights[lo:hi]
	}
	b.Weight = torch.FromSlice(weights, int64(len(weights)))
	if kind == KindFlux {
		b.Pooled = torch.Cat(pooled, 0)
		b.Sigmas = sig
		var err error
		if b.ImgIDs, err = transformer.ImageIDs(int64(h)/f/2, int64(w)/f/2, torch.Float32, torch.CPU); err != nil {
			return nil, err
		}
		if b.TxtIDs, err = transformer.TextIDs(b.Text.Size(1), torch.Float32, torch.CPU); err != nil {
			return nil, err
		}
	}
	dev := l.Config.Device
	for _, t := range []**torch.Tensor{&b.X0W, &b.X0L, &b.Noise, &b.Timesteps, &b.Control, &b.Text, &b.Pooled, &b.ImgIDs, &b.TxtIDs, &b.Weight} {
		if *t == nil {
			continue
		}
		// To the device first: a bfloat16 prompt embedding crosses at half
		// the bytes, and becomes float32 there.
		*t = (*t).ToDevice(dev)
		if (*t).DType().IsFloat() {
			*t = (*t).To(torch.Float32)
		}
		*t = s.Keep(*t)
		torch.Unscope(*t)
	}
	return b, nil
}
