package lograte

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRunWarnsFirstThenOncePerInterval(t *testing.T) {
	t.Parallel()
	r := Run{Interval: 10 * time.Second, Expiry: time.Minute}
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var warned []int
	for _, at := range []time.Duration{0, time.Second, 9 * time.Second, 10 * time.Second, 12 * time.Second, 20 * time.Second} {
		count, started, warn := r.Add(start.Add(at))
		require.Equal(t, start, started)
		if warn {
			warned = append(warned, count)
		}
	}
	require.Equal(t, []int{1, 4, 6}, warned, "the counts of the repeats logged as warnings")
}

func TestRunEnd(t *testing.T) {
	t.Parallel()
	r := Run{Interval: 10 * time.Second, Expiry: time.Minute}
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	_, _, ok := r.End()
	require.False(t, ok, "no run before the first repeat")

	r.Add(start)
	r.Add(start.Add(time.Second))
	count, started, ok := r.End()
	require.True(t, ok)
	require.Equal(t, 2, count)
	require.Equal(t, start, started)
	_, _, ok = r.End()
	require.False(t, ok, "a run ends once")

	count, started, warn := r.Add(start.Add(2 * time.Second))
	require.Equal(t, 1, count, "a repeat after the end starts a new run")
	require.Equal(t, start.Add(2*time.Second), started)
	require.True(t, warn)
}

func TestRunExpires(t *testing.T) {
	t.Parallel()
	r := Run{Interval: 10 * time.Second, Expiry: time.Minute}
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r.Add(start)
	require.False(t, r.Stale(start.Add(time.Minute)))
	require.True(t, r.Stale(start.Add(time.Minute+time.Second)))

	count, _, warn := r.Add(start.Add(time.Minute + time.Second))
	require.Equal(t, 1, count, "a repeat after the expiry starts a new run")
	require.True(t, warn)
}
