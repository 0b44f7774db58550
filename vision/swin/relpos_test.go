package swin

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestInterpolateRelativePositionTable compares with scipy's interp2d run by
// the official recipe (testdata/relpos/gen.py, this package's own reference).
func TestInterpolateRelativePositionTable(t *testing.T) {
	testutil.NoLeak(t)
	raw, err := os.ReadFile("testdata/relpos/cases.json")
	require.NoError(t, err)
	var doc struct {
		Cases []struct {
			Name      string `json:"name"`
			DstNumPos int64  `json:"dst_num_pos"`
		} `json:"cases"`
		Tolerance float64 `json:"tolerance"`
	}
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.NotEmpty(t, doc.Cases)
	ts := testutil.Tensors(t, "testdata/relpos/tables.safetensors")
	for _, c := range doc.Cases {
		got, err := InterpolateRelativePositionTable(ts[c.Name+".src"], c.DstNumPos)
		require.NoError(t, err, c.Name)
		testutil.AssertClose(t, c.Name, got, ts[c.Name+".dst"], doc.Tolerance, doc.Tolerance)
		got.Close()
		// The right size passes through unchanged.
		same, err := InterpolateRelativePositionTable(ts[c.Name+".dst"], c.DstNumPos)
		require.NoError(t, err)
		testutil.AssertEqual(t, c.Name+" unchanged", same, ts[c.Name+".dst"])
		same.Close()
	}
	bad := torch.Zeros([]int64{10, 2}, torch.Float32, torch.CPU)
	defer bad.Close()
	_, err = InterpolateRelativePositionTable(bad, 529)
	require.ErrorContains(t, err, "square")
}
