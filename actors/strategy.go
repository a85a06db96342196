package actors

import (
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// restartStrategy restarts a failed child after an exponential backoff with
// jitter. The delay doubles with each failure inside the window and is
// capped, so a crash-looping worker costs little and is never given up on:
// the tenant must keep worker_count workers running. A child that stays
// healthy for a whole window starts again from the shortest delay.
type restartStrategy struct {
	min, max  time.Duration
	window    time.Duration
	onRestart func(child *actor.PID, reason any, delay time.Duration)
}

var _ actor.SupervisorStrategy = (*restartStrategy)(nil)

// HandleFailure schedules the restart of child. The child's mailbox stays
// suspended until then, so no delivery is handled by a half-failed worker.
func (s *restartStrategy) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID,
	rs *actor.RestartStatistics, reason any, _ any) {
	if rs.NumberOfFailures(s.window) == 0 {
		rs.Reset()
	}
	rs.Fail()
	delay := backoff(s.min, s.max, rs.FailureCount())
	if s.onRestart != nil {
		s.onRestart(child, reason, delay)
	}
	time.AfterFunc(delay, func() { sup.RestartChildren(child) })
}

// backoff returns the delay before attempt n (1-based): shortest doubled
// n-1 times, capped at longest, with up to 25% jitter either way.
func backoff(shortest, longest time.Duration, n int) time.Duration {
	d := shortest
	for i := 1; i < n && d < longest; i++ {
		d *= 2
	}
	return jitter(min(d, longest))
}

// jitter spreads d by up to 25% either way, so many workers that failed
// together do not retry together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	spread := int64(d) / 2
	return d - time.Duration(spread/2) + time.Duration(rand.Int64N(spread+1))
}

// newRestartStrategy returns the strategy tenant actors use for workers.
func newRestartStrategy(o Options, logger *slog.Logger, counted func()) *restartStrategy {
	return &restartStrategy{
		min:    o.RestartMin,
		max:    o.RestartMax,
		window: time.Minute,
		onRestart: func(child *actor.PID, reason any, delay time.Duration) {
			counted()
			logger.Error("worker failed; restarting it", "worker", child.Id, "err", reason, "wait", delay)
		},
	}
}

// NewRestartStrategy returns a supervisor strategy that restarts every
// failed child after a jittered exponential backoff from shortest to
// longest, calling onRestart (which may be nil) first. The supervisor uses
// it for tenant actors.
func NewRestartStrategy(shortest, longest time.Duration,
	onRestart func(child *actor.PID, reason any, delay time.Duration)) actor.SupervisorStrategy {
	return &restartStrategy{min: shortest, max: longest, window: time.Minute, onRestart: onRestart}
}
