package hub_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/hub/hubtest"
)

// A pipeline fetches the files it reads (not every variant a repository
// holds) into the Hugging Face cache and loads the snapshot folder.
func Example() {
	// A stand-in for https://huggingface.co; a real client uses
	// hub.FromEnv() as it is.
	srv := hubtest.New()
	defer srv.Close()
	const commit = "0123456789abcdef0123456789abcdef01234567"
	srv.AddRepo("org/model", &hubtest.Repo{Refs: map[string]string{"main": commit},
		Commits: map[string]map[string][]byte{commit: {
			"unet/config.json":                              []byte(`{}`),
			"unet/diffusion_pytorch_model.safetensors":      []byte("weights"),
			"unet/diffusion_pytorch_model.fp16.safetensors": []byte("half"),
		}}})
	home, _ := os.MkdirTemp("", "hf-home")
	defer os.RemoveAll(home)

	c := hub.FromEnv()
	c.Endpoint, c.CacheDir, c.Progress = srv.URL(), filepath.Join(home, "hub"), nil
	dir, err := c.Snapshot(context.Background(), "org/model", "main", "unet/config.json", "unet/*.fp16.safetensors")
	if err != nil {
		fmt.Println(err)
		return
	}
	rel, _ := filepath.Rel(c.CacheDir, dir)
	fmt.Println(rel)
	b, _ := os.ReadFile(filepath.Join(dir, "unet", "diffusion_pytorch_model.fp16.safetensors"))
	fmt.Println(string(b))
	_, err = os.Stat(filepath.Join(dir, "unet", "diffusion_pytorch_model.safetensors"))
	fmt.Println(os.IsNotExist(err))
	// Output:
	// models--org--model/snapshots/0123456789abcdef0123456789abcdef01234567
	// half
	// true
}
