package persistence

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

// withLockWarnInterval sets the shortest time between two warnings about
// shared transactions stopped by the same tenant's lock.
func withLockWarnInterval(d time.Duration) Option {
	return func(s *settings) { s.lockWarnInterval = d }
}

func TestLockLogRateLimitsWarnings(t *testing.T) {
	t.Parallel()
	h := testenv.NewLogRecorder(slog.LevelDebug)
	l := newLockLog(slog.New(h), 10*time.Second)
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := start
	l.now = func() time.Time { return now }
	lockErr := errors.New("lock timeout")
	at := func(d time.Duration) { now = start.Add(d) }

	// The first failure of a run warns, the repeats within the interval
	// are debug records.
	l.failed("a", []string{"a", "b"}, lockErr)
	at(2 * time.Second)
	l.failed("a", []string{"a"}, lockErr)
	at(4 * time.Second)
	l.failed("a", []string{"a"}, lockErr)
	records := h.Take(lockFailureMsg)
	require.Equal(t, []string{"WARN", "DEBUG", "DEBUG"}, testenv.Levels(records))
	require.Equal(t, "a", records[0].Attrs["tenant_id"])
	require.Equal(t, int64(1), records[0].Attrs["failures"])

	// Runs are per tenant: another tenant's first failure warns too.
	at(5 * time.Second)
	l.failed("b", []string{"b"}, lockErr)
	require.Equal(t, []string{"WARN"}, testenv.Levels(h.Take(lockFailureMsg)))

	// Once the interval has passed, the next failure warns with the count
	// of the run so far.
	at(10 * time.Second)
	l.failed("a", []string{"a"}, lockErr)
	records = h.Take(lockFailureMsg)
	require.Equal(t, []string{"WARN"}, testenv.Levels(records))
	require.Equal(t, int64(4), records[0].Attrs["failures"])
	require.Equal(t, start, records[0].Attrs["since"])

	// A commit of the tenant ends the run and logs its end, once.
	at(12 * time.Second)
	l.committed("a")
	l.committed("a")
	records = h.Take(lockEndMsg)
	require.Len(t, records, 1)
	require.Equal(t, "INFO", records[0].Level.String())
	require.Equal(t, "a", records[0].Attrs["tenant_id"])
	require.Equal(t, int64(4), records[0].Attrs["failures"])
	require.Equal(t, 12*time.Second, records[0].Attrs["duration"])

	// A run of one failure ends without a record, and the next failure
	// starts a new run that warns at once.
	l.committed("b")
	require.Empty(t, h.Take(lockEndMsg))
	at(13 * time.Second)
	l.failed("a", []string{"a"}, lockErr)
	records = h.Take(lockFailureMsg)
	require.Equal(t, []string{"WARN"}, testenv.Levels(records))
	require.Equal(t, int64(1), records[0].Attrs["failures"])
}

func TestLockLogDropsStaleRuns(t *testing.T) {
	t.Parallel()
	l := newLockLog(slog.New(slog.DiscardHandler), 10*time.Second)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l.now = func() time.Time { return now }

	// A tenant that gets no more messages never commits to end its run.
	l.failed("gone", []string{"gone"}, errors.New("lock timeout"))
	now = now.Add(lockRunExpiry + time.Second)
	l.failed("other", []string{"other"}, errors.New("lock timeout"))
	require.NotContains(t, l.byTenant, "gone", "a run without failures for lockRunExpiry is dropped")
	require.Equal(t, int32(1), l.open.Load())
}

func TestGroupCommitLockWarningsRateLimited(t *testing.T) {
	t.Parallel()
	h := testenv.NewLogRecorder(slog.LevelDebug)
	// A pause of 1 ms sends every batch of the locked tenant to a shared
	// transaction again, as happens every lockedPause while a lock lasts.
	store, err := Open(testContext(t), testenv.NewDatabase(t), slog.New(h), WithGroupCommit(1), WithMaxConns(4),
		withLockedPause(time.Millisecond), withLockTimeout(50*time.Millisecond),
		withAloneLockTimeout(50*time.Millisecond), withLockWarnInterval(time.Minute))
	require.NoError(t, err)
	t.Cleanup(store.Close)
	require.NoError(t, store.Migrate(testContext(t)))
	locked := createTenant(t, store, "locked")
	release := holdPartitionLock(t, store, locked.ID)
	ctx := testContext(t)

	const failures = 5
	for i := range failures {
		time.Sleep(5 * time.Millisecond) // past the pause
		c := await(t, startInsert(ctx, store, locked.ID, messages(fmt.Sprintf("a%d", i), 2)))
		require.Equal(t, "55P03", sqlState(c.err), "lock_not_available: %v", c.err)
	}
	records := h.Take(lockFailureMsg)
	require.Len(t, records, failures, "every shared transaction stopped by the lock is logged")
	require.Equal(t, "WARN", records[0].Level.String(), "the first one warns")
	require.Equal(t, locked.ID, records[0].Attrs["tenant_id"])
	for i, r := range records[1:] {
		require.Equal(t, "DEBUG", r.Level.String(), "repeat %d within the interval", i+1)
	}

	release()
	c := await(t, startInsert(ctx, store, locked.ID, messages("after", 2)))
	require.NoError(t, c.err)
	records = h.Take(lockEndMsg)
	require.Len(t, records, 1, "the end of the lock is logged")
	require.Equal(t, "INFO", records[0].Level.String())
	require.Equal(t, locked.ID, records[0].Attrs["tenant_id"])
	require.Equal(t, int64(failures), records[0].Attrs["failures"])
}
