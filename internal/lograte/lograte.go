// Package lograte rate-limits the log lines of a fault that repeats, such
// as inserts that fail while a partition stays locked, so that the log
// shows the fault, its count and its end without a line per repeat.
package lograte

import "time"

// Run counts the repeats of one fault from the first one on. It decides
// which repeats to log as warnings: the first, then at most one per
// Interval. A Run is not safe for concurrent use.
type Run struct {
	// Interval is the shortest time between two warnings.
	Interval time.Duration
	// Expiry is how long after its last repeat a run that was not ended is
	// forgotten, so that the next repeat starts a new run.
	Expiry time.Duration

	open        bool
	started     time.Time
	last        time.Time
	lastWarning time.Time
	count       int
}

// Add records a repeat at now. It returns the count of the run so far,
// this repeat included, when the run started, and whether to log this
// repeat as a warning.
func (r *Run) Add(now time.Time) (count int, started time.Time, warn bool) {
	if !r.open || r.Stale(now) {
		*r = Run{Interval: r.Interval, Expiry: r.Expiry, open: true, started: now}
	}
	r.count++
	r.last = now
	warn = r.count == 1 || now.Sub(r.lastWarning) >= r.Interval
	if warn {
		r.lastWarning = now
	}
	return r.count, r.started, warn
}

// End ends the run and returns its count and start. ok is false when no
// run was open.
//
// NOTE: a repeat that was under way when the fault ended, such as an
// insert whose lock timeout fires as the lock is released, can come after
// End. It starts a new run, which logs one more warning.
func (r *Run) End() (count int, started time.Time, ok bool) {
	if !r.open {
		return 0, time.Time{}, false
	}
	r.open = false
	return r.count, r.started, true
}

// Stale reports whether the run's last repeat is more than Expiry before
// now.
func (r *Run) Stale(now time.Time) bool {
	return now.Sub(r.last) > r.Expiry
}
