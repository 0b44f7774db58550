// Command hubcheck checks the hub package against huggingface_hub (the
// Python library) on the same cache: it serves a fake Hub repository
// (serve), or downloads files with the Go client configured from the
// environment (get). scripts/hubcheck/run.sh drives both sides.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/hub/hubtest"
)

const commit = "4444444444444444444444444444444444444444"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hubcheck serve | get REPO REVISION FILE...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		srv := hubtest.New()
		defer srv.Close()
		big := make([]byte, 300_000)
		for i := range big {
			big[i] = byte(i * 31)
		}
		srv.AddRepo("org/tiny", &hubtest.Repo{Refs: map[string]string{"main": commit},
			Commits: map[string]map[string][]byte{commit: {
				"model_index.json":                         []byte(`{"_class_name": "StableDiffusionPipeline"}`),
				"unet/config.json":                         []byte(`{"sample_size": 8}`),
				"unet/diffusion_pytorch_model.safetensors": big,
				"unet/diffusion_pytorch_model.bin":         big[:1000],
			}}})
		fmt.Println(srv.URL())
		// Serve until stdin closes.
		bufio.NewScanner(os.Stdin).Scan()
	case "get":
		c := hub.FromEnv()
		c.Progress = nil
		for _, f := range os.Args[4:] {
			p, err := c.Download(context.Background(), os.Args[2], os.Args[3], f)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Println(strings.TrimPrefix(p, c.CacheDir+"/"))
		}
	}
}
