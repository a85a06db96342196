package persistence

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// MaxTenantIDLength is the maximum length of a tenant id, in bytes.
const MaxTenantIDLength = 63

// ddlLockTimeout bounds how long creating or deleting a tenant waits for
// each of its locks: on the messages table, and on the partition that a
// delete drops.
const ddlLockTimeout = 3 * time.Second

// Dropping a partition needs an ACCESS EXCLUSIVE lock on messages, and
// while that request waits in PostgreSQL's lock queue, every later query
// on messages, of every tenant, queues behind it. DeleteTenant therefore
// waits at most exclusiveLockAttempt at a time and then pauses for
// exclusiveLockPause, which lets the queued queries run, until
// ddlLockTimeout has passed.
const (
	exclusiveLockAttempt = 50 * time.Millisecond
	exclusiveLockPause   = 50 * time.Millisecond
)

// setLockTimeout returns a SET LOCAL statement that sets the
// transaction's lock_timeout to d, formatted by pgDuration.
func setLockTimeout(d time.Duration) string {
	return "SET LOCAL lock_timeout = '" + pgDuration(d) + "'"
}

// ValidTenantID reports whether id matches ^[a-z0-9][a-z0-9_-]{0,62}$.
func ValidTenantID(id string) bool {
	if len(id) == 0 || len(id) > MaxTenantIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// partitionName returns the name of the tenant's partition table, at most
// 63 bytes (PostgreSQL's identifier limit). Ids of up to 54 bytes give
// messages_<id>. Longer ids give messages_, the first 37 bytes of the id,
// '$' and 16 hex digits of the id's SHA-256: '$' never occurs in an id, so
// a hashed name never equals the name of a short id.
func partitionName(tenantID string) string {
	const prefix = "messages_"
	if len(prefix)+len(tenantID) <= MaxTenantIDLength {
		return prefix + tenantID
	}
	sum := sha256.Sum256([]byte(tenantID))
	return prefix + tenantID[:37] + "$" + hex.EncodeToString(sum[:8])
}

// quoteLiteral returns s as an SQL string literal, as PostgreSQL's
// quote_literal does: quotes are doubled, and a string with a backslash
// becomes an escape string (E'...') with doubled backslashes, so the
// result is the same whatever standard_conforming_strings is set to. NUL
// bytes, which a PostgreSQL string cannot contain, are dropped.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	quoted := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		quoted = "E" + strings.ReplaceAll(quoted, `\`, `\\`)
	}
	return quoted
}

// CreateTenant stores the tenant row and creates its partition in one
// transaction. The partition is created as a plain table and then
// attached, because ATTACH PARTITION locks messages in SHARE UPDATE
// EXCLUSIVE mode, which does not block inserts and reads of other tenants,
// while CREATE TABLE ... PARTITION OF would lock it in ACCESS EXCLUSIVE mode.
func (p *Postgres) CreateTenant(ctx context.Context, t Tenant) (Tenant, error) {
	if !ValidTenantID(t.ID) {
		return Tenant{}, fmt.Errorf("creating tenant %q: %w", t.ID, ErrInvalidTenantID)
	}
	if t.WorkerCount < 1 {
		return Tenant{}, fmt.Errorf("creating tenant %q with %d workers: %w",
			t.ID, t.WorkerCount, ErrInvalidWorkerCount)
	}

	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		return createTenantTx(ctx, tx, &t)
	})
	if err != nil {
		return Tenant{}, fmt.Errorf("creating tenant %q: %w", t.ID, withContext(ctx, err))
	}
	p.logger.Info("persistence: created tenant", "tenant_id", t.ID, "partition", partitionName(t.ID))
	return t, nil
}

// lockMessages sets the transaction's lock_timeout and locks messages in
// mode. ONLY keeps the lock off the partitions, which would need one lock
// table entry per tenant. Taking the lock before the first write matters: a transaction has
// no transaction id until it writes, and only transactions with one hold
// back the snapshot xmin that ListMessages waits for, for every tenant.
func lockMessages(ctx context.Context, tx pgx.Tx, mode string) error {
	// Without arguments pgx uses the simple protocol, which allows two
	// statements in one round trip.
	_, err := tx.Exec(ctx, setLockTimeout(ddlLockTimeout)+"; LOCK TABLE ONLY messages IN "+mode+" MODE")
	if err != nil {
		return fmt.Errorf("locking messages: %w", err)
	}
	return nil
}

// lockMessagesExclusive locks messages in ACCESS EXCLUSIVE mode in
// attempts of exclusiveLockAttempt, each under a savepoint, with a pause of
// exclusiveLockPause between them. Rolling back to the savepoint after a
// lock timeout keeps the transaction usable and the locks taken before it,
// and drops the attempt's lock request and lock_timeout (PostgreSQL 15
// manual, "Table-Level Locks" and SET, and checked on 15.20). After
// ddlLockTimeout it returns the last attempt's lock_not_available error,
// which IsRetryable accepts. On success lock_timeout is ddlLockTimeout
// again for the rest of the transaction.
func lockMessagesExclusive(ctx context.Context, tx pgx.Tx) error {
	deadline := time.Now().Add(ddlLockTimeout)
	for {
		err := tryLockMessagesExclusive(ctx, tx)
		if sqlState(err) != "55P03" || time.Until(deadline) < exclusiveLockPause {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("locking messages: %w", contextError(ctx))
		case <-time.After(exclusiveLockPause):
		}
	}
}

// tryLockMessagesExclusive makes one attempt of lockMessagesExclusive.
func tryLockMessagesExclusive(ctx context.Context, tx pgx.Tx) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("locking messages: %w", err)
	}
	// Without arguments pgx uses the simple protocol, which allows three
	// statements in one round trip. An error skips the ones after it.
	_, err = sp.Exec(ctx, setLockTimeout(exclusiveLockAttempt)+
		"; LOCK TABLE ONLY messages IN ACCESS EXCLUSIVE MODE; "+
		setLockTimeout(ddlLockTimeout))
	if err != nil {
		if rollbackErr := sp.Rollback(ctx); rollbackErr != nil {
			return fmt.Errorf("locking messages: %w", errors.Join(err, rollbackErr))
		}
		return fmt.Errorf("locking messages: %w", err)
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("locking messages: %w", err)
	}
	return nil
}

// lockPartition sets the transaction's lock_timeout and locks the
// partition in ACCESS EXCLUSIVE mode. A partition that does not exist, or
// that a concurrent DeleteTenant dropped while this call waited for it, is
// not an error. The lock runs under a savepoint, so that error leaves the
// transaction usable.
func lockPartition(ctx context.Context, tx pgx.Tx, partition string) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	_, err = sp.Exec(ctx, setLockTimeout(ddlLockTimeout)+
		"; LOCK TABLE "+pgx.Identifier{partition}.Sanitize()+" IN ACCESS EXCLUSIVE MODE")
	if sqlState(err) == "42P01" { // undefined_table
		return sp.Rollback(ctx)
	}
	if err != nil {
		return fmt.Errorf("locking partition %s: %w", partition, err)
	}
	return sp.Commit(ctx)
}

func createTenantTx(ctx context.Context, tx pgx.Tx, t *Tenant) error {
	partition := partitionName(t.ID)
	if err := lockMessages(ctx, tx, "SHARE UPDATE EXCLUSIVE"); err != nil {
		return err
	}

	err := tx.QueryRow(ctx, `
		INSERT INTO tenants (id, name, worker_count, partition_name)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO NOTHING
		RETURNING created_at`,
		t.ID, t.Name, t.WorkerCount, partition,
	).Scan(&t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrTenantExists
	}
	if err != nil {
		return err
	}

	table := pgx.Identifier{partition}.Sanitize()
	if _, err := tx.Exec(ctx, "CREATE TABLE "+table+" (LIKE messages INCLUDING DEFAULTS)"); err != nil {
		return fmt.Errorf("creating partition %s: %w", table, err)
	}
	attach := "ALTER TABLE messages ATTACH PARTITION " + table +
		" FOR VALUES IN (" + quoteLiteral(t.ID) + ")"
	if _, err := tx.Exec(ctx, attach); err != nil {
		return fmt.Errorf("attaching partition %s: %w", table, err)
	}
	return nil
}

// GetTenant returns the tenant or ErrTenantNotFound.
func (p *Postgres) GetTenant(ctx context.Context, id string) (Tenant, error) {
	rows, _ := p.pool.Query(ctx,
		`SELECT id, name, worker_count, created_at FROM tenants WHERE id = $1`, id)
	t, err := pgx.CollectExactlyOneRow(rows, scanTenant)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, fmt.Errorf("getting tenant %q: %w", id, ErrTenantNotFound)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("getting tenant %q: %w", id, withContext(ctx, err))
	}
	return t, nil
}

// ListTenants returns every tenant, ordered by created_at, then id.
func (p *Postgres) ListTenants(ctx context.Context) ([]Tenant, error) {
	rows, _ := p.pool.Query(ctx,
		`SELECT id, name, worker_count, created_at FROM tenants ORDER BY created_at, id`)
	tenants, err := pgx.CollectRows(rows, scanTenant)
	if err != nil {
		return nil, fmt.Errorf("listing tenants: %w", withContext(ctx, err))
	}
	return tenants, nil
}

// SetWorkerCount changes a tenant's worker count and returns the updated
// tenant, or ErrTenantNotFound.
func (p *Postgres) SetWorkerCount(ctx context.Context, id string, n int) (Tenant, error) {
	if n < 1 {
		return Tenant{}, fmt.Errorf("setting worker count of tenant %q to %d: %w",
			id, n, ErrInvalidWorkerCount)
	}
	rows, _ := p.pool.Query(ctx, `
		UPDATE tenants SET worker_count = $2 WHERE id = $1
		RETURNING id, name, worker_count, created_at`, id, n)
	t, err := pgx.CollectExactlyOneRow(rows, scanTenant)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, fmt.Errorf("setting worker count of tenant %q: %w", id, ErrTenantNotFound)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("setting worker count of tenant %q: %w", id, withContext(ctx, err))
	}
	return t, nil
}

// DeleteTenant deletes the tenant row and drops its partition, with every
// message in it, in one transaction. It locks the partition first and
// then messages in ACCESS EXCLUSIVE mode, which dropping the partition
// needs. It waits at most 3 s for each lock and then returns an error that
// IsRetryable accepts. The wait for messages runs in attempts of 50 ms,
// because other tenants' queries on messages queue behind the waiting
// request, so each attempt holds them up for 50 ms at most.
func (p *Postgres) DeleteTenant(ctx context.Context, id string) error {
	return p.DeleteTenantWith(ctx, id, nil)
}

// DeleteTenantWith is DeleteTenant with one more step before the commit:
// once the row is deleted and the partition dropped, it calls beforeCommit
// inside the transaction, which still holds its locks, and commits only
// when beforeCommit returns nil. An error of beforeCommit rolls the delete
// back and is returned wrapped. A lock that times out, or a tenant that
// another call deleted first, ends the call before beforeCommit runs, so
// the commit itself is the only step of the database that can fail after
// it. beforeCommit may be nil.
func (p *Postgres) DeleteTenantWith(ctx context.Context, id string, beforeCommit func(context.Context) error) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var partition string
		err := tx.QueryRow(ctx, `SELECT partition_name FROM tenants WHERE id = $1`, id).Scan(&partition)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrTenantNotFound
		}
		if err != nil {
			return err
		}
		// The partition first: while this call waits for a lock that
		// another session holds on it, messages is not locked yet, so the
		// other tenants' inserts go on.
		if err := lockPartition(ctx, tx, partition); err != nil {
			return err
		}
		if err := lockMessagesExclusive(ctx, tx); err != nil {
			return err
		}

		tag, err := tx.Exec(ctx, `DELETE FROM tenants WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 { // deleted by another call while this one waited
			return ErrTenantNotFound
		}
		if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{partition}.Sanitize()); err != nil {
			return err
		}
		if beforeCommit != nil {
			return beforeCommit(ctx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting tenant %q: %w", id, withContext(ctx, err))
	}
	p.logger.Info("persistence: deleted tenant", "tenant_id", id)
	return nil
}

func scanTenant(row pgx.CollectableRow) (Tenant, error) {
	var t Tenant
	err := row.Scan(&t.ID, &t.Name, &t.WorkerCount, &t.CreatedAt)
	return t, err
}
