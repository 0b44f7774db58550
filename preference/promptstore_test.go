package preference

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// TestPromptStore: a store filled by two ranks, each its share, holds every
// prompt of the pair file; its embeddings are the encoder's bit for bit (a
// loader reading the store yields the batches of one calling the encoder);
// a store of other text encoders, a missing prompt and a corrupt file are
// clear errors.
func TestPromptStore(t *testing.T) {
	p := tinySD2Pipeline(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 3, 4, 1, 32)
	pf, err := LoadPairs(pairs)
	require.NoError(t, err)
	prompts := pf.Prompts()
	require.Len(t, prompts, 3, "three groups, three prompts")
	require.IsIncreasing(t, prompts)

	dc, err := SD2Data(p)
	require.NoError(t, err)
	text := optim.Named(p.TextEncoder.Params)
	storeDir := filepath.Join(dir, "prompts")
	calls := 0
	counting := func(s string) (*torch.Tensor, *torch.Tensor, error) {
		calls++
		return dc.EncodePrompt(s)
	}
	total := 0
	for rank := range 2 {
		st, err := OpenPromptStore(storeDir, KindSD2, text)
		require.NoError(t, err)
		n, err := st.Fill(prompts, counting, rank, 2)
		require.NoError(t, err)
		total += n
	}
	require.Equal(t, len(prompts), total, "the ranks' shares cover the prompts once")
	require.Equal(t, len(prompts), calls)
	st, err := OpenPromptStore(storeDir, KindSD2, text)
	require.NoError(t, err)
	require.Empty(t, st.Missing(prompts))
	n, err := st.Fill(prompts, counting, 0, 1)
	require.NoError(t, err)
	require.Zero(t, n, "a filled store encodes nothing again")

	for _, pr := range prompts {
		want, wantPooled, err := dc.EncodePrompt(pr)
		require.NoError(t, err)
		got, pooled, err := st.Get(pr)
		require.NoError(t, err)
		require.Nil(t, pooled, "SD2 has no pooled embedding")
		require.Nil(t, wantPooled)
		wantCPU := want.ToDevice(torch.CPU)
		testutil.AssertEqual(t, pr, got, wantCPU)
		got.Close()
		wantCPU.Close()
		want.Close()
	}

	// A loader reading the store: the same batches, bit for bit.
	viaStore := dc
	viaStore.EncodePrompt = st.Encoder()
	var batches [2][]*Batch
	for i, c := range []DataConfig{dc, viaStore} {
		l, err := NewLoader(c, pf, filepath.Dir(pairs), 2, 7)
		require.NoError(t, err)
		for range 3 {
			b, err := l.Next()
			require.NoError(t, err)
			batches[i] = append(batches[i], b)
		}
		l.Close()
	}
	for k := range batches[0] {
		wants := batchTensors(batches[0][k])
		for j, c := range batchTensors(batches[1][k]) {
			testutil.AssertEqual(t, fmt.Sprintf("batch %d %s", k, c.name), c.t, wants[j].t)
		}
		batches[0][k].Close()
		batches[1][k].Close()
	}

	// Other encoders: the UNet's weights stand in for another text encoder.
	var other []optim.Param
	for _, q := range p.UNet.Parameters()[:3] {
		other = append(other, optim.Param{Name: q.Name, Tensor: q.Tensor})
	}
	if _, err := OpenPromptStore(storeDir, KindSD2, other); err == nil || !strings.Contains(err.Error(), "other text encoders") {
		t.Errorf("a store of other encoders: %v", err)
	}
	if _, err := OpenPromptStore(storeDir, KindFlux, text); err == nil {
		t.Error("an SD2 store opened for FLUX")
	}
	// Weights equal in float32 and bfloat16 have one fingerprint: the
	// dtype tells the stores apart.
	s := torch.NewScope()
	zeros := func(dt torch.DType) []optim.Param {
		return []optim.Param{{Name: "w", Tensor: torch.Zeros([]int64{4}, dt, torch.CPU)}}
	}
	dtDir := filepath.Join(dir, "by-dtype")
	_, err = OpenPromptStore(dtDir, KindSD2, zeros(torch.Float32))
	require.NoError(t, err)
	if _, err := OpenPromptStore(dtDir, KindSD2, zeros(torch.BFloat16)); err == nil || !strings.Contains(err.Error(), "other text encoders") {
		t.Errorf("a float32 encoder's store opened for its bfloat16 copy: %v", err)
	}
	s.Close()
	if _, _, err := st.Get("a prompt nobody encoded"); err == nil || !strings.Contains(err.Error(), "not precomputed") {
		t.Errorf("a missing prompt: %v", err)
	}
	require.NoError(t, os.WriteFile(st.path(prompts[0]), []byte("not a safetensors file"), 0o644))
	if _, _, err := st.Get(prompts[0]); err == nil {
		t.Error("a corrupt embedding file was read")
	}
}
