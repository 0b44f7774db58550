package dist

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dp2osr/dp2o/torch"
)

// onDevice moves t to the group's device (an NCCL group's GPU), closing
// the CPU copy; on CPU it returns t.
func onDevice(g *Group, t *torch.Tensor) *torch.Tensor {
	if !g.Device().IsCUDA() {
		return t
	}
	d := t.ToDevice(g.Device())
	t.Close()
	return d
}

func numelOf(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// rankValues is rank's input to the reductions: (rank+1)·i + rank for i in
// [0, n).
func rankValues(rank, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = float64((rank+1)*i + rank)
	}
	return v
}

func toF32(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

func toI64(v []float64) []int64 {
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

// workerCollectives checks every collective against values computed here
// from the same formula each rank used.
func workerCollectives() int {
	live := torch.LiveTensors()
	g := join()
	if g == nil {
		return 1
	}
	r, w := g.Rank(), g.WorldSize()
	c := &checker{rank: r}
	const n = 7
	dev := func(t *torch.Tensor) *torch.Tensor { return onDevice(g, t) }

	// Reductions: sum, average, max, min over the ranks' rankValues.
	sum := make([]float64, n)
	maxv := make([]float64, n)
	minv := make([]float64, n)
	for q := range w {
		for i, x := range rankValues(q, n) {
			sum[i] += x
			if q == 0 || x > maxv[i] {
				maxv[i] = x
			}
			if q == 0 || x < minv[i] {
				minv[i] = x
			}
		}
	}
	mine := rankValues(r, n)
	f32 := dev(torch.FromSlice(toF32(mine), n))
	f64 := dev(torch.FromSlice(mine, n))
	i64 := dev(torch.FromSlice(toI64(mine), n))
	if c.noErr("all_reduce sum", g.AllReduce(Sum, f32, f64, i64)) {
		if got := f32.Float32s(); !slices.Equal(got, toF32(sum)) {
			c.errorf("all_reduce sum float32: got %v want %v", got, sum)
		}
		if got := f64.Float64s(); !slices.Equal(got, sum) {
			c.errorf("all_reduce sum float64: got %v want %v", got, sum)
		}
		if got := i64.Int64s(); !slices.Equal(got, toI64(sum)) {
			c.errorf("all_reduce sum int64: got %v want %v", got, sum)
		}
	}
	avg := dev(torch.FromSlice(toF32(mine), n))
	if c.noErr("all_reduce average", g.AllReduce(Average, avg)) {
		want := toF32(sum)
		for i := range want {
			want[i] /= float32(w)
		}
		if got := avg.Float32s(); !slices.Equal(got, want) {
			c.errorf("all_reduce average: got %v want %v", got, want)
		}
	}
	mx, mn := dev(torch.FromSlice(mine, n)), dev(torch.FromSlice(mine, n))
	if c.noErr("all_reduce max", g.AllReduce(Max, mx)) && !slices.Equal(mx.Float64s(), maxv) {
		c.errorf("all_reduce max: got %v want %v", mx.Float64s(), maxv)
	}
	if c.noErr("all_reduce min", g.AllReduce(Min, mn)) && !slices.Equal(mn.Float64s(), minv) {
		c.errorf("all_reduce min: got %v want %v", mn.Float64s(), minv)
	}
	if got, err := g.AllReduceFloat64s(Sum, float64(r), 1); c.noErr("all_reduce float64s", err) {
		if want := []float64{float64(w*(w-1)) / 2, float64(w)}; !slices.Equal(got, want) {
			c.errorf("all_reduce float64s: got %v want %v", got, want)
		}
	}

	// Bad input fails on every rank alike, before any collective starts.
	if err := g.AllReduce(Average, i64); err == nil {
		c.errorf("average of an int64 tensor: no error")
	}
	nc := dev(torch.FromSlice(toF32(mine[:n-1]), (n-1)/2, 2))
	nct := nc.Transpose(0, 1)
	if err := g.AllReduce(Sum, nct); err == nil {
		c.errorf("all_reduce of a non-contiguous tensor: no error")
	}
	nct.Close()
	nc.Close()
	closed := torch.FromSlice(mine, n)
	closed.Close()
	if err := g.AllReduce(Sum, closed); err == nil {
		c.errorf("all_reduce of a closed tensor: no error")
	}

	// Broadcast from the last rank.
	root := w - 1
	b := dev(torch.FromSlice(rankValues(r, n), n))
	if c.noErr("broadcast", g.Broadcast(root, b)) && !slices.Equal(b.Float64s(), rankValues(root, n)) {
		c.errorf("broadcast: got %v want %v", b.Float64s(), rankValues(root, n))
	}

	// All-gather: rank q's int64 values in slot q.
	gin := dev(torch.FromSlice(toI64(rankValues(r, n)), n))
	parts, err := g.AllGather(gin)
	gin.Close()
	if c.noErr("all_gather", err) {
		if len(parts) != w {
			c.errorf("all_gather: %d parts for %d ranks", len(parts), w)
		}
		for q, p := range parts {
			if q < w && !slices.Equal(p.Int64s(), toI64(rankValues(q, n))) {
				c.errorf("all_gather part %d: got %v want %v", q, p.Int64s(), rankValues(q, n))
			}
			p.Close()
		}
	}

	// Store: rank 0 publishes, everyone reads.
	if r == 0 {
		c.noErr("store set", g.StoreSet("greeting", []byte(fmt.Sprintf("world of %d", w))))
	}
	if v, err := g.StoreGet("greeting"); c.noErr("store get", err) && string(v) != fmt.Sprintf("world of %d", w) {
		c.errorf("store get: %q", v)
	}

	checkBuckets(c, g)
	for _, last := range []bool{false, true} { // the last rank's flag, the others false
		got, err := g.Any(last && r == w-1)
		if c.noErr("any", err) && got != last {
			c.errorf("any: %v when only the last rank says %v", got, last)
		}
	}
	checkReducerFailure(c, g)
	checkShardedReducerFailure(c, g)
	checkShardedClip(c, g)
	checkShardedBound(c, g)
	c.noErr("barrier", g.Barrier())
	for _, t := range []*torch.Tensor{f32, f64, i64, avg, mx, mn, b} {
		t.Close()
	}
	if err := g.Close(); err != nil {
		c.errorf("close: %v", err)
	}
	if err := g.Barrier(); err != ErrClosed {
		c.errorf("barrier after close: %v, want ErrClosed", err)
	}
	if after := torch.LiveTensors(); after != live {
		c.errorf("leaked %d tensor handles", after-live)
	}
	if c.fails > 0 {
		return 1
	}
	return 0
}

// gradSync is the protocol a Reducer and an Averager share (preference's
// GradientSync).
type gradSync interface {
	Prepare(sync bool) error
	Finish() error
	Abort() error
}

// bucketPerParam makes n parameters of 256 zeros on the group's device
// (in the caller's scope) and a Reducer over them with a bucket each; the
// caller closes the reducer.
func bucketPerParam(g *Group, n int) ([]*torch.Tensor, *Reducer, error) {
	const each = 1 << 8
	var params []*torch.Tensor
	for range n {
		params = append(params, onDevice(g, torch.Zeros([]int64{each}, torch.Float32, torch.CPU)).SetRequiresGrad(true))
	}
	g.SetBucketBytes(each * 4)
	defer g.SetBucketBytes(DefaultBucketBytes) // the buckets are made now
	red, err := g.NewReducer(params)
	return params, red, err
}

// scaledSumBackward runs the backward pass of (r+1)·Σ sum(p): every
// gradient element is r+1.
func scaledSumBackward(params []*torch.Tensor, r int) {
	s := torch.NewScope()
	defer s.Close()
	sum := params[0].Sum()
	for _, p := range params[1:] {
		sum = sum.Add(p.Sum())
	}
	sum.MulScalar(float64(r + 1)).Backward(nil)
}

// checkReducerFailure: a step that fails on one rank (rank 0 misuses the
// reducer: it never arms it; the last rank aborts an armed step, with the
// reducer and with an Averager) fails on every rank, none left waiting in
// a collective, and the next step averages as it should.
func checkReducerFailure(c *checker, g *Group) {
	r, w := g.Rank(), g.WorldSize()
	s := torch.NewScope()
	defer s.Close()
	params, red, err := bucketPerParam(g, 2)
	if !c.noErr("reducer", err) {
		return
	}
	defer red.Close()
	step := func(arm bool) error {
		for _, p := range params {
			p.ZeroGrad(true)
		}
		if err := red.Prepare(arm); err != nil {
			return err
		}
		scaledSumBackward(params, r)
		return red.Finish()
	}
	err = step(r != 0)
	switch {
	case err == nil:
		c.errorf("reducer: a step rank 0 never armed: no error")
	case r == 0 && !strings.Contains(err.Error(), "without prepare(sync)"):
		c.errorf("reducer: rank 0's failed step: %v", err)
	case r != 0 && !strings.Contains(err.Error(), "another rank failed"):
		c.errorf("reducer: rank %d, when rank 0 failed: %v", r, err)
	}
	// An armed step whose batch failed on the last rank: it aborts, and
	// every rank fails, with the reducer and with an Averager.
	backward := func() { scaledSumBackward(params, r) }
	for _, sync := range []struct {
		name string
		gradSync
	}{{"reducer", red}, {"averager", g.NewAverager(params)}} {
		for _, p := range params {
			p.ZeroGrad(true)
		}
		if !c.noErr(sync.name+": prepare", sync.Prepare(true)) {
			return
		}
		if r == w-1 {
			err = sync.Abort()
		} else {
			backward()
			err = sync.Finish()
		}
		switch {
		case err == nil:
			c.errorf("%s: a step rank %d aborted: no error", sync.name, w-1)
		case r == w-1 && !strings.Contains(err.Error(), "this rank's step failed"):
			c.errorf("%s: rank %d's aborted step: %v", sync.name, r, err)
		case r != w-1 && !strings.Contains(err.Error(), "another rank"):
			c.errorf("%s: rank %d, when rank %d aborted: %v", sync.name, r, w-1, err)
		}
	}
	if !c.noErr("reducer: the step after a failed one", step(true)) {
		return
	}
	want := float64(w+1) / 2 // the mean of r+1 over the ranks
	for k, p := range params {
		for _, v := range p.Grad().To(torch.Float64).ToDevice(torch.CPU).Float64s() {
			if v != want {
				c.errorf("reducer: parameter %d's gradient after a failed step: %v, want %v", k, v, want)
				break
			}
		}
	}
}

// checkShardedReducerFailure: with sharded gradients every pass reduces,
// so a rank that aborts in the middle of gradient accumulation makes the
// others' next Prepare fail, none left waiting in a collective; misuse is
// refused; the next step leaves each owner, and only it, with the mean.
func checkShardedReducerFailure(c *checker, g *Group) {
	r, w := g.Rank(), g.WorldSize()
	s := torch.NewScope()
	defer s.Close()
	owners := []int{w - 1, 0, (w - 1) / 2}
	params, red, err := bucketPerParam(g, len(owners))
	if !c.noErr("sharded reducer", err) {
		return
	}
	defer red.Close()
	if err := red.ShardGradients(owners[:2]); err == nil || !strings.Contains(err.Error(), "2 owners for 3 parameters") {
		c.errorf("sharded reducer: 2 owners for 3 parameters: %v, want an error saying so", err)
	}
	if err := red.ShardGradients([]int{0, w, 0}); err == nil || !strings.Contains(err.Error(), "outside a world") {
		c.errorf("sharded reducer: an owner outside the world: %v, want an error saying so", err)
	}
	if !c.noErr("sharded reducer: shard", red.ShardGradients(owners)) {
		return
	}
	backward := func() { scaledSumBackward(params, r) }
	// Three passes; the last rank aborts in the second.
	const accum = 3
	var got error
	for m := range accum {
		if err := red.Prepare(m == accum-1); err != nil {
			got = err
			break
		}
		if m == 1 && r == w-1 {
			got = red.Abort()
			break
		}
		if m == 0 {
			// Mid-step, the owners cannot change.
			if err := red.ShardGradients(owners); err == nil || !strings.Contains(err.Error(), "between steps") {
				c.errorf("sharded reducer: ShardGradients in a step: %v, want an error", err)
			}
		}
		backward()
	}
	if got == nil {
		got = red.Finish()
	}
	switch {
	case got == nil:
		c.errorf("sharded reducer: a step rank %d aborted: no error", w-1)
	case r == w-1 && !strings.Contains(got.Error(), "this rank's step failed"):
		c.errorf("sharded reducer: rank %d's aborted step: %v", r, got)
	case r != w-1 && !strings.Contains(got.Error(), "another rank failed"):
		c.errorf("sharded reducer: rank %d, when rank %d aborted: %v", r, w-1, got)
	}
	for k, p := range params {
		if p.Grad() != nil {
			c.errorf("sharded reducer: parameter %d has a gradient after a failed step", k)
		}
	}
	// The next step: two passes; each owner holds the mean of 2(r+1).
	for m := range 2 {
		if !c.noErr("sharded reducer: prepare", red.Prepare(m == 1)) {
			return
		}
		backward()
		for k, p := range params {
			if p.Grad() != nil && m == 1 {
				// Between passes the reducer holds the sums: no .grad.
				c.errorf("sharded reducer: parameter %d has a .grad between passes", k)
			}
		}
	}
	if !c.noErr("sharded reducer: the step after a failed one", red.Finish()) {
		return
	}
	want := float64(w + 1) // the mean of 2(r+1) over the ranks
	for k, p := range params {
		gr := p.Grad()
		if owners[k] != r {
			if gr != nil {
				c.errorf("sharded reducer: rank %d holds parameter %d's gradient, which rank %d owns", r, k, owners[k])
			}
			continue
		}
		if gr == nil {
			c.errorf("sharded reducer: rank %d owns parameter %d and has no gradient for it", r, k)
			continue
		}
		for _, v := range gr.To(torch.Float64).ToDevice(torch.CPU).Float64s() {
			if v != want {
				c.errorf("sharded reducer: parameter %d's gradient: %v, want %v", k, v, want)
				break
			}
		}
	}
	for _, p := range params {
		p.ZeroGrad(true)
	}
}

// checkShardedClip: ClipShardedGradNorm over gradients the ranks hold in
// shares (a 0-dim one among them) takes the norm of them all and scales
// each rank's; a failure on one rank fails it on every rank.
func checkShardedClip(c *checker, g *Group) {
	r, w := g.Rank(), g.WorldSize()
	s := torch.NewScope()
	defer s.Close()
	// Rank r holds a 0-dim gradient r+1 and a vector of r+2 twos.
	scalar := onDevice(g, torch.Scalar(0)).SetRequiresGrad(true)
	vec := onDevice(g, torch.Zeros([]int64{int64(r + 2)}, torch.Float32, torch.CPU)).SetRequiresGrad(true)
	scalar.SetGrad(onDevice(g, torch.Scalar(float64(r+1))))
	vec.SetGrad(onDevice(g, torch.Full([]int64{int64(r + 2)}, 2, torch.Float32, torch.CPU)))
	sq := 0.0
	for q := range w {
		sq += float64((q+1)*(q+1)) + 4*float64(q+2)
	}
	want := math.Sqrt(sq)
	maxNorm := want / 4
	norm, err := g.ClipShardedGradNorm([]*torch.Tensor{scalar, vec}, maxNorm, 2)
	if !c.noErr("sharded clip", err) {
		return
	}
	if math.Abs(norm-want) > 1e-5*want {
		c.errorf("sharded clip: total norm %v, want %v", norm, want)
	}
	coef := maxNorm / (want + 1e-6)
	if got := scalar.Grad().Item(); math.Abs(got-float64(r+1)*coef) > 1e-5 {
		c.errorf("sharded clip: the 0-dim gradient is %v after clipping, want %v", got, float64(r+1)*coef)
	}
	for _, v := range vec.Grad().ToDevice(torch.CPU).Float64s() {
		if math.Abs(v-2*coef) > 1e-5 {
			c.errorf("sharded clip: a gradient element is %v after clipping, want %v", v, 2*coef)
			break
		}
	}
	// The last rank's list holds a closed tensor: every rank fails.
	bad := []*torch.Tensor{vec}
	if r == w-1 {
		closed := torch.Zeros([]int64{1}, torch.Float32, torch.CPU)
		closed.Close()
		bad = append(bad, closed)
	}
	_, err = g.ClipShardedGradNorm(bad, 1, 2)
	switch {
	case err == nil:
		c.errorf("sharded clip failing on rank %d: no error", w-1)
	case r != w-1 && !strings.Contains(err.Error(), "another rank failed"):
		c.errorf("sharded clip: rank %d, when rank %d failed: %v", r, w-1, err)
	}
}

// checkShardedBound: a sharded reducer holds at most 2·MaxInFlight + 1
// bucket buffers at once, whatever the ranks' speeds. Rank 0's backward
// pass is made much slower than the others' (extra work between each
// weight's gradient), so in the first step the others run ahead of its
// announcements of the bucket order, and in the next ones ahead of its
// reduces; a bucket per weight, 12 of them.
func checkShardedBound(c *checker, g *Group) {
	r, w := g.Rank(), g.WorldSize()
	s := torch.NewScope()
	defer s.Close()
	const layers, width = 12, 4
	gen := torch.MustGenerator(torch.CPU, 77)
	var params []*torch.Tensor
	owners := make([]int, layers)
	for i := range layers {
		params = append(params, onDevice(g, torch.Randn([]int64{width, width}, gen, torch.Float32, torch.CPU).MulScalar(0.3)).SetRequiresGrad(true))
		owners[i] = i % w
	}
	x := onDevice(g, torch.Randn([]int64{64, width}, gen, torch.Float32, torch.CPU))
	var slow *torch.Tensor
	if r == 0 {
		slow = onDevice(g, torch.Randn([]int64{width, 2048}, gen, torch.Float32, torch.CPU))
	}
	g.SetBucketBytes(width * width * 4) // a bucket each
	defer g.SetBucketBytes(DefaultBucketBytes)
	red, err := g.NewReducer(params)
	if !c.noErr("bounded sharded reducer", err) {
		return
	}
	defer red.Close()
	if !c.noErr("bounded sharded reducer: shard", red.ShardGradients(owners)) {
		return
	}
	for step := range 3 {
		for m := range 2 {
			if !c.noErr("bounded sharded reducer: prepare", red.Prepare(m == 1)) {
				return
			}
			func() {
				ss := torch.NewScope()
				defer ss.Close()
				h := x
				for _, p := range params {
					h = h.Matmul(p).Tanh()
					if slow != nil {
						for range 4 {
							h = h.Matmul(slow).Tanh().Matmul(slow.Transpose(0, 1)).MulScalar(1e-3).Add(h)
						}
					}
				}
				h.Sum().Backward(nil)
			}()
		}
		if !c.noErr("bounded sharded reducer: finish", red.Finish()) {
			return
		}
		if peak, most := red.PeakBuffers(), 2*MaxInFlight+1; peak > most || peak == 0 {
			c.errorf("bounded sharded reducer: step %d held %d bucket buffers at once, want 1 to %d", step, peak, most)
		}
		for _, p := range params {
			p.ZeroGrad(true)
		}
	}
}

// bucketShapes are the parameters of the bucketing check: mixed sizes and
// dtypes, so small buckets split them in several ways.
var bucketShapes = [][]int64{{3, 4}, {5}, {2, 2, 2}, {1}, {6, 3}}

// checkBuckets runs BroadcastParameters and AverageGradients with buckets
// far smaller than the parameters, and a parameter with a gradient on rank
// 0 only and one with none.
func checkBuckets(c *checker, g *Group) {
	r, w := g.Rank(), g.WorldSize()
	s := torch.NewScope()
	defer s.Close()
	var params []*torch.Tensor
	for k, shape := range bucketShapes {
		numel := numelOf(shape)
		p := torch.FromSlice(toF32(rankValues(r+k, numel)), shape...)
		if k == 2 {
			p = p.To(torch.Float64)
		}
		params = append(params, onDevice(g, p).SetRequiresGrad(true))
	}
	g.SetBucketBytes(40)
	defer g.SetBucketBytes(DefaultBucketBytes)
	if !c.noErr("broadcast_parameters", g.BroadcastParameters(params)) {
		return
	}
	for k, p := range params {
		numel := numelOf(bucketShapes[k])
		if got := p.Detach().To(torch.Float64).Float64s(); !slices.Equal(got, rankValues(k, numel)) {
			c.errorf("broadcast_parameters %d: got %v want rank 0's %v", k, got, rankValues(k, numel))
		}
		if !p.RequiresGrad() {
			c.errorf("broadcast_parameters %d: lost requires_grad", k)
		}
	}
	// Gradients: rank q holds (q+1)·i for parameter k (k != 3, 4); parameter
	// 3 has one on rank 0 only, parameter 4 on no rank.
	for k, p := range params {
		numel := numelOf(bucketShapes[k])
		if k == 4 || (k == 3 && r != 0) {
			continue
		}
		gr := make([]float64, numel)
		for i := range gr {
			gr[i] = float64((r + 1) * i)
		}
		p.SetGrad(onDevice(g, torch.FromSlice(gr, bucketShapes[k]...).To(p.DType())))
	}
	// A reducer used out of order fails on every rank alike.
	if red, err := g.NewReducer(params); c.noErr("reducer", err) {
		if err := red.Finish(); err == nil {
			c.errorf("reducer: finish without prepare: no error")
		}
		red.Close()
		if err := red.Prepare(true); err != ErrClosed {
			c.errorf("reducer: prepare after close: %v, want ErrClosed", err)
		}
	}
	if _, err := g.NewReducer([]*torch.Tensor{params[0].Detach()}); err == nil {
		c.errorf("reducer over a tensor that does not require grad: no error")
	}
	if nb, err := g.averageGradients(nil, false); err != nil || nb != 0 {
		c.errorf("average_gradients of no parameters: %d buckets, %v", nb, err)
	}
	nb, err := g.averageGradients(params, false)
	if !c.noErr("average_gradients", err) {
		return
	}
	if nb < 3 {
		c.errorf("average_gradients: %d buckets of 40 bytes for %d parameters", nb, len(params))
	}
	for k, p := range params {
		numel := numelOf(bucketShapes[k])
		gr := p.Grad()
		if k == 4 {
			if gr != nil {
				c.errorf("average_gradients: parameter without gradients got one")
			}
			continue
		}
		if gr == nil {
			c.errorf("average_gradients: parameter %d has no gradient", k)
			continue
		}
		want := make([]float64, numel)
		for i := range want {
			if k == 3 {
				want[i] = float64(i) / float64(w)
			} else {
				for q := range w {
					want[i] += float64((q + 1) * i)
				}
				want[i] /= float64(w)
			}
		}
		got := gr.To(torch.Float64).Float64s()
		for i := range want {
			// float32 division of an exact integer sum: within one ulp.
			if d := got[i] - want[i]; d > 1e-6*max(1, want[i]) || -d > 1e-6*max(1, want[i]) {
				c.errorf("average_gradients %d: got %v want %v", k, got, want)
				break
			}
		}
		gr.Close()
	}
}

// workerDead: once the group is up, the last rank kills itself while the
// others wait in a collective (DP2O_DIST_TEST_PEER=kill), or stalls past
// the timeout without joining it (stall); the others must get an error from
// that collective within the timeout.
func workerDead() int {
	g := join()
	if g == nil {
		return 1
	}
	if err := g.Barrier(); err != nil {
		fmt.Fprintln(os.Stderr, "barrier:", err)
		return 1
	}
	if g.Rank() == g.WorldSize()-1 {
		if os.Getenv("DP2O_DIST_TEST_PEER") == "stall" {
			time.Sleep(g.Timeout() + time.Second)
			os.Exit(0)
		}
		// Let the others leave the barrier and enter the collective first:
		// the peer dies while they wait in it.
		time.Sleep(300 * time.Millisecond)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	s := torch.NewScope()
	defer s.Close()
	x := torch.Ones([]int64{1 << 10}, torch.Float32, torch.CPU).SetRequiresGrad(true)
	var red *Reducer
	var err error
	if os.Getenv("DP2O_DIST_TEST_OP") == "reducer" {
		g.SetBucketBytes(1 << 10) // a bucket each
		if red, err = g.NewReducer([]*torch.Tensor{x, x.Detach().Clone().SetRequiresGrad(true)}); err != nil {
			fmt.Fprintln(os.Stderr, "reducer:", err)
			return 1
		}
		defer red.Close()
	}
	start := time.Now()
	if red == nil {
		err = g.AllReduce(Sum, x.Detach())
	} else if err = red.Prepare(true); err == nil {
		x.Sum().Backward(nil) // the clone gets no gradient: Finish starts both buckets
		err = red.Finish()
	}
	took := time.Since(start)
	fmt.Printf("collective returned after %v: %v\n", took, err)
	if err == nil {
		fmt.Fprintln(os.Stderr, "all_reduce with a dead peer: no error")
		return 1
	}
	if took > g.Timeout()+5*time.Second {
		fmt.Fprintf(os.Stderr, "all_reduce with a dead peer took %v (timeout %v)\n", took, g.Timeout())
		return 1
	}
	start = time.Now()
	g.Close()
	fmt.Printf("close took %v\n", time.Since(start))
	return 0
}
