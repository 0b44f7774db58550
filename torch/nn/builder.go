package nn

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/dp2osr/dp2o/torch"
)

// Builder hands weights to modules by key while they are built. Keys are
// joined with "." from the builder's prefix (Sub). With a nil Source the
// builder creates zero-filled parameters (or data-less ones on torch.Meta),
// which is how new modules are initialised and how full-size models are
// checked without allocating their weights.
type Builder struct {
	prefix string
	st     *builderState
}

type builderState struct {
	mu         sync.Mutex
	src        Source
	dtype      torch.DType
	dev        torch.Device
	params     *Params
	requested  map[string][]int64
	order      []string
	missing    []string
	mismatched []string
	failed     []error
	allowExtra bool
	keepDType  bool
}

// Params is the set of parameters a Builder created, in creation order. It
// owns them: Close frees them.
type Params struct {
	Names   []string
	Tensors map[string]*torch.Tensor
}

// Get returns the named parameter or nil.
func (p *Params) Get(name string) *torch.Tensor { return p.Tensors[name] }

// List returns the parameters in creation order.
func (p *Params) List() []*torch.Tensor {
	out := make([]*torch.Tensor, len(p.Names))
	for i, n := range p.Names {
		out[i] = p.Tensors[n]
	}
	return out
}

// NumElements is the total number of parameter elements.
func (p *Params) NumElements() int64 {
	var n int64
	for _, t := range p.Tensors {
		n += t.Numel()
	}
	return n
}

// Close frees every parameter.
func (p *Params) Close() {
	for _, t := range p.Tensors {
		t.Close()
	}
}

// BuilderOption configures a Builder.
type BuilderOption func(*builderState)

// AllowUnused lets Finish accept source keys no module asked for.
func AllowUnused() BuilderOption { return func(s *builderState) { s.allowExtra = true } }

// NewBuilder returns a builder reading from src (nil: zero-initialised
// parameters), converting floating-point weights to dtype on dev.
func NewBuilder(src Source, dtype torch.DType, dev torch.Device, opts ...BuilderOption) *Builder {
	st := &builderState{src: src, dtype: dtype, dev: dev, requested: map[string][]int64{},
		params: &Params{Tensors: map[string]*torch.Tensor{}}}
	for _, o := range opts {
		o(st)
	}
	return &Builder{st: st}
}

// Sub returns a builder for the child module name.
func (b *Builder) Sub(name string) *Builder {
	return &Builder{prefix: join(b.prefix, name), st: b.st}
}

// SubI is Sub for a list index.
func (b *Builder) SubI(i int) *Builder { return b.Sub(strconv.Itoa(i)) }

// Prefix is the key prefix of the builder.
func (b *Builder) Prefix() string { return b.prefix }

// DType is the dtype floating-point weights are converted to.
func (b *Builder) DType() torch.DType { return b.st.dtype }

// Device is where weights are placed.
func (b *Builder) Device() torch.Device { return b.st.dev }

// Has reports whether the source holds the named key.
func (b *Builder) Has(name string) bool {
	if b.st.src == nil {
		return false
	}
	_, _, ok := b.st.src.Meta(join(b.prefix, name))
	return ok
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	if b == "" {
		return a
	}
	return a + "." + b
}

// Get returns the parameter name with the given shape. A missing key or a
// shape mismatch is recorded for Finish and a zero tensor of the requested
// shape is returned, so that building goes on and every problem is reported
// at once.
func (b *Builder) Get(name string, shape ...int64) *torch.Tensor {
	return b.get(name, shape, false)
}

// GetOptional is Get for a weight that may be absent (nil then).
func (b *Builder) GetOptional(name string, shape ...int64) *torch.Tensor {
	return b.get(name, shape, true)
}

func (b *Builder) get(name string, shape []int64, optional bool) *torch.Tensor {
	key := join(b.prefix, name)
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if t, ok := st.params.Tensors[key]; ok {
		return t
	}
	var t *torch.Tensor
	if st.src == nil {
		if optional {
			return nil
		}
		t = torch.Zeros(shape, st.dtype, st.dev)
	} else {
		have, _, ok := st.src.Meta(key)
		switch {
		case !ok && optional:
			return nil
		case !ok:
			st.missing = append(st.missing, key)
			t = torch.Zeros(shape, st.dtype, torch.Meta)
		case !slices.Equal(have, shape):
			st.mismatched = append(st.mismatched, fmt.Sprintf("%s: checkpoint %v, model %v", key, have, shape))
			t = torch.Zeros(shape, st.dtype, torch.Meta)
		default:
			var err error
			t, err = st.load(key)
			if err != nil {
				st.failed = append(st.failed, err)
				t = torch.Zeros(shape, st.dtype, torch.Meta)
			}
		}
	}
	torch.Unscope(t)
	st.requested[key] = shape
	st.order = append(st.order, key)
	st.params.Names = append(st.params.Names, key)
	st.params.Tensors[key] = t
	return t
}

func (st *builderState) load(key string) (t *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if st.dev.Type == torch.DeviceMeta {
		shape, dt, _ := st.src.Meta(key)
		if dt.IsFloat() {
			dt = st.dtype
		}
		return torch.Empty(shape, dt, torch.Meta), nil
	}
	src, err := st.src.Load(key)
	if err != nil {
		return nil, err
	}
	t = src
	if t.DType().IsFloat() && t.DType() != st.dtype {
		c := t.To(st.dtype)
		t.Close()
		t = c
	}
	if st.dev != torch.CPU {
		c := t.ToDevice(st.dev)
		t.Close()
		t = c
	}
	return t, nil
}

// Requested returns every key the modules asked for with its shape.
func (b *Builder) Requested() map[string][]int64 {
	b.st.mu.Lock()
	defer b.st.mu.Unlock()
	out := make(map[string][]int64, len(b.st.requested))
	for k, v := range b.st.requested {
		out[k] = v
	}
	return out
}

// Params returns the parameters created so far.
func (b *Builder) Params() *Params { return b.st.params }

// ErrWeights marks errors about a checkpoint that does not fit the model.
var ErrWeights = errors.New("weights do not match the model")

// Finish checks that every requested key was found with its shape and that
// the source holds no key nobody asked for. On error it frees what was
// loaded; the error names the keys (up to 20 of each kind).
func (b *Builder) Finish() (*Params, error) {
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	var msgs []string
	if len(st.missing) > 0 {
		msgs = append(msgs, fmt.Sprintf("%d missing keys: %s", len(st.missing), list(st.missing)))
	}
	if len(st.mismatched) > 0 {
		msgs = append(msgs, fmt.Sprintf("%d shape mismatches: %s", len(st.mismatched), list(st.mismatched)))
	}
	for _, e := range st.failed {
		msgs = append(msgs, e.Error())
	}
	if st.src != nil && !st.allowExtra {
		var extra []string
		for _, k := range st.src.Names() {
			if _, ok := st.requested[k]; !ok {
				extra = append(extra, k)
			}
		}
		if len(extra) > 0 {
			msgs = append(msgs, fmt.Sprintf("%d unexpected keys: %s", len(extra), list(extra)))
		}
	}
	if len(msgs) > 0 {
		st.params.Close()
		return nil, fmt.Errorf("%w: %s", ErrWeights, strings.Join(msgs, "; "))
	}
	return st.params, nil
}

func list(ks []string) string {
	ks = slices.Clone(ks)
	sort.Strings(ks)
	if len(ks) > 20 {
		return strings.Join(ks[:20], ", ") + fmt.Sprintf(", … (%d more)", len(ks)-20)
	}
	return strings.Join(ks, ", ")
}

// Build runs build on a new Builder over src and checks the result with
// Finish: the shared body of every model's FromSource. On success the
// caller owns the returned Params; on error everything loaded is freed.
func Build[M any](src Source, dtype torch.DType, dev torch.Device, build func(*Builder) (M, error), opts ...BuilderOption) (M, *Params, error) {
	b := NewBuilder(src, dtype, dev, opts...)
	m, err := build(b)
	if err != nil {
		b.Params().Close()
		var zero M
		return zero, nil, err
	}
	p, err := b.Finish()
	if err != nil {
		var zero M
		return zero, nil, err
	}
	return m, p, nil
}
