package torch

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Close hands only small CPU tensors outside autograd to the shim's lazy
// list; anything else is freed before Close returns. The next shim call,
// or the live counters, empty the list.
func TestCloseDefersOnlySmallCPUTensors(t *testing.T) {
	LiveTensors() // empties the list
	require.False(t, deferredPending())

	small := Unscope(Ones([]int64{4}, Float32, CPU))
	small.Close()
	require.True(t, deferredPending(), "a small CPU tensor waits for the next call")
	y := Unscope(Ones([]int64{1}, Float32, CPU)) // any shim call empties the list
	require.False(t, deferredPending())
	y.Close()
	before := LiveTensors()
	require.False(t, deferredPending(), "counting frees what was closed")

	big := Unscope(Zeros([]int64{deferredMaxBytes/4 + 1}, Float32, CPU))
	big.Close()
	require.False(t, deferredPending(), "a tensor over the limit is freed at once")
	require.Equal(t, before, LiveTensors())

	// A small view of a big storage would free the storage: not deferred.
	base := Unscope(Zeros([]int64{deferredMaxBytes/4 + 1}, Float32, CPU))
	view := Unscope(base.Narrow(0, 0, 1))
	base.Close()
	view.Close()
	require.False(t, deferredPending(), "a view of a big storage is freed at once")

	g := Unscope(Ones([]int64{2}, Float32, CPU))
	g.SetRequiresGrad(true)
	h := Unscope(g.MulScalar(2)) // has an autograd graph
	h.Close()
	require.False(t, deferredPending(), "a tensor in autograd is freed at once")
	g.Close()
	LiveTensors()
}
