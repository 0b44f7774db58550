package t5

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

type safetensorsTensor struct {
	name string
	t    *torch.Tensor
}

// saveTensors writes CPU tensors to a safetensors file.
func saveTensors(path string, ts []safetensorsTensor) error {
	var out []safetensors.Tensor
	for _, x := range ts {
		out = append(out, safetensors.Tensor{
			Name:  x.name,
			DType: safetensors.DType(x.t.DType().SafetensorsCode()),
			Shape: x.t.Shape(),
			Data:  x.t.Bytes(),
		})
	}
	return safetensors.Save(path, out, map[string]string{"format": "pt"})
}

// writeIndex writes model.safetensors.index.json for weightMap.
func writeIndex(t *testing.T, dir string, weightMap map[string]string) string {
	t.Helper()
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	require.NoError(t, err)
	p := filepath.Join(dir, IndexFile)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return p
}
