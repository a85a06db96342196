package persistence

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// MaxListLimit is the largest limit ListMessages accepts; larger limits are
// lowered to it.
const MaxListLimit = 10000

// listSQL pages by (tx_id, id) and returns only rows stored by transactions
// older than the xmin of the statement's snapshot, the oldest transaction
// still running when the statement started. Every transaction below xmin
// has ended, so later commits can only add rows after the last one
// returned. pg_current_snapshot() returns the snapshot the statement reads
// with, so the rows it filters are exactly the rows it can see.
//
// A transaction that stays open, in any database of the cluster, holds
// xmin back: rows committed after it began are returned only once it ends.
const listSQL = `
SELECT id, message_id, payload, published_at, stored_at, tx_id
FROM messages
WHERE tenant_id = $1
  AND (tx_id, id) > ($2::xid8, $3::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, id
LIMIT $4`

// ListMessages returns up to limit messages of the tenant after `after`,
// ordered by Position. A walk followed by polling with Page.Next returns
// every committed message exactly once, even while several transactions
// commit concurrently. An unknown tenant, or an invalid tenant id, has no
// messages.
//
// NOTE: a writing transaction that stays open anywhere in the PostgreSQL
// cluster, in any database, delays every row committed after it started
// until it ends, for all tenants.
func (p *Postgres) ListMessages(ctx context.Context, tenantID string, after Position, limit int) (Page, error) {
	if limit < 1 {
		return Page{}, fmt.Errorf("listing messages: limit %d is below 1", limit)
	}
	limit = min(limit, MaxListLimit)
	if !ValidTenantID(tenantID) {
		return Page{Messages: []StoredMessage{}, Next: after}, nil
	}

	// The extra row shows whether more messages follow.
	rows, _ := p.pool.Query(ctx, listSQL, tenantID, after.TxID, after.ID, limit+1)
	msgs, err := collectMessages(rows, min(limit+1, 256))
	if err != nil {
		return Page{}, fmt.Errorf("listing messages of tenant %q: %w", tenantID, withContext(ctx, err))
	}

	page := Page{Messages: msgs, Next: after}
	if len(page.Messages) > limit {
		page.Messages = page.Messages[:limit]
		page.HasMore = true
	}
	if n := len(page.Messages); n > 0 {
		page.Next = page.Messages[n-1].Position
	}
	return page, nil
}

// collectMessages reads and closes rows of listSQL. A query error is
// returned by rows.Err.
func collectMessages(rows pgx.Rows, capacity int) ([]StoredMessage, error) {
	defer rows.Close()
	msgs := make([]StoredMessage, 0, capacity)
	for rows.Next() {
		var m StoredMessage
		// Scanning into *[]byte copies the jsonb text as it is, where
		// *json.RawMessage would go through json.Unmarshal.
		err := rows.Scan(&m.ID, &m.MessageID, (*[]byte)(&m.Payload),
			&m.PublishedAt, &m.StoredAt, &m.Position.TxID)
		if err != nil {
			return nil, err
		}
		m.Position.ID = m.ID
		msgs = append(msgs, m)
	}
	return msgs, rows.Err()
}

// CountMessages returns the number of stored messages of a tenant; an
// unknown tenant has none.
func (p *Postgres) CountMessages(ctx context.Context, tenantID string) (int64, error) {
	if !ValidTenantID(tenantID) {
		return 0, nil
	}
	var n int64
	err := p.pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE tenant_id = $1`, tenantID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("counting messages of tenant %q: %w", tenantID, withContext(ctx, err))
	}
	return n, nil
}
