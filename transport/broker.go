package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Hooks are called on connection state changes, from the Broker's own
// goroutines and one at a time. All are optional. A hook may call Broker
// methods other than Close, and must return soon because it delays the
// re-dial loop.
type Hooks struct {
	// OnConnected is called when both connections are up: after Dial and
	// after every re-dial that ends an outage.
	OnConnected func()

	// OnDisconnected is called when either connection is lost while both
	// were up, with the reason.
	OnDisconnected func(err error)

	// OnReconnect is called after every successful re-dial of the consume
	// connection, whose channels and consumers are gone then. Consumers
	// have to be re-created.
	OnReconnect func()
}

// Broker owns two AMQP connections, one for consuming and one for
// publishing, and re-dials each with exponential backoff and jitter until
// Close. It declares ExchangeName on every (re)connect. A Broker is safe
// for concurrent use.
type Broker struct {
	cfg    Config
	logger *slog.Logger
	hooks  Hooks

	consume *link
	publish *link
	pool    *pool

	ctx    context.Context // ends at Close
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // goroutines that Close waits for

	mu          sync.Mutex
	closed      bool
	reconnected chan struct{}

	hookMu    sync.Mutex // serializes state changes and hooks
	connected bool       // state last reported to the hooks
}

// errBrokerClosed is the cause of the Broker's context after Close.
var errBrokerClosed = errors.New("broker closed")

// Dial opens both connections and declares the exchange. It retries failed
// dials with backoff until ctx ends, except when the broker rejects the
// credentials, the virtual host or the exchange declaration.
func Dial(ctx context.Context, cfg Config, logger *slog.Logger, hooks Hooks) (*Broker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	b := &Broker{
		cfg:         cfg,
		logger:      logger,
		hooks:       hooks,
		consume:     newLink("consume", cfg, logger),
		publish:     newLink("publish", cfg, logger),
		reconnected: make(chan struct{}),
	}
	b.ctx, b.cancel = context.WithCancelCause(context.Background())
	b.pool = newPool(b.publish, b.ctx.Done(), cfg.PublishChannels)

	if err := b.dialAll(ctx); err != nil {
		b.cancel(errBrokerClosed)
		return nil, err
	}

	logger.Info("transport: connected", "broker", redactedURL(cfg.URL),
		"publish_channels", cfg.PublishChannels)
	b.stateChanged(nil, false)
	return b, nil
}

// dialAll dials both links and starts watching them.
func (b *Broker) dialAll(ctx context.Context) error {
	links := []*link{b.consume, b.publish}
	conns := make([]*amqp.Connection, len(links))
	for i, l := range links {
		conn, _, err := l.dialRetry(ctx, false)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return err
		}
		conns[i] = conn
	}

	for i, l := range links {
		l.set(conns[i])
		b.wg.Add(1)
		go b.watch(l, conns[i])
	}
	return nil
}

// watch re-dials l each time its connection closes, until Close.
func (b *Broker) watch(l *link, conn *amqp.Connection) {
	defer b.wg.Done()

	for {
		closes := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
		reason := l.waitDown(b.ctx, closes, blocks)
		if b.ctx.Err() != nil {
			return
		}

		l.set(nil)
		l.logger.Warn("transport: connection lost", "err", reason)
		b.stateChanged(reason, false)

		next, attempts, err := l.dialRetry(b.ctx, true)
		if err != nil {
			return // only Close ends a re-dial
		}
		if !l.set(next) {
			next.Close()
			return
		}
		conn = next
		l.logger.Info("transport: reconnected", "attempts", attempts)
		b.stateChanged(nil, l == b.consume)
	}
}

// stateChanged reports a change of either link to the hooks. redialled is
// true after a re-dial of the consume connection.
func (b *Broker) stateChanged(reason error, redialled bool) {
	b.hookMu.Lock()
	defer b.hookMu.Unlock()

	now := b.Connected()
	was := b.connected
	b.connected = now

	switch {
	case was && !now && b.hooks.OnDisconnected != nil:
		b.callHook("OnDisconnected", func() { b.hooks.OnDisconnected(reason) })
	case !was && now && b.hooks.OnConnected != nil:
		b.callHook("OnConnected", b.hooks.OnConnected)
	}
	if !redialled {
		return
	}
	if b.hooks.OnReconnect != nil {
		b.callHook("OnReconnect", b.hooks.OnReconnect)
	}
	b.mu.Lock()
	close(b.reconnected)
	b.reconnected = make(chan struct{})
	b.mu.Unlock()
}

// callHook runs a hook and logs instead of crashing when it panics.
func (b *Broker) callHook(name string, hook func()) {
	defer func() {
		if r := recover(); r != nil {
			b.logger.Error("transport: hook panicked", "hook", name, "panic", r,
				"stack", string(debug.Stack()))
		}
	}()
	hook()
}

// Connected reports whether both connections are up.
func (b *Broker) Connected() bool {
	return !b.isClosed() && b.consume.up() && b.publish.up()
}

// Reconnected returns a channel that is closed at the next successful
// re-dial of the consume connection, after the hooks for it returned. Call
// it again after it fires.
func (b *Broker) Reconnected() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reconnected
}

// Close closes both connections, which closes every Consumer and makes
// later calls fail with ErrUnavailable. It waits for the Broker's
// goroutines and is safe to call more than once.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()

	b.cancel(errBrokerClosed)
	err := errors.Join(b.consume.close(), b.publish.close())
	b.wg.Wait()

	b.logger.Info("transport: closed")
	return err
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// goTracked starts fn in a goroutine that Close waits for. It returns false
// without starting it after Close.
func (b *Broker) goTracked(fn func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		fn()
	}()
	return true
}

// bounded runs fn in a tracked goroutine and waits for it until ctx ends,
// because the AMQP library's calls take no context. When ctx ends first,
// bounded returns an error wrapping ErrUnavailable, and abandon (if not nil)
// is called after fn succeeds, to release what fn opened.
func (b *Broker) bounded(ctx context.Context, op string, fn func() error, abandon func()) error {
	var (
		mu     sync.Mutex
		gaveUp bool
		result = make(chan error, 1)
	)
	started := b.goTracked(func() {
		err := fn()
		mu.Lock()
		defer mu.Unlock()
		if gaveUp {
			if err == nil && abandon != nil {
				abandon()
			}
			return
		}
		result <- err
	})
	if !started {
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, errBrokerClosed)
	}

	select {
	case err := <-result:
		return err
	case <-ctx.Done():
	}

	mu.Lock()
	defer mu.Unlock()
	gaveUp = true
	select {
	case err := <-result: // fn finished just in time
		return err
	default:
		return timedOut(ctx, op)
	}
}
