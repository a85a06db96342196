// Package testenv connects integration tests to the real PostgreSQL and
// RabbitMQ named by TEST_DATABASE_URL and TEST_RABBITMQ_URL.
//
// When a service cannot be reached, tests skip with a message that says how
// to start it, except when the CI environment variable is set: then they
// fail, so a CI run never passes by skipping.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Defaults match the services of a developer machine and of CI.
const (
	DefaultDatabaseURL = "postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable"
	DefaultRabbitMQURL = "amqp://guest:guest@127.0.0.1:5672/"
)

// DatabaseURL returns the maintenance database URL from TEST_DATABASE_URL.
func DatabaseURL() string {
	if v := os.Getenv("TEST_DATABASE_URL"); v != "" {
		return v
	}
	return DefaultDatabaseURL
}

// RabbitMQURL returns the broker URL from TEST_RABBITMQ_URL.
func RabbitMQURL() string {
	if v := os.Getenv("TEST_RABBITMQ_URL"); v != "" {
		return v
	}
	return DefaultRabbitMQURL
}

// InCI reports whether the CI environment variable is set, in which case a
// missing service or tool fails a test instead of skipping it.
func InCI() bool { return os.Getenv("CI") != "" }

// unavailable skips the test, or fails it when CI is set.
func unavailable(t testing.TB, service, how string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s is not reachable (%v); %s", service, err, how)
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// RequireRabbitMQ returns the broker URL after checking that its port accepts
// connections.
func RequireRabbitMQ(t testing.TB) string {
	t.Helper()
	raw := RabbitMQURL()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("invalid TEST_RABBITMQ_URL %q: %v", raw, err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	conn, err := net.DialTimeout("tcp", host, 3*time.Second)
	if err != nil {
		unavailable(t, "RabbitMQ", "start it with 'rabbitmq-server -detached' or set TEST_RABBITMQ_URL", err)
	}
	conn.Close()
	return raw
}

// NewDatabase creates an empty database for one test and returns its URL.
// The database is dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, drop, err := CreateDatabase(ctx)
	if err != nil {
		RequireDatabase(t, err)
	}
	t.Cleanup(drop)
	return url
}

// RequireDatabase skips or fails t (see the package comment) when err, from
// CreateDatabase, is not nil.
func RequireDatabase(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		unavailable(t, "PostgreSQL",
			"start it with 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' or set TEST_DATABASE_URL", err)
	}
}

// CreateDatabase creates an empty database and returns its URL and a
// function that drops it. TestMain functions use it to share one database
// among the tests of a package.
func CreateDatabase(ctx context.Context) (string, func(), error) {
	adminURL := DatabaseURL()
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("invalid TEST_DATABASE_URL %q: %w", adminURL, err)
	}
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", nil, err
	}
	defer conn.Close(ctx)

	name := "messaging_test_" + RandomSuffix()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("create test database %s: %w", name, err)
	}
	u.Path = "/" + name
	return u.String(), func() { dropDatabase(adminURL, name) }, nil
}

func dropDatabase(adminURL, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "drop test database %s: %v\n", name, err)
		return
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	if err != nil {
		fmt.Fprintf(os.Stderr, "drop test database %s: %v\n", name, err)
	}
}

// RandomSuffix returns 12 lowercase hex characters, valid in tenant ids,
// queue names and database names.
func RandomSuffix() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// TenantID returns a tenant id unique to this run, starting with prefix.
func TenantID(prefix string) string {
	prefix = strings.ToLower(prefix)
	return prefix + "-" + RandomSuffix()
}
