package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/go-messaging-system/messaging/actors"
	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/config"
	"github.com/go-messaging-system/messaging/metrics"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/supervisor"
	"github.com/go-messaging-system/messaging/transport"
)

// loadConfig reads the configuration, fills in the development secret
// under -dev and builds the logger. It reports where the secret came from.
func loadConfig(args []string, getenv func(string) string,
	stderr io.Writer) (config.Config, config.DevSecret, *slog.Logger, error) {
	bootLogger := slog.New(slog.NewJSONHandler(stderr, nil))
	cfg, err := config.Load(args, getenv, bootLogger)
	if err != nil {
		return cfg, config.DevSecretUnused, nil, usageError{err}
	}
	logger := cfg.NewLogger(stderr)
	source, err := cfg.EnsureDevSecret()
	if err != nil {
		return cfg, config.DevSecretUnused, nil, err
	}
	return cfg, source, logger, nil
}

// loadServerConfig is loadConfig for the commands that run against the
// services, which log that a development secret is in use.
func loadServerConfig(args []string, getenv func(string) string, stderr io.Writer) (config.Config, *slog.Logger, error) {
	cfg, source, logger, err := loadConfig(args, getenv, stderr)
	if err != nil {
		return cfg, nil, err
	}
	if source != config.DevSecretUnused {
		path, _ := cfg.DevSecretPath()
		logger.Warn("development mode: using a local JWT secret; set JWT_SECRET in production", "secret_file", path)
	}
	return cfg, logger, nil
}

func migrate(args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, logger, err := loadServerConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	store, err := persistence.Open(ctx, cfg.DatabaseURL, logger)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	logger.Info("migrations applied")
	return nil
}

// serve runs the server until ctx is cancelled (SIGINT or SIGTERM), then
// shuts down gracefully within ShutdownTimeout.
func serve(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, logger, err := loadServerConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	// With PREFETCH unset, each tenant's prefetch is this many per worker.
	prefetch := slog.Int("prefetch", cfg.Prefetch)
	if cfg.Prefetch == 0 {
		prefetch = slog.Int("prefetch_per_worker", actors.DefaultPrefetch(1, cfg.BatchSize))
	}
	logger.Info("server: starting", "http_addr", cfg.HTTPAddr, "batch_size", cfg.BatchSize,
		"batch_timeout", cfg.BatchTimeout, "default_worker_count", cfg.DefaultWorkerCount,
		"database_max_conns", cfg.DatabaseMaxConns, "group_commit", cfg.GroupCommit, prefetch)
	apiCfg, err := apiConfig(cfg, logger)
	if err != nil {
		return err
	}

	// work bounds every database and broker call of the actors and of the
	// HTTP requests. It outlives ctx so that workers can flush during a
	// graceful shutdown, and ends at the shutdown deadline.
	work, cancelWork := context.WithCancel(context.Background())
	defer cancelWork()

	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	// After a failed start, the deferred call closes the services without a
	// bound. After a shutdown it does nothing, because shutdown closed them
	// within its deadline.
	var services closers
	defer services.closeWithin(time.Time{})
	store, err := openStore(ctx, cfg, logger, m)
	if err != nil {
		return stoppedWhileStarting(ctx, logger, err)
	}
	services.add("database", store.Close)

	broker, err := dialBroker(ctx, cfg, logger, m)
	if err != nil {
		return stoppedWhileStarting(ctx, logger, err)
	}
	services.add("broker", func() { _ = broker.Close() })

	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return logger.With("component", "protoactor")
	}))
	deps := &actors.Deps{
		Store:   store,
		Broker:  broker,
		Metrics: m,
		Logger:  logger,
		Context: work,
		Options: actors.Options{
			BatchSize:       cfg.BatchSize,
			BatchTimeout:    cfg.BatchTimeout,
			Prefetch:        cfg.Prefetch,
			MaxPayloadBytes: api.DefaultMaxPayloadBytes,
			DrainTimeout:    cfg.ShutdownTimeout,
		},
	}
	sup, err := startSupervisor(ctx, system, store, broker, deps, cfg, logger)
	if err != nil {
		return err
	}

	// requests bounds the HTTP requests. Shutdown cancels it at the end of
	// their share of the budget, before the work ends.
	requests, cancelRequests := context.WithCancel(work)
	defer cancelRequests()
	srv, err := newHTTPServer(requests, cfg.HTTPAddr, apiCfg, sup, broker, store, reg, logger)
	if err != nil {
		return err
	}
	debugSrv, err := startDebugServer(cfg.DebugAddr, logger)
	if err != nil {
		return fmt.Errorf("listen on DEBUG_ADDR %s: %w", cfg.DebugAddr, err)
	}
	if debugSrv != nil {
		defer debugSrv.Close()
	}
	listener, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(listener) }()
	logger.Info("server: ready", "http_addr", listener.Addr().String())

	select {
	case <-ctx.Done():
		logger.Info("server: shutting down", "reason", context.Cause(ctx), "timeout", cfg.ShutdownTimeout)
	case err := <-serveErr:
		logger.Error("server: HTTP server failed; shutting down", "err", err)
	}
	return shutdown(cfg, srv, cancelRequests, sup, system, cancelWork, &services, logger)
}

// closeGrace is how long the database pool and the broker connections may
// take to close once the shutdown deadline has passed. By then every query
// and broker call has been cancelled. What can still hold them is pgx
// (v5.13), which keeps a cancelled query's connection for 100 ms after it
// has sent the cancel request, and the AMQP close handshakes. The process does not
// wait for more: the broker requeues every delivery that was not acked,
// and a delivery is acked only after its transaction has committed.
const closeGrace = 100 * time.Millisecond

// requestCancelGrace is how long the HTTP requests cancelled at the end
// of their share of the shutdown get to write their error response before
// their connections are closed. A query cancelled by its context returns
// only about 100 ms after pgx (v5.13) has sent the cancel request.
const requestCancelGrace = 250 * time.Millisecond

// httpShare is the part of ShutdownTimeout that the HTTP requests in
// flight get to finish: half of it, so that a hung request or a slow
// client cannot hold the process to its deadline. The tenants drain
// meanwhile and may use the whole of it.
func httpShare(shutdownTimeout time.Duration) time.Duration { return shutdownTimeout / 2 }

// shutdown stops taking requests, stops the consumers, lets the workers
// flush and ack, and closes everything, all within ShutdownTimeout and
// closeGrace. What was not acked stays in the queues for the next start.
// HTTP requests get httpShare of the budget and are then cancelled, which
// does not fail the shutdown: it returns an error only when the tenants
// did not drain in time.
func shutdown(cfg config.Config, srv *http.Server, cancelRequests context.CancelFunc, sup *supervisor.Supervisor,
	system *actor.ActorSystem, cancelWork context.CancelFunc, services *closers, logger *slog.Logger) error {
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	deadline := time.AfterFunc(cfg.ShutdownTimeout, cancelWork)
	defer deadline.Stop()

	// The tenants drain while the HTTP requests finish. A publish needs
	// the tenant's queue and the broker's publish connection, not its
	// actor: both stay until the end, so a publish in flight still gets
	// its 202 after the broker's confirm, and its messages wait in the
	// queue for the next start.
	tenantsStopped := make(chan error, 1)
	go func() { tenantsStopped <- sup.Shutdown(ctx) }()
	share := httpShare(cfg.ShutdownTimeout)
	stopHTTP(srv, cancelRequests, share, min(requestCancelGrace, cfg.ShutdownTimeout-share), logger)

	var errs []error
	if err := <-tenantsStopped; err != nil {
		errs = append(errs, fmt.Errorf("stop tenants: %w", err))
	}
	system.Shutdown()

	// Whatever still runs is abandoned now, so that no query or broker call
	// keeps the pool or a connection from closing.
	cancelWork()
	closeBy := started.Add(cfg.ShutdownTimeout)
	if now := time.Now(); now.After(closeBy) {
		closeBy = now
	}
	closeBy = closeBy.Add(closeGrace)
	if open := services.closeWithin(closeBy); len(open) > 0 {
		logger.Warn("server: exiting without waiting for connections to close", "still_closing", open)
	}

	if err := errors.Join(errs...); err != nil {
		logger.Error("server: shutdown incomplete", "err", err, "elapsed", time.Since(started))
		return err
	}
	logger.Info("server: stopped", "elapsed", time.Since(started))
	return nil
}

// stopHTTP closes the listener at once and waits up to share for the
// requests in flight. Then it cancels those still running, gives them
// grace to write an error response, and closes their connections, which
// also ends a handler that waits for a slow client.
func stopHTTP(srv *http.Server, cancelRequests context.CancelFunc, share, grace time.Duration, logger *slog.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Shutdown(ctx) }()
	logStopped := func(err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			logger.Warn("server: HTTP listener did not close cleanly", "err", err)
		}
	}

	timer := time.NewTimer(share)
	defer timer.Stop()
	select {
	case err := <-stopped:
		logStopped(err)
		return
	case <-timer.C:
	}
	logger.Warn("server: HTTP requests still running after their share of the shutdown; cancelling them",
		"http_share", share)
	cancelRequests()
	timer.Reset(grace)
	select {
	case err := <-stopped:
		logStopped(err)
		return
	case <-timer.C:
	}
	_ = srv.Close()
	// Shutdown would notice the closed connections only at its next poll.
	cancel()
	logStopped(<-stopped)
}

// closers closes the services that serve opened.
type closers struct {
	names  []string
	fns    []func()
	closed bool
}

func (c *closers) add(name string, fn func()) {
	c.names = append(c.names, name)
	c.fns = append(c.fns, fn)
}

// closeWithin closes every service at once, each in a goroutine of its
// own, and waits for them until limit, or for as long as they take when
// limit is zero. It returns the names of those still closing at the
// limit. Only the first call closes anything, so that a deferred call
// after shutdown does not wait for what shutdown gave up on.
func (c *closers) closeWithin(limit time.Time) []string {
	if c.closed {
		return nil
	}
	c.closed = true
	done := make([]chan struct{}, len(c.fns))
	for i, fn := range c.fns {
		done[i] = make(chan struct{})
		go func() {
			defer close(done[i])
			fn()
		}()
	}
	var expired <-chan time.Time // nil, so never ready, without a limit
	if !limit.IsZero() {
		timer := time.NewTimer(time.Until(limit))
		defer timer.Stop()
		expired = timer.C
	}
	var open []string
	timedOut := false
	for i, d := range done {
		if !timedOut {
			select {
			case <-d:
				continue
			case <-expired:
				timedOut = true
			}
		}
		select {
		case <-d:
		default:
			open = append(open, c.names[i])
		}
	}
	return open
}

// openStore connects to PostgreSQL, waiting for it while it is down, and
// applies the migrations. m receives the insert transaction metrics.
func openStore(ctx context.Context, cfg config.Config, logger *slog.Logger, m *metrics.Metrics) (*persistence.Postgres, error) {
	var store *persistence.Postgres
	err := retryStart(ctx, logger, "database", func() error {
		var err error
		store, err = persistence.Open(ctx, cfg.DatabaseURL, logger,
			persistence.WithMaxConns(int32(cfg.DatabaseMaxConns)),
			persistence.WithGroupCommit(cfg.GroupCommit),
			persistence.WithTransactionObserver(func(n int) { m.TransactionBatches.Observe(float64(n)) }))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := store.Migrate(ctx); err != nil {
		store.Close()
		return nil, fmt.Errorf("migrate database: %w", err)
	}
	return store, nil
}

func dialBroker(ctx context.Context, cfg config.Config, logger *slog.Logger, m *metrics.Metrics) (*transport.Broker, error) {
	hooks := transport.Hooks{
		OnConnected:    func() { m.BrokerConnected.Set(1) },
		OnDisconnected: func(error) { m.BrokerConnected.Set(0) },
		OnReconnect:    func() { m.BrokerReconnect.Inc() },
	}
	var broker *transport.Broker
	err := retryStart(ctx, logger, "broker", func() error {
		var err error
		broker, err = transport.Dial(ctx, transport.Config{URL: cfg.RabbitMQURL}, logger, hooks)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	m.BrokerConnected.Set(1)
	return broker, nil
}

// stoppedWhileStarting returns nil when err came from a SIGTERM or SIGINT
// that arrived while the server waited for its database or broker: that is
// a requested stop, not a failure.
func stoppedWhileStarting(ctx context.Context, logger *slog.Logger, err error) error {
	if ctx.Err() == nil {
		return err
	}
	logger.Info("server: stopped before it was ready", "reason", context.Cause(ctx), "last_err", err)
	return nil
}

// retryStart calls connect until it succeeds or ctx ends, so the server can
// start before its database or broker.
func retryStart(ctx context.Context, logger *slog.Logger, what string, connect func() error) error {
	wait := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := connect()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		logger.Warn("server: "+what+" not reachable; retrying", "err", err, "attempt", attempt, "wait", wait)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

func startSupervisor(ctx context.Context, system *actor.ActorSystem, store *persistence.Postgres,
	broker *transport.Broker, deps *actors.Deps, cfg config.Config, logger *slog.Logger) (*supervisor.Supervisor, error) {
	started := time.Now()
	sup, err := supervisor.Start(ctx, system, store, broker, deps, supervisor.Config{
		SyncInterval:   cfg.TenantSyncInterval,
		RequestTimeout: cfg.ShutdownTimeout + 30*time.Second,
	})
	if err != nil {
		return nil, err
	}
	logger.Info("server: tenants started", "elapsed", time.Since(started))
	return sup, nil
}

// newHTTPServer builds the API server. Its requests run under base, so
// that they end when shutdown cancels them and give back their pooled
// connections. Otherwise a query waiting for a lock keeps the pool from
// closing until its request times out.
func newHTTPServer(base context.Context, addr string, apiCfg api.Config, sup *supervisor.Supervisor,
	broker *transport.Broker, store *persistence.Postgres, reg *prometheus.Registry,
	logger *slog.Logger) (*http.Server, error) {
	checks := []api.ReadinessCheck{
		{Name: "database", Check: store.Ping},
		{Name: "broker", Check: func(context.Context) error {
			if !broker.Connected() {
				return transport.ErrUnavailable
			}
			return nil
		}},
		{Name: "consumers", Check: func(context.Context) error { return sup.Ready() }},
	}
	handler, err := api.NewHandler(apiCfg, tenantService{sup}, publisher{broker: broker, sup: sup}, store,
		checks, reg, reg, logger, api.WithDeadLetters(broker))
	if err != nil {
		return nil, err
	}
	srv := api.NewServer(addr, handler)
	srv.BaseContext = func(net.Listener) context.Context { return base }
	return srv, nil
}

// apiConfig builds the API settings: it reads JWT_PUBLIC_KEYS_FILE and
// picks the cursor key. It logs the kid and algorithm of every public key,
// so an operator can see the kids that tokens must carry.
func apiConfig(cfg config.Config, logger *slog.Logger) (api.Config, error) {
	apiCfg := api.Config{
		JWTSecret:          []byte(cfg.JWTSecret),
		Issuer:             cfg.JWTIssuer,
		Audience:           cfg.JWTAudience,
		DefaultWorkerCount: cfg.DefaultWorkerCount,
		MaxWorkerCount:     cfg.MaxWorkerCount,
		PublishRateLimit:   cfg.PublishRateLimit,
		PublishRateBurst:   cfg.PublishRateBurst,
		CursorKey:          []byte(cfg.CursorSecret),
	}
	if cfg.JWTPublicKeysFile != "" {
		keys, skipped, err := api.LoadPublicKeys(cfg.JWTPublicKeysFile)
		if err != nil {
			return apiCfg, usageError{fmt.Errorf("invalid JWT_PUBLIC_KEYS_FILE: %w", err)}
		}
		for _, reason := range skipped {
			logger.Warn("server: public key skipped", "file", cfg.JWTPublicKeysFile, "reason", reason)
		}
		for _, k := range keys {
			logger.Info("server: public key loaded", "kid", k.ID, "alg", k.Algorithm)
		}
		apiCfg.PublicKeys = keys
	}

	if len(apiCfg.CursorKey) == 0 && len(apiCfg.JWTSecret) == 0 {
		apiCfg.CursorKey = make([]byte, 32)
		_, _ = rand.Read(apiCfg.CursorKey) // crypto/rand.Read never fails since Go 1.24.
		logger.Warn("server: no CURSOR_SECRET or JWT_SECRET; pagination cursors use a random key " +
			"and stop working at the next restart; set CURSOR_SECRET to keep them valid")
	}
	if cfg.PublishRateLimit > 0 {
		burst := "default"
		if cfg.PublishRateBurst > 0 {
			burst = strconv.Itoa(cfg.PublishRateBurst)
		}
		logger.Info("server: publish rate limit", "messages_per_second", cfg.PublishRateLimit, "burst", burst)
	}
	return apiCfg, nil
}
