// Package actors holds the tenant actor and its worker actors: the tenant
// actor owns one tenant's RabbitMQ consumer and routes each delivery to one of
// worker_count workers, which batch the messages into the tenant's partition
// and ack them only after the batch has committed.
package actors

import (
	"context"
	"log/slog"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/metrics"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// Broker is the part of the RabbitMQ transport that the actors use.
type Broker interface {
	Consume(ctx context.Context, tenantID string, prefetch int) (*transport.Consumer, error)
	DeclareTenant(ctx context.Context, tenantID string) error
	// Reconnected returns a channel closed at the next re-dial of the
	// consume connection.
	Reconnected() <-chan struct{}
	DeadLetter(ctx context.Context, tenantID string, d amqp.Delivery, reason, detail string, attempts int) error
}

// Store is the part of the database that the workers use.
type Store interface {
	InsertBatch(ctx context.Context, tenantID string, msgs []persistence.Message) ([]persistence.Result, error)
}

// Options tune the workers. Zero fields take the defaults named below.
type Options struct {
	// BatchSize flushes a batch at this many messages, default 500.
	BatchSize int
	// Prefetch is the prefetch count of the tenant's consumer, at most
	// 65535. Default 0: two full batches per worker.
	Prefetch int
	// BatchTimeout is the longest a message waits in a batch, default 20ms.
	// A worker flushes sooner, as soon as no more deliveries wait for it.
	BatchTimeout time.Duration
	// MaxPayloadBytes is the largest body stored; a larger one is
	// dead-lettered as too_large. Default 256 KiB.
	MaxPayloadBytes int
	// MaxAttempts is how many times a message may take part in a failed
	// batch or crash a worker before it is dead-lettered as max_attempts,
	// default 5.
	MaxAttempts int
	// DrainTimeout bounds how long a tenant waits for its workers to flush
	// when it stops or changes its consumer, default 30s.
	DrainTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts of a batch
	// after a transient database error, default 50ms and 5s.
	RetryMin, RetryMax time.Duration
	// RestartMin and RestartMax bound the backoff before a failed worker is
	// restarted, default 100ms and 10s.
	RestartMin, RestartMax time.Duration
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.BatchTimeout <= 0 {
		o.BatchTimeout = 20 * time.Millisecond
	}
	if o.MaxPayloadBytes <= 0 {
		o.MaxPayloadBytes = 256 << 10
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 50 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Second
	}
	if o.RestartMin <= 0 {
		o.RestartMin = 100 * time.Millisecond
	}
	if o.RestartMax <= 0 {
		o.RestartMax = 10 * time.Second
	}
	return o
}

// Deps are the services and settings shared by every tenant actor.
type Deps struct {
	Store   Store
	Broker  Broker
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	Options Options
	// Context bounds every database and broker call the actors make. Cancel
	// it only after a graceful stop, to abandon work at the hard deadline.
	// Each tenant actor also ends its own and its workers' calls when it
	// stops.
	Context context.Context
}
