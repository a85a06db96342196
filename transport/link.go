package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// closeTimeout bounds the connection.close handshake in Broker.Close.
const closeTimeout = 5 * time.Second

// link is one AMQP connection of a Broker, the consume or the publish one.
// It holds the current connection, nil while the link is down.
type link struct {
	role   string // "consume" or "publish"
	name   string // connection_name client property
	cfg    Config
	logger *slog.Logger

	mu      sync.Mutex
	conn    *amqp.Connection
	closed  bool
	blocked atomic.Pointer[string] // reason while the broker blocks this connection
}

func newLink(role string, cfg Config, logger *slog.Logger) *link {
	name := "messaging-" + role
	if cfg.ConnectionName != "" {
		name += "-" + cfg.ConnectionName
	}
	return &link{role: role, name: name, cfg: cfg, logger: logger.With("connection", role)}
}

// current returns the open connection or an error wrapping ErrUnavailable.
func (l *link) current() (*amqp.Connection, error) {
	l.mu.Lock()
	conn := l.conn
	l.mu.Unlock()

	if conn == nil || conn.IsClosed() {
		return nil, fmt.Errorf("%w: %s connection is down", ErrUnavailable, l.role)
	}
	return conn, nil
}

func (l *link) up() bool {
	_, err := l.current()
	return err == nil
}

// set makes conn the current connection, or nil for down. It returns false
// when the link was closed meanwhile, and then the caller must close conn.
func (l *link) set(conn *amqp.Connection) bool {
	l.mu.Lock()
	defer l.mu.Unlock()

	if l.closed {
		return false
	}
	l.conn = conn
	if conn == nil {
		l.blocked.Store(nil)
	}
	return true
}

// close marks the link closed and closes its connection, if any.
func (l *link) close() error {
	l.mu.Lock()
	conn := l.conn
	l.conn = nil
	l.closed = true
	l.mu.Unlock()

	if conn == nil || conn.IsClosed() {
		return nil
	}
	if err := conn.CloseDeadline(time.Now().Add(closeTimeout)); err != nil && !errors.Is(err, amqp.ErrClosed) {
		return fmt.Errorf("close %s connection: %w", l.role, err)
	}
	return nil
}

// dial makes one attempt to open the connection and declare the exchange.
// Cancelling ctx aborts the TCP connect and the handshake.
func (l *link) dial(ctx context.Context) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(l.name)

	var stop func() bool
	config := amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: l.cfg.DialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The library clears this deadline when the handshake is done.
			if err := c.SetDeadline(time.Now().Add(l.cfg.DialTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			stop = context.AfterFunc(ctx, func() { c.Close() })
			return c, nil
		},
	}

	conn, err := amqp.DialConfig(l.cfg.URL, config)
	if stop != nil && !stop() {
		// ctx ended during the handshake and the socket is closed.
		if conn != nil {
			conn.Close()
		}
		return nil, context.Cause(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", redactedURL(l.cfg.URL), err)
	}

	if err := declareExchange(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// declareExchange declares ExchangeName on a channel of its own, so that a
// conflict closes only that channel.
func declareExchange(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", classify(err))
	}
	defer closeChannel(ch)

	if err := ch.ExchangeDeclare(ExchangeName, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ExchangeName, classifyDeclare(err))
	}
	return nil
}

// dialRetry dials until it succeeds or ctx ends, with waits that follow
// backoff. For the first dial (redial false) it also stops when the broker
// rejects the credentials, the virtual host or the exchange, which no retry
// would fix. A re-dial keeps trying then, so that the Broker recovers once
// an operator fixed the broker. A re-dial also waits before its first
// attempt, so a connection that dies right after each dial is not
// re-dialled in a tight loop. dialRetry returns the number of attempts.
func (l *link) dialRetry(ctx context.Context, redial bool) (*amqp.Connection, int, error) {
	waits := 0
	nextWait := func() time.Duration {
		waits++
		return backoff(waits, l.cfg.ReconnectMin, l.cfg.ReconnectMax)
	}

	var wait time.Duration
	if redial {
		wait = nextWait()
		l.logger.Info("transport: re-dialling", "attempt", 1, "wait", wait)
	}
	for attempt := 1; ; attempt++ {
		if err := sleep(ctx, wait); err != nil {
			return nil, attempt - 1, fmt.Errorf("dial %s connection: %w", l.role, err)
		}

		conn, err := l.dial(ctx)
		switch {
		case err == nil:
			return conn, attempt, nil
		case ctx.Err() != nil:
			return nil, attempt, fmt.Errorf("dial %s connection: %w (last error: %w)",
				l.role, context.Cause(ctx), err)
		case !redial && permanent(err):
			return nil, attempt, fmt.Errorf("dial %s connection: %w", l.role, err)
		}

		wait = nextWait()
		l.logger.Warn("transport: dial failed, retrying",
			"attempt", attempt, "wait", wait, "err", err)
	}
}

// sleep waits for d. It returns the cause of ctx when ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// permanent reports whether a dial error would recur on every attempt.
func permanent(err error) bool {
	if errors.Is(err, ErrTopologyConflict) {
		return true
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed
	}
	return false
}

// waitDown blocks until conn closes and returns the reason, or returns nil
// when ctx ends first. It logs when the broker blocks or unblocks the
// connection (a resource alarm).
func (l *link) waitDown(ctx context.Context, closes <-chan *amqp.Error, blocks <-chan amqp.Blocking) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			l.setBlocked(b)
		case e, ok := <-closes:
			if !ok || e == nil {
				return errors.New("connection closed")
			}
			return e
		}
	}
}

func (l *link) setBlocked(b amqp.Blocking) {
	if b.Active {
		reason := b.Reason
		l.blocked.Store(&reason)
		l.logger.Warn("transport: broker blocked the connection", "reason", reason)
		return
	}
	l.blocked.Store(nil)
	l.logger.Info("transport: broker unblocked the connection")
}

// blockedErr returns an error wrapping ErrUnavailable while the broker
// blocks this connection.
func (l *link) blockedErr() error {
	if reason := l.blocked.Load(); reason != nil {
		return fmt.Errorf("%w: broker blocks the %s connection: %s", ErrUnavailable, l.role, *reason)
	}
	return nil
}
