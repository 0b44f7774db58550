package main

import (
	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/hub"
)

// hubClient resolves model ids from the environment as huggingface_hub
// does, with download progress bars unless --quiet.
func hubClient(c *cli.Context) *hub.Client {
	h := hub.FromEnv()
	if c.Bool("quiet") {
		h.Progress = nil
	}
	return h
}
