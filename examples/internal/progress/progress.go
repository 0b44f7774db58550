// Package progress is the example programs' progress bar for work whose
// size the library reports as it goes (a Progress func(done, total int)).
package progress

import (
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
)

// Bar is a progress bar on the program's error stream, made at the first
// report (which gives the total).
type Bar struct {
	c    *cli.Context
	what string
	b    *progressbar.ProgressBar
}

// New returns a Bar described by what, or nil with --quiet. Its Update is
// the Progress callback to hand to a job; a nil Bar gives a nil callback.
func New(c *cli.Context, what string) *Bar {
	if c.Bool("quiet") {
		return nil
	}
	return &Bar{c: c, what: what}
}

// Update returns the callback that draws the bar (nil for a nil Bar).
func (p *Bar) Update() func(done, total int) {
	if p == nil {
		return nil
	}
	return func(done, total int) {
		if p.b == nil {
			p.b = progressbar.NewOptions(total, progressbar.OptionSetDescription(p.what), progressbar.OptionSetWriter(p.c.App.ErrWriter),
				progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionClearOnFinish())
		}
		p.b.Set(done)
		if done == total {
			p.b.Finish()
		}
	}
}

// Finish clears the bar when the work stopped before its end (an error, a
// cancel). It is safe on a nil Bar and on a finished one.
func (p *Bar) Finish() {
	if p != nil && p.b != nil && !p.b.IsFinished() {
		p.b.Finish()
	}
}
