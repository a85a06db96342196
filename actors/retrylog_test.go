package actors

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

func TestRetryLogCountsTenantRetriesAsOneRun(t *testing.T) {
	t.Parallel()
	h := testenv.NewLogRecorder(slog.LevelDebug)
	workers := []*slog.Logger{slog.New(h).With("worker", 1), slog.New(h).With("worker", 2)}
	r := newRetryLog()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := start
	r.now = func() time.Time { return now }
	at := func(d time.Duration) { now = start.Add(d) }
	lockErr := errors.New("lock timeout")

	// The first retry of the run warns. The other workers' first retries
	// and the repeats within the interval are debug records.
	r.retry(workers[0], lockErr, 10, 1, time.Millisecond)
	at(time.Second)
	r.retry(workers[1], lockErr, 10, 1, time.Millisecond)
	at(3 * time.Second)
	r.retry(workers[0], lockErr, 10, 2, time.Millisecond)
	records := h.Take(retryMsg)
	require.Equal(t, []string{"WARN", "DEBUG", "DEBUG"}, testenv.Levels(records))
	require.Equal(t, int64(1), records[0].Attrs["worker"])
	require.Equal(t, int64(1), records[0].Attrs["tenant_retries"])

	// Once the interval has passed, the next retry warns with the count of
	// the run so far.
	at(10 * time.Second)
	r.retry(workers[1], lockErr, 10, 2, time.Millisecond)
	records = h.Take(retryMsg)
	require.Equal(t, []string{"WARN"}, testenv.Levels(records))
	require.Equal(t, int64(4), records[0].Attrs["tenant_retries"])
	require.Equal(t, int64(2), records[0].Attrs["retries"], "the worker's own count")
	require.Equal(t, start, records[0].Attrs["since"])

	// The first commit ends the run at info level, the other workers'
	// commits are debug records.
	at(11 * time.Second)
	r.succeeded(workers[0], 2)
	r.succeeded(workers[1], 2)
	records = h.Take(recoveredMsg)
	require.Equal(t, []string{"INFO", "DEBUG"}, testenv.Levels(records))
	require.Equal(t, int64(4), records[0].Attrs["tenant_retries"])
	require.Equal(t, 11*time.Second, records[0].Attrs["duration"])

	// A retry after the end starts a new run, which warns at once.
	at(12 * time.Second)
	r.retry(workers[1], lockErr, 10, 1, time.Millisecond)
	records = h.Take(retryMsg)
	require.Equal(t, []string{"WARN"}, testenv.Levels(records))
	require.Equal(t, int64(1), records[0].Attrs["tenant_retries"])
}
