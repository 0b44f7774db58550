// Package jsonconfig reads the config.json files of model folders: one
// place for reading the file and naming it in errors, shared by every
// model package's LoadConfig.
package jsonconfig

import (
	"fmt"
	"os"
)

// Load reads path and decodes it with parse. A read error is prefixed with
// what ("unet config"); a parse error with the path.
func Load[T any](path, what string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	data, err := os.ReadFile(path)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	c, err := parse(data)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
