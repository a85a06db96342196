package persistence

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// maxGroupRows bounds the rows of one shared transaction, so that a small
// batch waiting behind large ones still goes into the next transaction.
const maxGroupRows = 2000

// committer runs the batches of InsertBatch in shared transactions (see
// WithGroupCommit). Each of its goroutines takes the oldest waiting batch
// and every other batch already waiting, up to maxGroupRows rows. It sends
// them as one pipeline of insert statements, which PostgreSQL runs as a
// single implicit transaction, so they cost one round trip and one commit.
//
// When the shared transaction fails, nothing of it was committed (or, if
// the connection broke during the commit, it is not known whether it was),
// and each batch is run again on its own with insertAlone. That isolates
// a batch with a bad row or a deleted partition from the batches it
// shared the transaction with, and message ids keep a batch that did
// commit from being stored twice.
type committer struct {
	p        *Postgres
	observe  func(batches int) // called after each commit; never nil
	requests chan *insertRequest
	quit     chan struct{}
	wg       sync.WaitGroup

	mu     sync.RWMutex // held for reading while a request is queued
	closed bool
}

// insertRequest is one InsertBatch call waiting for a shared transaction.
type insertRequest struct {
	ctx      context.Context
	tenantID string
	b        *batch
	done     chan error // buffered, so a committer never blocks on it
}

func newCommitter(p *Postgres, n int, observe func(batches int)) *committer {
	if observe == nil {
		observe = func(int) {}
	}
	g := &committer{
		p:        p,
		observe:  observe,
		requests: make(chan *insertRequest, 1024),
		quit:     make(chan struct{}),
	}
	for range n {
		g.wg.Go(g.loop)
	}
	return g
}

// insert stores b in the next shared transaction and returns when its
// outcome is known or ctx ends. After close it stores b on its own.
func (g *committer) insert(ctx context.Context, tenantID string, b *batch) error {
	r := &insertRequest{ctx: ctx, tenantID: tenantID, b: b, done: make(chan error, 1)}
	if !g.enqueue(ctx, r) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return g.p.insertAlone(ctx, tenantID, b)
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		// A committer that has taken r still writes its outcome into b,
		// which the caller no longer reads.
		return ctx.Err()
	}
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
	case g.requests <- r:
		return true
	case <-ctx.Done():
		return false
	}
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

func (g *committer) loop() {
	var group []*insertRequest
	for {
		var first *insertRequest
		select {
		case first = <-g.requests:
		case <-g.quit:
			// No request is queued after quit closes, so this runs the
			// last ones.
			for {
				select {
				case r := <-g.requests:
					g.run([]*insertRequest{r})
				default:
					return
				}
			}
		}
		group = append(group[:0], first)
		rows := len(first.b.ids)
	collect:
		for rows < maxGroupRows {
			select {
			case r := <-g.requests:
				group = append(group, r)
				rows += len(r.b.ids)
			default:
				break collect
			}
		}
		g.run(group)
		clear(group) // let the batches be collected
	}
}

// run stores the batches of group and responds to each request.
func (g *committer) run(group []*insertRequest) {
	live := group[:0:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		live = append(live, r)
	}
	switch len(live) {
	case 0:
		return
	case 1:
		g.runAlone(live[0])
		return
	}

	// The shared transaction ends as soon as any of its callers gives up,
	// and the others then run alone below.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, r := range live {
		stop := context.AfterFunc(r.ctx, cancel)
		defer stop()
	}

	if err := g.p.insertGroup(ctx, live); err == nil {
		g.observe(len(live))
		for _, r := range live {
			r.done <- nil
		}
		return
	}
	for _, r := range live {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		g.runAlone(r)
	}
}

// runAlone stores the batch of r in a transaction of its own.
func (g *committer) runAlone(r *insertRequest) {
	err := g.p.insertAlone(r.ctx, r.tenantID, r.b)
	if err == nil {
		g.observe(1)
	}
	r.done <- err
}

// insertGroup sends one insert statement per request in a pipeline that
// ends with a single sync, so PostgreSQL runs them in one implicit
// transaction that commits only if every statement succeeds. The
// statements run in tenant order, so that two shared transactions take
// the unique-index locks of the same tenants in the same order.
func (p *Postgres) insertGroup(ctx context.Context, group []*insertRequest) error {
	slices.SortStableFunc(group, func(a, b *insertRequest) int {
		return strings.Compare(a.tenantID, b.tenantID)
	})
	var pipeline pgx.Batch
	for _, r := range group {
		b := r.b
		pipeline.Queue(insertSQL, r.tenantID, b.ids, b.payloads, b.published)
	}
	results := p.pool.SendBatch(ctx, &pipeline)
	for _, r := range group {
		rows, err := results.Query()
		if err == nil {
			err = r.b.readOutcomes(rows, 0, len(r.b.ids))
		}
		if err != nil {
			_ = results.Close()
			return err
		}
	}
	return results.Close()
}
