package persistence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func pgError(code string) error {
	return fmt.Errorf("inserting batch: %w", &pgconn.PgError{Code: code, Message: "test"})
}

func TestIsRetryable(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", errors.New("boom"), false},
		{"context canceled", fmt.Errorf("x: %w", context.Canceled), false},
		{"deadline exceeded", fmt.Errorf("x: %w", context.DeadlineExceeded), false},
		{"canceled over connection error", fmt.Errorf("%w: %w", context.Canceled, io.ErrUnexpectedEOF), false},
		{"tenant not found", fmt.Errorf("x: %w", ErrTenantNotFound), false},
		{"invalid tenant id", fmt.Errorf("x: %w", ErrInvalidTenantID), false},
		{"serialization failure", pgError("40001"), true},
		{"deadlock", pgError("40P01"), true},
		{"lock timeout", pgError("55P03"), true},
		{"statement timeout", pgError("57014"), true},
		{"admin shutdown", pgError("57P01"), true},
		{"crash shutdown", pgError("57P02"), true},
		{"cannot connect now", pgError("57P03"), true},
		{"read-only transaction", pgError("25006"), true},
		{"connection failure", pgError("08006"), true},
		{"too many connections", pgError("53300"), true},
		{"disk full", pgError("53100"), true},
		{"untranslatable character", pgError("22P05"), false},
		{"unique violation", pgError("23505"), false},
		{"undefined table", pgError("42P01"), false},
		{"invalid password", pgError("28P01"), false},
		{"database missing", pgError("3D000"), false},
		{"unexpected EOF", fmt.Errorf("x: %w", io.ErrUnexpectedEOF), true},
		{"EOF", io.EOF, true},
		{"connection reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{"broken pipe", fmt.Errorf("x: %w", syscall.EPIPE), true},
		{"connection refused", fmt.Errorf("x: %w", syscall.ECONNREFUSED), true},
		{"conn closed", fmt.Errorf("x: %w", pgconn.ErrConnClosed), true},
	}
	for _, c := range cases {
		require.Equal(t, c.want, IsRetryable(c.err), "%s: %v", c.name, c.err)
	}
}

func TestIsRowError(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err  error
		want bool
	}{
		{pgError("22P05"), true},
		{pgError("22P02"), true},
		{pgError("22021"), true},
		{pgError("22008"), true},
		{pgError("23502"), true},
		{pgError("54000"), true},
		{pgError("23505"), false},
		{pgError("23514"), false}, // no partition for the tenant
		{fmt.Errorf("x: %w", &pgconn.PgError{Code: "23514", ConstraintName: "some_check"}), true},
		{pgError("40001"), false},
		{pgError("57P01"), false},
		{io.ErrUnexpectedEOF, false},
		{nil, false},
	}
	for _, c := range cases {
		require.Equal(t, c.want, isRowError(c.err), "%v", c.err)
	}
}
