package persistence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/go-messaging-system/messaging/migrations"
)

// Postgres is the Store backed by a pgx connection pool.
type Postgres struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	group  *committer        // nil when batches are not grouped
	commit func(batches int) // called after each insert transaction commits; never nil
	// aloneLockTimeout is the lock_timeout of a batch stored on its own, so
	// that a locked partition keeps no pool connection for long.
	aloneLockTimeout string
}

var _ Store = (*Postgres)(nil)

// Option changes how Open sets up the store.
type Option func(*settings)

type settings struct {
	pool        *pgxpool.Config
	groupCommit int
	observe     func(batches int)
	lockTimeout time.Duration // lock_timeout of shared transactions
	// aloneLockTimeout is the lock_timeout of a batch stored on its own.
	aloneLockTimeout time.Duration
	lockedPause      time.Duration // see lockedPause
	lockWarnInterval time.Duration // see lockWarnInterval
}

// WithMaxConns sets the maximum number of pooled connections. The default
// is pool_max_conns from the URL, or else pgxpool's default, the larger of
// 4 and runtime.NumCPU().
func WithMaxConns(n int32) Option {
	return func(s *settings) { s.pool.MaxConns = n }
}

// WithPoolConfig calls fn with the parsed pool configuration before the
// pool is created, for settings without an option of their own such as a
// tracer or connection lifetimes.
func WithPoolConfig(fn func(*pgxpool.Config)) Option {
	return func(s *settings) { fn(s.pool) }
}

// WithGroupCommit makes InsertBatch share transactions: at most n batch
// transactions of batches under 100 rows run at once, and n of larger
// ones. Batches of other tenants that arrive while they run are stored
// together in the next one of their size, each with its own statement. Under load that turns many small commits into a few larger
// ones. A shared transaction waits at most 200 ms for a lock, and when it
// fails each of its batches is run again on its own by its caller. n of 0,
// the default, runs every batch in its own transaction.
func WithGroupCommit(n int) Option {
	return func(s *settings) { s.groupCommit = n }
}

// WithTransactionObserver makes InsertBatch call fn after each insert
// transaction that commits, with the number of batches it stored: 1
// without WithGroupCommit. fn may run on the goroutine that starts the
// next transaction, so it must return quickly.
func WithTransactionObserver(fn func(batches int)) Option {
	return func(s *settings) { s.observe = fn }
}

// Open connects to databaseURL and pings the database. When the database
// does not exist, Open creates it through the "postgres" (or else
// "template1") maintenance database, which needs the CREATEDB privilege.
// Queries whose context ends are cancelled on the server (see
// cancelOnContextDone); a WithPoolConfig option may change that. A nil
// logger discards log output.
func Open(ctx context.Context, databaseURL string, logger *slog.Logger, opts ...Option) (*Postgres, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parsing database url: %w", err)
	}
	cfg.ConnConfig.BuildContextWatcherHandler = cancelOnContextDone
	set := settings{pool: cfg, lockTimeout: groupLockTimeout, aloneLockTimeout: groupLockTimeout,
		lockedPause: lockedPause, lockWarnInterval: lockWarnInterval}
	for _, opt := range opts {
		opt(&set)
	}

	pool, err := connect(ctx, cfg)
	if sqlState(err) == "3D000" { // invalid_catalog_name: no such database
		if err := createDatabase(ctx, cfg.ConnConfig, logger); err != nil {
			return nil, err
		}
		pool, err = connect(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	p := &Postgres{pool: pool, logger: logger, commit: set.observe, aloneLockTimeout: pgDuration(set.aloneLockTimeout)}
	if p.commit == nil {
		p.commit = func(int) {}
	}
	if set.groupCommit > 0 {
		p.group = newCommitter(p, set.groupCommit, set.lockTimeout, set.lockedPause, set.lockWarnInterval)
	}
	return p, nil
}

// cancelGrace is how long a connection waits for the server to end a
// cancelled query before pgx closes the connection.
const cancelGrace = 2 * time.Second

// cancelOnContextDone makes pgx send the server a cancel request when a
// query's context ends. pgx's default only closes the connection, and the
// server then finishes the statement on its own: an insert waiting for a
// lock would still commit once it got the lock, after InsertBatch had
// returned an error. A cancelled statement is rolled back and the
// connection stays usable.
func cancelOnContextDone(conn *pgconn.PgConn) ctxwatch.Handler {
	return &pgconn.CancelRequestContextWatcherHandler{Conn: conn, DeadlineDelay: cancelGrace}
}

func connect(ctx context.Context, cfg *pgxpool.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("creating connection pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to database %q: %w", cfg.ConnConfig.Database, withContext(ctx, err))
	}
	return pool, nil
}

// createDatabase creates the database that target names. Another process
// creating it at the same time is not an error.
func createDatabase(ctx context.Context, target *pgx.ConnConfig, logger *slog.Logger) error {
	name := target.Database
	conn, err := connectMaintenance(ctx, target)
	if err != nil {
		return fmt.Errorf("creating database %q: %w", name, withContext(ctx, err))
	}
	defer conn.Close(context.WithoutCancel(ctx))

	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	switch {
	case err == nil:
		logger.Info("persistence: created database", "database", name)
		return nil
	case sqlState(err) == "42P04", sqlState(err) == "23505":
		// duplicate_database, or a unique violation in pg_database when
		// another session created it at the same moment.
		return nil
	default:
		return fmt.Errorf("creating database %q: %w", name, withContext(ctx, err))
	}
}

func connectMaintenance(ctx context.Context, target *pgx.ConnConfig) (*pgx.Conn, error) {
	var errs []error
	for _, db := range []string{"postgres", "template1"} {
		cfg := target.Copy()
		cfg.Database = db
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("connecting to a maintenance database: %w", errors.Join(errs...))
}

// Migrate applies the embedded migrations that the database lacks. It
// holds a PostgreSQL advisory lock while it runs, so processes that start
// together apply each migration once; a second call does nothing.
func (p *Postgres) Migrate(ctx context.Context) error {
	db := stdlib.OpenDBFromPool(p.pool)
	defer db.Close()

	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithSessionLocker(advisoryLocker{}),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(p.logger),
	)
	if err != nil {
		return fmt.Errorf("loading migrations: %w", err)
	}
	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("applying migrations: %w", withContext(ctx, err))
	}
	for _, r := range results {
		p.logger.Info("persistence: applied migration",
			"version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}

// migrationLockID keys the advisory lock that Migrate holds. Advisory locks
// are per database, so other databases of the cluster are not affected.
const migrationLockID int64 = 0x6d73675f6d6967 // "msg_mig"

// advisoryLocker waits for the migration lock with pg_advisory_lock, which
// returns as soon as the holder ends, unlike goose's own session locker
// that polls every few seconds. The server releases the lock when the
// session ends, also when the process dies.
type advisoryLocker struct{}

var _ lock.SessionLocker = advisoryLocker{}

func (advisoryLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", migrationLockID); err != nil {
		return fmt.Errorf("taking migration lock: %w", err)
	}
	return nil
}

func (advisoryLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", migrationLockID); err != nil {
		return fmt.Errorf("releasing migration lock: %w", err)
	}
	return nil
}

// Ping sends an empty query to the database and waits for its response.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("pinging database: %w", withContext(ctx, err))
	}
	return nil
}

// Close closes every pooled connection, waiting for those in use to be
// released. Calling it again does nothing.
func (p *Postgres) Close() {
	if p.group != nil {
		p.group.close()
	}
	p.pool.Close()
}

// Pool returns the underlying pool, for tests and the load harness.
func (p *Postgres) Pool() *pgxpool.Pool {
	return p.pool
}
