package persistence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// IsRetryable reports whether the operation that returned err may succeed
// when tried again unchanged: the connection was lost or refused, the
// server is shutting down or out of resources, or the transaction lost a
// serialization, deadlock or lock-timeout race. Context cancellation and
// deadlines are not retryable, because a new attempt needs a new context;
// neither are data errors, missing tenants or a closed pool.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}

	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return retryableSQLState(pgErr.Code)
	}

	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case pgconn.SafeToRetry(err), pgconn.Timeout(err):
		return true
	case errors.As(err, &connectErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, pgconn.ErrConnClosed):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNREFUSED):
		return true
	}
	return false
}

// retryableSQLState reports whether an error with this SQLSTATE may go away
// on a new attempt. See the PostgreSQL manual, appendix "PostgreSQL Error
// Codes".
func retryableSQLState(code string) bool {
	switch code {
	case "40001", // serialization_failure
		"40P01", // deadlock_detected
		"55P03", // lock_not_available, from lock_timeout
		"57014", // query_canceled, from statement_timeout
		"57P01", // admin_shutdown, also pg_terminate_backend
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now, server starting or in recovery
		"25006": // read_only_sql_transaction, connected to a standby
		return true
	}
	// Class 08 is connection exceptions, class 53 insufficient resources
	// such as too_many_connections or disk_full.
	return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53")
}

// isRowError reports whether err is a data error that one row of a batch
// can cause, so that the other rows may still be stored. These are class 22
// (data exception, such as invalid jsonb input), class 23 (integrity
// constraint violation) and 54000 (program limit exceeded, such as an
// index entry over the btree size limit for a huge message_id). A unique
// violation cannot come from one row because ON CONFLICT skips it, and a
// check violation on messages means the partition is missing.
func isRowError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch {
	case pgErr.Code == "23505", isMissingPartition(err):
		return false
	case pgErr.Code == "54000":
		return true
	}
	return strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23")
}

// isMissingPartition reports whether err is PostgreSQL's "no partition of
// relation found for row", which it raises as a check violation without a
// constraint name.
func isMissingPartition(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23514" && pgErr.ConstraintName == ""
}

// sqlState returns the SQLSTATE of err, or "" when the server sent none.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// withContext returns err, or the context's error when ctx has ended. A
// cancelled query fails with the server's query_canceled error, which on
// its own reads like a statement timeout and would be retryable.
func withContext(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	return fmt.Errorf("%w (%v)", contextError(ctx), err)
}

// contextError returns ctx.Err(), joined with the cancellation cause when
// the caller gave one.
func contextError(ctx context.Context) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && cause != err {
		return fmt.Errorf("%w: %w", err, cause)
	}
	return err
}
