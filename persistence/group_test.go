package persistence

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

// insertCall is the outcome of an InsertBatch run in the background.
type insertCall struct {
	results []Result
	err     error
}

// startInsert runs InsertBatch in a goroutine and returns the channel
// that receives its outcome.
func startInsert(ctx context.Context, store *Postgres, tenantID string, msgs []Message) <-chan insertCall {
	done := make(chan insertCall, 1)
	go func() {
		results, err := store.InsertBatch(ctx, tenantID, msgs)
		done <- insertCall{results, err}
	}()
	return done
}

// await returns the outcome of a started insert, failing the test after
// 15 seconds.
func await(t *testing.T, done <-chan insertCall) insertCall {
	t.Helper()
	select {
	case c := <-done:
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("InsertBatch did not return within 15s")
		return insertCall{}
	}
}

// withLockTimeout sets the lock_timeout of shared transactions.
func withLockTimeout(d time.Duration) Option {
	return func(s *settings) { s.lockTimeout = d }
}

// withLockedPause sets how long a tenant whose batch hit the lock timeout
// of a shared transaction stays out of them.
func withLockedPause(d time.Duration) Option {
	return func(s *settings) { s.lockedPause = d }
}

// withAloneLockTimeout sets the lock_timeout of batches stored on their own.
func withAloneLockTimeout(d time.Duration) Option {
	return func(s *settings) { s.aloneLockTimeout = d }
}

// holdCommitter makes the only committer of a store opened with
// WithGroupCommit(1) and a long lock timeout wait: it starts an insert into a new tenant that
// waits for another transaction's lock. The returned function lets it go
// on and returns that insert's outcome.
func holdCommitter(t *testing.T, store *Postgres) (release func() insertCall) {
	t.Helper()
	holder := createTenant(t, store, "holder")
	unblock := blockInsert(t, store, holder.ID)
	done := startInsert(testContext(t), store, holder.ID, []Message{{MessageID: "blocker", Payload: []byte(`{}`)}})
	waitingInsertPID(t, store)
	return func() insertCall {
		unblock()
		return await(t, done)
	}
}

// waitQueued waits until n requests wait for a shared transaction.
func waitQueued(t *testing.T, store *Postgres, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d queued batches", n), func() bool {
		return len(store.group.requests) == n
	})
}

func TestGroupCommitSharesOneTransaction(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		observed []int
	)
	store := setup(t, WithGroupCommit(1), WithMaxConns(4), withLockTimeout(time.Minute), WithTransactionObserver(func(batches int) {
		mu.Lock()
		defer mu.Unlock()
		observed = append(observed, batches)
	}))
	ctx := testContext(t)
	release := holdCommitter(t, store)

	tenants := make([]Tenant, 4)
	calls := make([]<-chan insertCall, len(tenants))
	for i := range tenants {
		tenants[i] = createTenant(t, store, fmt.Sprintf("shared%d", i))
		calls[i] = startInsert(ctx, store, tenants[i].ID, messages("m", 5+i))
	}
	waitQueued(t, store, len(tenants))
	require.NoError(t, release().err)

	var txID uint64
	for i, tenant := range tenants {
		c := await(t, calls[i])
		require.NoError(t, c.err, "tenant %d", i)
		require.Equal(t, repeat(Inserted, 5+i), outcomes(c.results), "tenant %d", i)
		stored := listVisible(t, store, tenant.ID, 100, 5+i)
		for _, m := range stored {
			if txID == 0 {
				txID = m.Position.TxID
			}
			require.Equal(t, txID, m.Position.TxID, "tenant %d was stored in a transaction of its own", i)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []int{1, len(tenants)}, observed, "batches per transaction: the holder's, then the shared one")
}

func TestTransactionObserverWithoutGroupCommit(t *testing.T) {
	t.Parallel()
	var observed atomic.Int64
	store := setup(t, WithTransactionObserver(func(batches int) { observed.Add(int64(batches)) }))
	tenant := createTenant(t, store, "observed")
	for i := range 3 {
		_, err := store.InsertBatch(testContext(t), tenant.ID, messages(fmt.Sprintf("b%d", i), 2))
		require.NoError(t, err)
	}
	require.EqualValues(t, 3, observed.Load(), "one transaction of one batch per InsertBatch")
}

func TestGroupCommitIsolatesFailingBatches(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(4), withLockTimeout(time.Minute))
	ctx := testContext(t)
	good := createTenant(t, store, "good")
	bad := createTenant(t, store, "bad")
	deleted := createTenant(t, store, "deleted")
	require.NoError(t, store.DeleteTenant(ctx, deleted.ID))
	other := createTenant(t, store, "other")
	release := holdCommitter(t, store)

	badMsgs := messages("row", 5)
	badMsgs[2].Payload = nulPayload
	goodCall := startInsert(ctx, store, good.ID, messages("m", 4))
	badCall := startInsert(ctx, store, bad.ID, badMsgs)
	deletedCall := startInsert(ctx, store, deleted.ID, messages("m", 3))
	otherCall := startInsert(ctx, store, other.ID, messages("m", 6))
	waitQueued(t, store, 4)
	require.NoError(t, release().err)

	c := await(t, goodCall)
	require.NoError(t, c.err)
	require.Equal(t, repeat(Inserted, 4), outcomes(c.results))

	c = await(t, badCall)
	require.NoError(t, c.err)
	require.Equal(t, []Outcome{Inserted, Inserted, Rejected, Inserted, Inserted}, outcomes(c.results))

	c = await(t, deletedCall)
	require.ErrorIs(t, c.err, ErrTenantNotFound)
	require.Nil(t, c.results)

	c = await(t, otherCall)
	require.NoError(t, c.err)
	require.Equal(t, repeat(Inserted, 6), outcomes(c.results))

	for tenantID, want := range map[string]int64{good.ID: 4, bad.ID: 4, other.ID: 6} {
		n, err := store.CountMessages(ctx, tenantID)
		require.NoError(t, err)
		require.Equal(t, want, n, "tenant %s", tenantID)
	}
}

func TestGroupCommitCancelledWhileQueued(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(4), withLockTimeout(time.Minute))
	release := holdCommitter(t, store)

	cancelled := createTenant(t, store, "cancelled")
	live := createTenant(t, store, "live")
	ctx, cancel := context.WithCancel(testContext(t))
	cancelledCall := startInsert(ctx, store, cancelled.ID, messages("m", 3))
	liveCall := startInsert(testContext(t), store, live.ID, messages("m", 3))
	waitQueued(t, store, 2)

	cancel()
	c := await(t, cancelledCall) // returns while the committer still waits
	require.ErrorIs(t, c.err, context.Canceled)
	require.False(t, IsRetryable(c.err))

	require.NoError(t, release().err)
	c = await(t, liveCall)
	require.NoError(t, c.err)
	require.Equal(t, repeat(Inserted, 3), outcomes(c.results))
	n, err := store.CountMessages(testContext(t), cancelled.ID)
	require.NoError(t, err)
	require.Zero(t, n, "the cancelled batch was stored")
}

func TestGroupCommitCloseRunsQueuedBatches(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(4), withLockTimeout(time.Minute))
	release := holdCommitter(t, store)
	tenant := createTenant(t, store, "queued")
	ctx := testContext(t)
	call := startInsert(ctx, store, tenant.ID, messages("m", 3))
	waitQueued(t, store, 1)

	closed := make(chan struct{})
	go func() {
		store.group.close()
		close(closed)
	}()
	require.NoError(t, release().err)
	c := await(t, call)
	require.NoError(t, c.err)
	require.Equal(t, repeat(Inserted, 3), outcomes(c.results))
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return after the queued batch was stored")
	}

	// After close, batches run on their own.
	results, err := store.InsertBatch(ctx, tenant.ID, messages("late", 2))
	require.NoError(t, err)
	require.Equal(t, repeat(Inserted, 2), outcomes(results))
}

func TestGroupCommitLockWaitHoldsOnlyItsTenant(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(6), withLockTimeout(time.Second), withAloneLockTimeout(time.Minute))
	ctx := testContext(t)
	holder := createTenant(t, store, "holder")
	blocked := createTenant(t, store, "blocked")
	free := createTenant(t, store, "free")
	releaseHolder := blockInsert(t, store, holder.ID)
	releaseBlocked := blockInsert(t, store, blocked.ID)

	// The holder keeps the committer busy for up to a second, so that the
	// next two batches are likely to share a transaction.
	holderCall := startInsert(ctx, store, holder.ID, []Message{{MessageID: "blocker", Payload: []byte(`{}`)}})
	waitingInsertPID(t, store)
	blockedCall := startInsert(ctx, store, blocked.ID, []Message{
		{MessageID: "blocker", Payload: []byte(`1`)}, {MessageID: "other", Payload: []byte(`2`)}})
	freeCall := startInsert(ctx, store, free.ID, messages("m", 3))

	c := await(t, freeCall) // while both locks are still held
	require.NoError(t, c.err)
	require.Equal(t, repeat(Inserted, 3), outcomes(c.results))
	select {
	case c := <-blockedCall:
		t.Fatalf("the blocked batch returned while its lock was held: %v", c.err)
	default:
	}

	releaseBlocked()
	releaseHolder()
	c = await(t, blockedCall)
	require.NoError(t, c.err)
	require.Equal(t, []Outcome{Inserted, Inserted}, outcomes(c.results))
	require.NoError(t, await(t, holderCall).err)
}

func TestGroupCommitSmallBatchesSkipLargeOnes(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(6), withLockTimeout(time.Minute))
	ctx := testContext(t)
	flood := createTenant(t, store, "flood")
	quiet := createTenant(t, store, "quiet")
	releaseFlood := blockInsert(t, store, flood.ID)

	// A full batch that waits for a lock keeps the only goroutine for large
	// batches busy, as a flooding tenant's slow insert would.
	large := append(messages("l", bulkBatchRows-1), Message{MessageID: "blocker", Payload: []byte(`{}`)})
	largeCall := startInsert(ctx, store, flood.ID, large)
	waitingInsertPID(t, store)

	c := await(t, startInsert(ctx, store, quiet.ID, messages("q", 2)))
	require.NoError(t, c.err, "a small batch does not wait for the large one")
	require.Equal(t, repeat(Inserted, 2), outcomes(c.results))
	select {
	case c := <-largeCall:
		t.Fatalf("the large batch returned while its lock was held: %v", c.err)
	default:
	}

	releaseFlood()
	c = await(t, largeCall)
	require.NoError(t, c.err)
	require.Equal(t, repeat(Inserted, bulkBatchRows), outcomes(c.results), "the blocking transaction rolled back")
}

func TestGroupCommitLargeBatchesSkipSmallOnes(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(6), withLockTimeout(time.Minute))
	ctx := testContext(t)
	release := holdCommitter(t, store) // holds the goroutine of small batches
	bulk := createTenant(t, store, "bulk")

	c := await(t, startInsert(ctx, store, bulk.ID, messages("b", bulkBatchRows)))
	require.NoError(t, c.err, "a large batch does not wait for the small one")
	require.Equal(t, repeat(Inserted, bulkBatchRows), outcomes(c.results))
	require.NoError(t, release().err)
}

func TestGroupCommitOneBatchPerTenant(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(1), WithMaxConns(4), withLockTimeout(time.Minute))
	ctx := testContext(t)
	tenant := createTenant(t, store, "twice")
	release := holdCommitter(t, store)

	first := startInsert(ctx, store, tenant.ID, messages("a", 2))
	waitQueued(t, store, 1)
	second := startInsert(ctx, store, tenant.ID, messages("b", 2))
	waitQueued(t, store, 2)
	require.NoError(t, release().err)
	require.NoError(t, await(t, first).err)
	require.NoError(t, await(t, second).err)

	txOf := make(map[string]uint64)
	for _, m := range listVisible(t, store, tenant.ID, 10, 4) {
		txOf[m.MessageID] = m.Position.TxID
	}
	require.Equal(t, txOf["a-0"], txOf["a-1"])
	require.Equal(t, txOf["b-0"], txOf["b-1"])
	require.NotEqual(t, txOf["a-0"], txOf["b-0"], "two batches of one tenant shared a transaction")
}

// TestGroupCommitConcurrentOverlappingBatches sends every message id of
// every tenant several times from several goroutines at once: each must be
// reported Inserted exactly once and stored once.
func TestGroupCommitConcurrentOverlappingBatches(t *testing.T) {
	t.Parallel()
	store := setup(t, WithGroupCommit(2), WithMaxConns(4))
	ctx := testContext(t)

	const tenantCount, senders, ids, batch = 6, 4, 300, 25
	tenants := make([]Tenant, tenantCount)
	for i := range tenants {
		tenants[i] = createTenant(t, store, fmt.Sprintf("overlap%d", i))
	}
	var (
		mu       sync.Mutex
		inserted = make(map[string]int)
		wg       sync.WaitGroup
		errs     = make(chan error, tenantCount*senders)
	)
	for _, tenant := range tenants {
		all := messages("m", ids)
		for s := range senders {
			wg.Go(func() {
				// Each sender walks the ids from a different start, so
				// batches of different senders overlap.
				for start := 0; start < ids; start += batch {
					lo := (start + s*batch*3) % ids
					msgs := all[lo:min(lo+batch, ids)]
					results, err := insertWithRetry(ctx, store, tenant.ID, msgs)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					for i, r := range results {
						if r.Outcome == Inserted {
							inserted[tenant.ID+"/"+msgs[i].MessageID]++
						}
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	for _, tenant := range tenants {
		n, err := store.CountMessages(ctx, tenant.ID)
		require.NoError(t, err)
		require.EqualValues(t, ids, n, "tenant %s", tenant.ID)
	}
	require.Len(t, inserted, tenantCount*ids)
	for key, n := range inserted {
		if n != 1 {
			t.Fatalf("%s was reported inserted %d times", key, n)
		}
	}
}

func TestCollectorSkipsPastDeferredBatches(t *testing.T) {
	t.Parallel()
	a1, a2, a3 := collectRequest("a", 1), collectRequest("a", 1), collectRequest("a", 1)
	b1, b2, c1 := collectRequest("b", 1), collectRequest("b", 1), collectRequest("c", 1)
	requests := queued(a2, b1, a3, c1, b2)
	c := &collector{tenants: make(map[string]bool)}

	require.Equal(t, []*insertRequest{a1, b1, c1}, c.collect(a1, requests),
		"the batches of b and c join past the second batch of a")
	first := c.takeDeferred()
	require.Same(t, a2, first, "deferred batches come back oldest first")
	require.Equal(t, []*insertRequest{a2, b2}, c.collect(first, requests),
		"a deferred batch of another tenant joins the next group")
	require.Same(t, a3, c.takeDeferred())
	require.Nil(t, c.takeDeferred())
	require.Empty(t, requests)
}

func TestCollectorBounds(t *testing.T) {
	t.Parallel()
	t.Run("rows", func(t *testing.T) {
		t.Parallel()
		big, small := collectRequest("a", maxGroupRows), collectRequest("b", 1)
		requests := queued(small)
		c := &collector{tenants: make(map[string]bool)}
		require.Equal(t, []*insertRequest{big}, c.collect(big, requests))
		require.Len(t, requests, 1, "a full group takes nothing more")
	})
	t.Run("deferred", func(t *testing.T) {
		t.Parallel()
		requests := make(chan *insertRequest, maxDeferred+5)
		for range maxDeferred + 5 {
			requests <- collectRequest("a", 1)
		}
		c := &collector{tenants: make(map[string]bool)}
		require.Len(t, c.collect(collectRequest("a", 1), requests), 1)
		require.Len(t, c.deferred, maxDeferred)
		require.Len(t, requests, 5, "collecting stops once maxDeferred batches wait")
	})
}

func collectRequest(tenantID string, rows int) *insertRequest {
	return &insertRequest{tenantID: tenantID, b: &batch{ids: make([]string, rows)}}
}

// queued returns a channel that holds rs.
func queued(rs ...*insertRequest) chan *insertRequest {
	requests := make(chan *insertRequest, len(rs))
	for _, r := range rs {
		requests <- r
	}
	return requests
}

func TestLockedPartitionLeavesThePoolFree(t *testing.T) {
	t.Parallel()
	for _, group := range []int{0, 2} {
		t.Run(fmt.Sprintf("group_commit=%d", group), func(t *testing.T) {
			t.Parallel()
			store := setup(t, WithMaxConns(2), WithGroupCommit(group))
			locked := createTenant(t, store, "locked")
			free := createTenant(t, store, "free")
			release := holdPartitionLock(t, store, locked.ID)
			ctx := testContext(t)

			// Three times as many callers as the pool has connections wait
			// for the locked partition, as the workers of a busy tenant do.
			calls := make([]<-chan insertCall, 6)
			for i := range calls {
				calls[i] = startInsert(ctx, store, locked.ID, messages(fmt.Sprintf("l%d", i), 2))
			}
			c := await(t, startInsert(ctx, store, free.ID, messages("f", 3)))
			require.NoError(t, c.err, "another tenant stores while the partition is locked")
			require.Equal(t, repeat(Inserted, 3), outcomes(c.results))
			for _, call := range calls {
				c := await(t, call)
				require.Error(t, c.err, "the locked tenant's insert gives up")
				require.Equal(t, "55P03", sqlState(c.err), "lock_not_available: %v", c.err)
				require.True(t, IsRetryable(c.err))
			}

			release()
			c = await(t, startInsert(ctx, store, locked.ID, messages("l0", 2)))
			require.NoError(t, c.err)
			require.Equal(t, repeat(Inserted, 2), outcomes(c.results), "the retry stores the batch")
		})
	}
}

// holdPartitionLock holds an ACCESS EXCLUSIVE lock on the tenant's partition
// from another connection until release is called or the test ends.
func holdPartitionLock(t *testing.T, store *Postgres, tenantID string) (release func()) {
	t.Helper()
	return holdInTransaction(t, store, "LOCK TABLE "+pgx.Identifier{partitionName(tenantID)}.Sanitize()+" IN ACCESS EXCLUSIVE MODE")
}

func TestGroupCommitLockedTenantRunsAlone(t *testing.T) {
	t.Parallel()
	var warnings atomic.Int64
	logger := slog.New(countingHandler{level: slog.LevelWarn, count: &warnings})
	store, err := Open(testContext(t), testenv.NewDatabase(t), logger, WithGroupCommit(1), WithMaxConns(4),
		withLockedPause(time.Minute))
	require.NoError(t, err)
	t.Cleanup(store.Close)
	require.NoError(t, store.Migrate(testContext(t)))
	locked := createTenant(t, store, "locked")
	free := createTenant(t, store, "free")
	holdPartitionLock(t, store, locked.ID)
	ctx := testContext(t)

	c := await(t, startInsert(ctx, store, locked.ID, messages("a", 2)))
	require.Equal(t, "55P03", sqlState(c.err), "lock_not_available: %v", c.err)
	require.Equal(t, int64(1), warnings.Load(), "the shared transaction failed on the lock once")

	// For the pause the tenant's batches skip shared transactions, so the
	// lock fails no further one, and the other tenant stores at once.
	for i := range 3 {
		lockedCall := startInsert(ctx, store, locked.ID, messages(fmt.Sprintf("b%d", i), 2))
		c := await(t, startInsert(ctx, store, free.ID, messages(fmt.Sprintf("f%d", i), 2)))
		require.NoError(t, c.err)
		c = await(t, lockedCall)
		require.Equal(t, "55P03", sqlState(c.err), "lock_not_available: %v", c.err)
	}
	require.Equal(t, int64(1), warnings.Load(), "no later shared transaction waited for the lock")
}

// countingHandler counts the log records at or above level.
type countingHandler struct {
	level slog.Level
	count *atomic.Int64
}

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h countingHandler) Handle(context.Context, slog.Record) error {
	h.count.Add(1)
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

func TestLockedPauseEnds(t *testing.T) {
	t.Parallel()
	g := &committer{locked: make(map[string]time.Time), lockedPause: 20 * time.Millisecond}
	require.False(t, g.isLocked("a"))
	g.markLocked("a")
	require.True(t, g.isLocked("a"))
	require.False(t, g.isLocked("b"), "the pause is per tenant")
	time.Sleep(40 * time.Millisecond)
	require.False(t, g.isLocked("a"), "shared transactions take the tenant again after the pause")
	require.Empty(t, g.locked, "an ended pause is forgotten")
}
