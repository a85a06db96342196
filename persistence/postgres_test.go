package persistence

import (
	"context"
	"io/fs"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/migrations"
)

// missingDatabaseURL returns the URL of a database that does not exist yet
// and drops it, if something created it, when the test ends.
func missingDatabaseURL(t *testing.T) string {
	t.Helper()
	ctx := testContext(t)
	admin, err := pgx.Connect(ctx, testenv.DatabaseURL())
	if err != nil {
		t.Skipf("PostgreSQL is not reachable (%v); start it or set TEST_DATABASE_URL", err)
	}
	require.NoError(t, admin.Close(ctx))

	name := "messaging_open_" + testenv.RandomSuffix()
	u, err := url.Parse(testenv.DatabaseURL())
	require.NoError(t, err)
	u.Path = "/" + name

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, testenv.DatabaseURL())
		if err != nil {
			t.Logf("dropping database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		if err != nil {
			t.Logf("dropping database %s: %v", name, err)
		}
	})
	return u.String()
}

func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, testenv.DatabaseURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, name).Scan(&exists)
	require.NoError(t, err)
	return exists
}

func TestOpenCreatesMissingDatabase(t *testing.T) {
	t.Parallel()
	databaseURL := missingDatabaseURL(t)
	u, err := url.Parse(databaseURL)
	require.NoError(t, err)
	name := u.Path[1:]
	require.False(t, databaseExists(t, name))

	store := openStore(t, databaseURL)
	require.NoError(t, store.Ping(testContext(t)))
	require.True(t, databaseExists(t, name))

	var current string
	require.NoError(t, store.Pool().QueryRow(testContext(t), "SELECT current_database()").Scan(&current))
	require.Equal(t, name, current)
}

func TestOpenConcurrentlyCreatesDatabaseOnce(t *testing.T) {
	t.Parallel()
	databaseURL := missingDatabaseURL(t)
	ctx := testContext(t)

	const openers = 4
	errs := make([]error, openers)
	var wg sync.WaitGroup
	for i := range openers {
		wg.Go(func() {
			store, err := Open(ctx, databaseURL, nil)
			errs[i] = err
			if err == nil {
				errs[i] = store.Ping(ctx)
				store.Close()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "opener %d", i)
	}
}

func TestOpenWithoutCreateDBPrivilege(t *testing.T) {
	t.Parallel()
	databaseURL := missingDatabaseURL(t)
	ctx := testContext(t)
	admin, err := pgx.Connect(ctx, testenv.DatabaseURL())
	require.NoError(t, err)
	// Registered first, so that it runs after the cleanup that drops the role.
	t.Cleanup(func() { _ = admin.Close(context.Background()) })

	role := "messaging_nocreatedb_" + testenv.RandomSuffix()
	_, err = admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN NOCREATEDB PASSWORD 'unused'")
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
		require.NoError(t, err)
	})

	u, err := url.Parse(databaseURL)
	require.NoError(t, err)
	u.User = url.UserPassword(role, "unused")
	_, err = Open(ctx, u.String(), nil)
	require.ErrorContains(t, err, "creating database")
	require.Equal(t, "42501", sqlState(err), "error: %v", err) // insufficient_privilege
	require.False(t, IsRetryable(err))
}

func TestOpenRejectsMalformedURL(t *testing.T) {
	t.Parallel()
	_, err := Open(testContext(t), "postgres://user@127.0.0.1:5432/db?sslmode=bogus", nil)
	require.ErrorContains(t, err, "parsing database url")
}

func TestOpenUnreachableServerIsRetryable(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1 of the loopback address.
	_, err := Open(testContext(t), "postgres://postgres@127.0.0.1:1/messaging?connect_timeout=2", nil)
	require.Error(t, err)
	require.True(t, IsRetryable(err), "error: %v", err)
}

func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)

	require.NoError(t, store.Migrate(ctx))
	require.NoError(t, store.Migrate(ctx))

	var applied int
	err := store.Pool().QueryRow(ctx,
		`SELECT count(*) FROM goose_db_version WHERE version_id > 0 AND is_applied`).Scan(&applied)
	require.NoError(t, err)
	require.Equal(t, migrationCount(t), applied)
}

func TestMigrateConcurrentProcesses(t *testing.T) {
	t.Parallel()
	databaseURL := testenv.NewDatabase(t)
	ctx := testContext(t)

	// Separate pools have separate sessions, as two server processes would.
	const processes = 3
	stores := make([]*Postgres, processes)
	for i := range stores {
		stores[i] = openStore(t, databaseURL)
	}
	errs := make([]error, processes)
	var wg sync.WaitGroup
	for i, store := range stores {
		wg.Go(func() { errs[i] = store.Migrate(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "process %d", i)
	}

	var rows, versions int
	err := stores[0].Pool().QueryRow(ctx, `
		SELECT count(*), count(DISTINCT version_id)
		FROM goose_db_version WHERE version_id > 0`).Scan(&rows, &versions)
	require.NoError(t, err)
	require.Equal(t, migrationCount(t), versions)
	require.Equal(t, versions, rows, "a migration was recorded twice")

	tenant := createTenant(t, stores[1], "migrated")
	_, err = stores[2].GetTenant(ctx, tenant.ID)
	require.NoError(t, err)
}

func TestMigrateWaitsForLockHolder(t *testing.T) {
	t.Parallel()
	databaseURL := testenv.NewDatabase(t)
	ctx := testContext(t)
	holder := openStore(t, databaseURL)
	store := openStore(t, databaseURL)

	conn, err := holder.Pool().Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLockID)
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- store.Migrate(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Migrate returned while another session held the lock: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	_, err = conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", migrationLockID)
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Migrate did not return within 10s after the lock was released")
	}
}

func TestMigrateHonoursContext(t *testing.T) {
	t.Parallel()
	databaseURL := testenv.NewDatabase(t)
	holder := openStore(t, databaseURL)
	store := openStore(t, databaseURL)

	conn, err := holder.Pool().Acquire(testContext(t))
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(testContext(t), "SELECT pg_advisory_lock($1)", migrationLockID)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(testContext(t), 200*time.Millisecond)
	defer cancel()
	err = store.Migrate(ctx)
	require.Error(t, err)
	require.False(t, IsRetryable(err), "error: %v", err)
}

func TestPingAndClose(t *testing.T) {
	t.Parallel()
	store := setup(t)
	ctx := testContext(t)
	require.NoError(t, store.Ping(ctx))

	store.Close()
	store.Close()
	require.Error(t, store.Ping(ctx))
	_, err := store.InsertBatch(ctx, "tenant", messages("closed", 1))
	require.Error(t, err)
	require.False(t, IsRetryable(err), "a closed pool cannot succeed later: %v", err)
}

// migrationCount returns the number of embedded migration files.
func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return len(files)
}
