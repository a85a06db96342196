package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows how far a phase has come.
type progress interface {
	add(n int)
	set(n int)
	finish()
}

// noProgress draws nothing, for output that is not a terminal.
type noProgress struct{}

func (noProgress) add(int) {}
func (noProgress) set(int) {}
func (noProgress) finish() {}

// barProgress draws a progress bar on a terminal.
type barProgress struct{ bar *progressbar.ProgressBar }

func (p barProgress) add(n int) { _ = p.bar.Add(n) }
func (p barProgress) set(n int) { _ = p.bar.Set(n) }
func (p barProgress) finish()   { _ = p.bar.Finish() }

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressFactory makes one bar per phase on w, or no bar at all when
// disabled.
type progressFactory struct {
	w       io.Writer
	enabled bool
}

// newProgress returns a bar for total items; total -1 means unknown.
func (f progressFactory) newProgress(description string, total int64) progress {
	if !f.enabled {
		return noProgress{}
	}
	return barProgress{progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(f.w),
		progressbar.OptionSetDescription(description),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("msg"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionFullWidth(),
		progressbar.OptionOnCompletion(func() { _, _ = io.WriteString(f.w, "\n") }),
		// The spinner of a bar with no total redraws from a goroutine of
		// its own; a bar that redraws on updates is enough here.
		progressbar.OptionSetSpinnerChangeInterval(0),
	)}
}

// plannedTotal returns the number of messages c publishes, or -1 when it
// publishes for a duration.
func plannedTotal(c *Config) int64 {
	if c.Messages == 0 {
		return -1
	}
	return int64(c.Messages)
}
