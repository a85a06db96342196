package persistence

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// maxGroupRows bounds the rows of one shared transaction, so that a small
// batch waiting behind large ones still goes into the next transaction.
const maxGroupRows = 2000

// bulkBatchRows is the size from which a batch goes to the committer's
// bulk goroutines. A flooding tenant's batches fill up to BATCH_SIZE rows
// and take milliseconds to insert, and a small batch of a quiet tenant
// that waited for them, or shared a transaction with them, would take as
// long. The two sizes still share transactions with their own kind.
const bulkBatchRows = 100

// maxDeferred bounds the batches that one committer goroutine holds back
// for its next groups, because their tenants are already in the group it
// is collecting.
const maxDeferred = 256

// groupLockTimeout bounds how long a shared transaction waits for a lock,
// such as the row lock of a message id that another transaction is
// inserting, or a lock that an operator holds on one tenant's partition.
// Past it the transaction fails, and each batch is run again by its own
// caller. A batch on its own waits as long, and then InsertBatch fails with
// a retryable error: a tenant with more workers than the pool has
// connections would otherwise hold every connection while its partition
// is locked.
const groupLockTimeout = 200 * time.Millisecond

// setLockTimeoutSQL sets lock_timeout for the rest of the transaction.
const setLockTimeoutSQL = "SELECT set_config('lock_timeout', $1, true)"

// pgDuration formats d as a PostgreSQL setting in whole milliseconds, at
// least 1.
func pgDuration(d time.Duration) string {
	return fmt.Sprintf("%dms", max(d.Milliseconds(), 1))
}

// errRunAlone is the response to a request whose shared transaction
// failed: the caller runs its batch on its own.
var errRunAlone = errors.New("shared transaction failed")

// committer runs the batches of InsertBatch in shared transactions (see
// WithGroupCommit). Small and large batches wait in queues of their own,
// each with its own goroutines (see bulkBatchRows). Each goroutine takes
// the oldest batch waiting in its queue and the other batches already
// waiting there, at most one per tenant and up to maxGroupRows rows. It keeps the second batch of a tenant for its next
// transaction. It sends them as one pipeline of insert statements,
// which PostgreSQL runs as a single implicit transaction, so they cost one
// round trip and one commit.
//
// When the shared transaction fails, nothing of it was committed (or, if
// the connection broke during the commit, it is not known whether it was).
// Each caller then runs its batch on its own with insertAlone, in its own
// goroutine. That isolates a batch with a bad row, a deleted partition or
// a lock wait from the batches it shared the transaction with, and frees
// the committer at once. Message ids keep a batch that did commit from
// being stored twice.
type committer struct {
	p           *Postgres
	lockTimeout string              // lock_timeout of shared transactions
	requests    chan *insertRequest // batches of fewer than bulkBatchRows rows
	bulk        chan *insertRequest // the larger batches
	quit        chan struct{}
	wg          sync.WaitGroup

	mu     sync.RWMutex // held for reading while a request is queued
	closed bool

	lockedMu    sync.Mutex
	locked      map[string]time.Time // tenant to the end of its time out of shared transactions
	lockedPause time.Duration

	lockLog *lockLog
}

// insertRequest is one InsertBatch call waiting for a shared transaction.
type insertRequest struct {
	ctx      context.Context
	tenantID string
	b        *batch
	done     chan error // buffered for the one response, so sending it never blocks
}

func newCommitter(p *Postgres, n int, lockTimeout, lockedPause, lockWarnInterval time.Duration) *committer {
	g := &committer{
		p:           p,
		lockTimeout: pgDuration(lockTimeout),
		requests:    make(chan *insertRequest, 1024),
		bulk:        make(chan *insertRequest, 1024),
		quit:        make(chan struct{}),
		locked:      make(map[string]time.Time),
		lockedPause: lockedPause,
		lockLog:     newLockLog(p.logger, lockWarnInterval),
	}
	for range n {
		g.wg.Go(func() { g.loop(g.requests) })
		g.wg.Go(func() { g.loop(g.bulk) })
	}
	return g
}

// insert stores b in the next shared transaction, or on its own when that
// fails or the committer is closed, and returns when its outcome is known
// or ctx ends.
func (g *committer) insert(ctx context.Context, tenantID string, b *batch) error {
	if g.isLocked(tenantID) {
		return g.insertAlone(ctx, tenantID, b)
	}
	r := &insertRequest{ctx: ctx, tenantID: tenantID, b: b, done: make(chan error, 1)}
	if !g.enqueue(ctx, r) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return g.insertAlone(ctx, tenantID, b)
	}
	select {
	case err := <-r.done:
		if errors.Is(err, errRunAlone) {
			return g.insertAlone(ctx, tenantID, b)
		}
		return err
	case <-ctx.Done():
		// A committer that has taken r still writes its outcome into b,
		// which the caller no longer reads.
		return ctx.Err()
	}
}

// insertAlone stores b on its own and, when it commits, ends the tenant's
// run of lock failures.
func (g *committer) insertAlone(ctx context.Context, tenantID string, b *batch) error {
	err := g.p.insertAlone(ctx, tenantID, b)
	if err == nil {
		g.lockLog.committed(tenantID)
	}
	return err
}

// lockedPause is how long a tenant's batches are stored on their own after
// its statement hit the lock timeout of a shared transaction. A lock held
// on its partition then fails no further shared transactions of other
// tenants.
const lockedPause = 2 * time.Second

// isLocked reports whether tenantID's batches are kept out of shared
// transactions for now.
func (g *committer) isLocked(tenantID string) bool {
	g.lockedMu.Lock()
	defer g.lockedMu.Unlock()
	until, ok := g.locked[tenantID]
	if ok && time.Now().After(until) {
		delete(g.locked, tenantID)
		return false
	}
	return ok
}

func (g *committer) markLocked(tenantID string) {
	g.lockedMu.Lock()
	defer g.lockedMu.Unlock()
	g.locked[tenantID] = time.Now().Add(g.lockedPause)
}

// enqueue queues r and reports whether it did. It does not queue r once
// the committer is closed or ctx ends.
func (g *committer) enqueue(ctx context.Context, r *insertRequest) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return false
	}
	select {
	case g.queueOf(r) <- r:
		return true
	case <-ctx.Done():
		return false
	}
}

// queueOf returns the queue of r: bulk for a batch of bulkBatchRows rows
// or more.
func (g *committer) queueOf(r *insertRequest) chan *insertRequest {
	if len(r.b.ids) >= bulkBatchRows {
		return g.bulk
	}
	return g.requests
}

// close stops the committer's goroutines once they have run every queued
// request.
func (g *committer) close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	close(g.quit)
	g.mu.Unlock()
	g.wg.Wait()
}

// loop runs the shared transactions of the requests of one queue.
func (g *committer) loop(requests chan *insertRequest) {
	c := &collector{tenants: make(map[string]bool)}
	for {
		first := c.takeDeferred()
		if first == nil {
			select {
			case first = <-requests:
			case <-g.quit:
				// No request is queued after quit closes, so this runs the
				// last ones.
				for {
					select {
					case r := <-requests:
						g.run([]*insertRequest{r})
					default:
						return
					}
				}
			}
		}
		group := c.collect(first, requests)
		g.run(group)
		clear(group) // let the batches be collected
	}
}

// collector builds the groups of one committer goroutine.
//
// A second batch of a tenant waits for the next group: two statements of
// one tenant in one transaction could take their locks in another order
// than a concurrent transaction does. The batches of other tenants queued
// behind it still join the group, so a busy tenant's queued batches do not
// hold up the others.
type collector struct {
	group    []*insertRequest
	deferred []*insertRequest // taken while collecting, for the next groups, oldest first
	tenants  map[string]bool
}

// takeDeferred returns the oldest deferred request, or nil.
func (c *collector) takeDeferred() *insertRequest {
	if len(c.deferred) == 0 {
		return nil
	}
	first := c.deferred[0]
	c.deferred[0] = nil
	c.deferred = c.deferred[1:]
	return first
}

// collect returns the group that starts with first: the deferred requests
// of other tenants, then the requests waiting in requests, at most one per
// tenant and up to maxGroupRows rows. The group is valid until the next
// call.
func (c *collector) collect(first *insertRequest, requests <-chan *insertRequest) []*insertRequest {
	c.group = append(c.group[:0], first)
	clear(c.tenants)
	c.tenants[first.tenantID] = true
	rows := len(first.b.ids)

	waiting := c.deferred[:0]
	for _, r := range c.deferred {
		if rows < maxGroupRows && !c.tenants[r.tenantID] {
			c.tenants[r.tenantID] = true
			c.group = append(c.group, r)
			rows += len(r.b.ids)
		} else {
			waiting = append(waiting, r)
		}
	}
	clear(c.deferred[len(waiting):])
	c.deferred = waiting

	for rows < maxGroupRows && len(c.deferred) < maxDeferred {
		var r *insertRequest
		select {
		case r = <-requests:
		default:
			return c.group
		}
		if c.tenants[r.tenantID] {
			c.deferred = append(c.deferred, r)
			continue
		}
		c.tenants[r.tenantID] = true
		c.group = append(c.group, r)
		rows += len(r.b.ids)
	}
	return c.group
}

// run stores the batches of group in one transaction and responds to each
// request: nil, the caller's context error, or errRunAlone.
func (g *committer) run(group []*insertRequest) {
	live := group[:0:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}

	// The shared transaction ends as soon as any of its callers gives up,
	// and the others then run alone.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, r := range live {
		stop := context.AfterFunc(r.ctx, cancel)
		defer stop()
	}

	failed, err := g.insertGroup(ctx, live)
	if failed != "" && sqlState(err) == "55P03" { // lock_not_available
		g.markLocked(failed)
	}
	if err == nil {
		g.p.commit(len(live))
		// The end of a run of lock failures is logged before the callers
		// learn of the commit, so that it comes before what they log next.
		for _, r := range live {
			g.lockLog.committed(r.tenantID)
		}
		for _, r := range live {
			r.done <- nil
		}
		return
	}
	g.logFailure(live, failed, err)
	for _, r := range live {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		r.done <- errRunAlone
	}
}

// logFailure logs a failed shared transaction. A lock wait or a deadlock
// delays other tenants, so it is a warning, rate-limited by lockLog for
// each tenant whose statement failed. Row errors and lost connections are
// logged where each batch is run again.
func (g *committer) logFailure(group []*insertRequest, failed string, err error) {
	tenants := make([]string, len(group))
	for i, r := range group {
		tenants[i] = r.tenantID
	}
	switch sqlState(err) {
	case "55P03", "40P01": // lock_not_available, deadlock_detected
		g.lockLog.failed(failed, tenants, err)
	default:
		g.p.logger.Debug("persistence: shared insert transaction failed, so its batches are stored one by one",
			"err", err, "tenants", tenants)
	}
}

// insertGroup runs insertPipeline and turns a panic in it into an error,
// so that a committer goroutine never takes the process down.
func (g *committer) insertGroup(ctx context.Context, group []*insertRequest) (failed string, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("shared insert transaction panicked: %v", v)
		}
	}()
	return g.p.insertPipeline(ctx, group, g.lockTimeout)
}

// insertPipeline sends a statement that sets lock_timeout for the
// transaction, then one insert statement per request, in a pipeline that
// ends with a single sync. PostgreSQL runs them in one implicit
// transaction that commits only if every statement succeeds. The requests
// are of different tenants and run in tenant order, and each statement
// inserts in message id order, so concurrent shared transactions take
// their unique-index locks in the same order. On failure it also returns
// the tenant whose statement failed, if it was one of them.
func (p *Postgres) insertPipeline(ctx context.Context, group []*insertRequest, lockTimeout string) (failed string, err error) {
	slices.SortStableFunc(group, func(a, b *insertRequest) int {
		return strings.Compare(a.tenantID, b.tenantID)
	})
	var pipeline pgx.Batch
	pipeline.Queue(setLockTimeoutSQL, lockTimeout)
	for _, r := range group {
		b := r.b
		pipeline.Queue(insertSQL, r.tenantID, b.ids, b.payloads, b.published)
	}
	results := p.pool.SendBatch(ctx, &pipeline)
	if _, err := results.Exec(); err != nil {
		_ = results.Close()
		return "", err
	}
	for _, r := range group {
		rows, err := results.Query()
		if err == nil {
			err = r.b.readOutcomes(rows, 0, len(r.b.ids))
		}
		if err != nil {
			_ = results.Close()
			return r.tenantID, err
		}
	}
	return "", results.Close()
}
