package progress

import (
	"bytes"
	"flag"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/urfave/cli/v2"
)

func context(t *testing.T, quiet bool) (*cli.Context, *bytes.Buffer) {
	var errOut bytes.Buffer
	app := &cli.App{ErrWriter: &errOut}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.Bool("quiet", quiet, "")
	return cli.NewContext(app, fs, nil), &errOut
}

func TestBar(t *testing.T) {
	c, out := context(t, false)
	bar := New(c, "things")
	update := bar.Update()
	require.NotNil(t, update)
	update(1, 3)
	require.Contains(t, out.String(), "things")
	update(3, 3) // finishes at the total
	bar.Finish() // and again is harmless

	// Stopped early: Finish clears it.
	c, out = context(t, false)
	bar = New(c, "stopped")
	bar.Update()(1, 5)
	bar.Finish()
	require.Contains(t, out.String(), "stopped")

	c, out = context(t, true)
	bar = New(c, "quiet")
	require.Nil(t, bar.Update())
	bar.Finish()
	require.Empty(t, out.String())
}
