package persistence

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// insertSQL stores a batch in one statement. Each parameter array holds one
// element per row, so the statement text is the same for every batch size
// and pgx prepares it once per connection.
//
// The subquery draws ids from the sequence in input order, so a batch is
// listed in the order it was given. The rows are then inserted sorted by
// message_id in byte order: every batch takes its unique-index locks in
// the same order, so batches that share message ids wait for each other
// instead of deadlocking.
const insertSQL = `
INSERT INTO messages (tenant_id, id, message_id, payload, published_at)
SELECT $1, s.id, s.message_id, s.payload, s.published_at
FROM (
    SELECT nextval('messages_id_seq') AS id, m.message_id, m.payload, m.published_at
    FROM unnest($2::text[], $3::jsonb[], $4::timestamptz[]) AS m(message_id, payload, published_at)
) AS s
ORDER BY s.message_id COLLATE "C"
ON CONFLICT (tenant_id, message_id) DO NOTHING
RETURNING message_id`

// Bounds of PostgreSQL's timestamptz, 4713 BC to 294276 AD, kept a day
// inside so that time zones cannot push a value over. pgx does not check
// them, and a value beyond them overflows its microsecond encoding.
var (
	minTimestamp = time.Date(-4712, time.January, 2, 0, 0, 0, 0, time.UTC)
	maxTimestamp = time.Date(294276, time.December, 30, 0, 0, 0, 0, time.UTC)
)

// errPublishedAtRange is the Result.Err of a message whose PublishedAt
// timestamptz cannot store.
var errPublishedAtRange = errors.New("published_at is outside the range of timestamptz")

// querier is the method of a pool or a transaction that insertRows uses.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// batch is the rows of one InsertBatch call with repeated message ids
// removed: row r has ids[r], payloads[r] and published[r], and outcome[r]
// is what happened to it.
type batch struct {
	ids       []string
	payloads  [][]byte
	published []time.Time
	outcome   []Result
	first     []int          // first[r] is the index in msgs of row r
	rowOf     []int          // rowOf[i] is the row of msgs[i], or -1 if it was never sent
	index     map[string]int // message id to row
}

// newBatch builds the rows of msgs and fills results for the messages that
// are rejected before reaching the database.
func newBatch(msgs []Message, results []Result) *batch {
	n := len(msgs)
	b := &batch{
		ids:       make([]string, 0, n),
		payloads:  make([][]byte, 0, n),
		published: make([]time.Time, 0, n),
		first:     make([]int, 0, n),
		rowOf:     make([]int, n),
		index:     make(map[string]int, n),
	}
	var now time.Time
	for i, m := range msgs {
		published := m.PublishedAt
		if published.IsZero() {
			if now.IsZero() {
				now = time.Now()
			}
			published = now
		}
		if published.Before(minTimestamp) || published.After(maxTimestamp) {
			b.rowOf[i] = -1
			results[i] = Result{Outcome: Rejected, Err: errPublishedAtRange}
			continue
		}

		if r, seen := b.index[m.MessageID]; seen {
			b.rowOf[i] = r
			continue
		}
		r := len(b.ids)
		b.index[m.MessageID] = r
		b.rowOf[i] = r
		b.first = append(b.first, i)
		b.ids = append(b.ids, m.MessageID)
		b.payloads = append(b.payloads, m.Payload)
		b.published = append(b.published, published)
	}
	b.outcome = make([]Result, len(b.ids))
	return b
}

// fill copies the row outcomes into results. A later copy of a message id
// in the batch is a Duplicate of the first, unless the first was Rejected:
// then the copy is Rejected for the same reason.
func (b *batch) fill(results []Result) {
	for i, r := range b.rowOf {
		if r < 0 {
			continue
		}
		res := b.outcome[r]
		if b.first[r] != i && res.Outcome == Inserted {
			res = Result{Outcome: Duplicate}
		}
		results[i] = res
	}
}

// InsertBatch stores msgs in one transaction, skipping message ids that the
// tenant already has. In the common case that is one statement and one
// round trip. When the database rejects the batch because of the data in
// some rows, InsertBatch finds those rows by bisection in a transaction
// with savepoints, stores the others and reports the bad ones as Rejected.
//
// A message whose PublishedAt timestamptz cannot store is Rejected without
// being sent. The batch waits at most 200 ms for a lock, such as one held
// on the tenant's partition, and past that the error is retryable
// (lock_not_available). A non-nil error means nothing was committed, unless the
// connection broke while a statement ran (see Store). The error wraps
// ErrTenantNotFound when the tenant has no partition, ErrInvalidTenantID
// when tenantID is not a valid id, and ctx.Err() when ctx ended first.
func (p *Postgres) InsertBatch(ctx context.Context, tenantID string, msgs []Message) ([]Result, error) {
	if !ValidTenantID(tenantID) {
		return nil, fmt.Errorf("inserting batch for tenant %q: %w", tenantID, ErrInvalidTenantID)
	}
	results := make([]Result, len(msgs))
	b := newBatch(msgs, results)
	if len(b.ids) == 0 {
		return results, nil
	}

	var err error
	if p.group != nil {
		err = p.group.insert(ctx, tenantID, b)
	} else {
		err = p.insertAlone(ctx, tenantID, b)
	}
	if err != nil {
		return nil, batchError(ctx, tenantID, err)
	}
	b.fill(results)
	return results, nil
}

// insertAlone stores b in a transaction of its own: one statement, and
// when that fails because of the data in some rows, a transaction with
// savepoints that finds and rejects them. It reports the commit to the
// transaction observer.
func (p *Postgres) insertAlone(ctx context.Context, tenantID string, b *batch) error {
	_, err := p.insertPipeline(ctx, []*insertRequest{{tenantID: tenantID, b: b}}, p.aloneLockTimeout)
	if isRowError(err) && ctx.Err() == nil {
		err = p.insertIsolated(ctx, tenantID, b, err)
	}
	if err == nil {
		p.commit(1)
	}
	return err
}

// insertRows inserts rows lo..hi of b with one statement and records which
// of them were stored.
func insertRows(ctx context.Context, q querier, tenantID string, b *batch, lo, hi int) error {
	rows, err := q.Query(ctx, insertSQL, tenantID, b.ids[lo:hi], b.payloads[lo:hi], b.published[lo:hi])
	if err != nil {
		return err
	}
	return b.readOutcomes(rows, lo, hi)
}

// readOutcomes records which of rows lo..hi the insert that returned rows
// stored, and closes rows.
func (b *batch) readOutcomes(rows pgx.Rows, lo, hi int) error {
	defer rows.Close()
	for r := lo; r < hi; r++ {
		b.outcome[r] = Result{Outcome: Duplicate}
	}
	for rows.Next() {
		// RawValues avoids allocating a string per returned row; the map
		// lookup with string(bytes) does not allocate either.
		id := rows.RawValues()[0]
		if r, ok := b.index[string(id)]; ok {
			b.outcome[r] = Result{Outcome: Inserted}
		}
	}
	return rows.Err()
}

// insertIsolated stores b in one transaction, rejecting the rows that the
// database refuses. batchErr is the row error that the whole batch gave.
func (p *Postgres) insertIsolated(ctx context.Context, tenantID string, b *batch, batchErr error) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// Roll back also when ctx has ended, waiting at most cancelGrace.
		rollbackCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelGrace)
		defer cancel()
		_ = tx.Rollback(rollbackCtx)
	}()
	if _, err := tx.Exec(ctx, setLockTimeoutSQL, p.aloneLockTimeout); err != nil {
		return err
	}

	if err := isolate(ctx, tx, tenantID, b, 0, len(b.ids), batchErr); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}

	rejected := 0
	for _, o := range b.outcome {
		if o.Outcome == Rejected {
			rejected++
		}
	}
	p.logger.Debug("persistence: rows rejected", "tenant_id", tenantID,
		"batch_size", len(b.ids), "rejected", rejected, "err", batchErr)
	return nil
}

// isolate stores rows lo..hi of b, which together gave the row error
// rangeErr, by trying each half under a savepoint and splitting the halves
// that fail again. A single failing row is Rejected. With k bad rows among
// n this takes about 2·k·log2(n) statements.
func isolate(ctx context.Context, tx pgx.Tx, tenantID string, b *batch, lo, hi int, rangeErr error) error {
	if hi-lo == 1 {
		b.outcome[lo] = Result{Outcome: Rejected, Err: fmt.Errorf("rejected by database: %w", rangeErr)}
		return nil
	}
	mid := lo + (hi-lo)/2
	for _, half := range [2][2]int{{lo, mid}, {mid, hi}} {
		err := insertSavepoint(ctx, tx, tenantID, b, half[0], half[1])
		if isRowError(err) {
			err = isolate(ctx, tx, tenantID, b, half[0], half[1], err)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// insertSavepoint runs insertRows under a savepoint and rolls back to it
// when the insert fails, so that the transaction stays usable.
func insertSavepoint(ctx context.Context, tx pgx.Tx, tenantID string, b *batch, lo, hi int) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if err := insertRows(ctx, sp, tenantID, b, lo, hi); err != nil {
		if rbErr := sp.Rollback(ctx); rbErr != nil {
			return fmt.Errorf("rolling back to savepoint: %w", rbErr)
		}
		return err
	}
	return sp.Commit(ctx)
}

// batchError wraps the error of a failed batch.
func batchError(ctx context.Context, tenantID string, err error) error {
	if ctx.Err() == nil && isMissingPartition(err) {
		err = ErrTenantNotFound
	}
	return fmt.Errorf("inserting batch for tenant %q: %w", tenantID, withContext(ctx, err))
}
