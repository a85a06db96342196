package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// defaultBaselineWorkers matches the server's default worker_count.
const defaultBaselineWorkers = 3

// baseline is a running bare consumer: what a baseline puts in place of the
// server.
type baseline struct {
	c      *Config
	ids    []string
	broker *transport.Broker     // declares and deletes the queues, and consumes
	extra  []*transport.Broker   // further consume connections of -connections
	store  *persistence.Postgres // nil for the broker baseline
	wg     sync.WaitGroup        // consumer goroutines
	lost   chan error            // receives why a consumer ended early
}

// runBaseline runs the load of c through c.Baseline's consumer, with the
// same publishers and the same verification as against the server.
func runBaseline(ctx context.Context, c *Config, env *runEnv) (*Report, error) {
	b := &baseline{c: c, ids: c.tenantIDs(), lost: make(chan error, 1)}
	defer b.close() // also what a failed connect opened
	if err := b.connect(ctx); err != nil {
		return nil, err
	}

	prefetch, goroutines := b.consumers()
	rep := &Report{Mode: c.Baseline, Via: viaAMQP, Phase: phaseAll, PayloadBytes: c.PayloadBytes, Rate: c.Rate,
		Workers: goroutines, Prefetch: prefetch, Connections: c.Connections, Backlog: c.Backlog}
	started := time.Now()
	defer b.deleteTenants(env)
	if err := b.createTenants(ctx); err != nil {
		return nil, err
	}
	rep.SetupSeconds = time.Since(started).Seconds()

	consumeCtx, stopConsumers := context.WithCancel(ctx)
	defer b.wg.Wait()
	defer stopConsumers()
	var (
		src rowSource
		err error
	)
	if !c.Backlog {
		if src, err = b.start(consumeCtx, env); err != nil {
			return nil, err
		}
	}

	led := newLedger(c.Tenants)
	pubs, closePubs, err := newAMQPPublishers(c, b.ids)
	if err != nil {
		return nil, err
	}
	prog := env.bars.newProgress("publishing", plannedTotal(c))
	res := publishAll(ctx, c, pubs, led, prog)
	prog.finish()
	closePubs()

	w := window{publishStart: res.started, publishEnd: res.finished, storeStart: res.started}
	if c.Backlog {
		// The drain starts when the consumers do.
		w.storeStart = time.Now()
		if src, err = b.start(consumeCtx, env); err != nil {
			return nil, errors.Join(res.err, err)
		}
	}
	verr := waitAndVerify(ctx, c, src, led, rep, w, env, b.lost)
	return rep, errors.Join(res.err, verr)
}

// connect dials the broker and, unless the baseline needs no database,
// opens and migrates the database.
func (b *baseline) connect(ctx context.Context) error {
	broker, err := transport.Dial(ctx, transport.Config{URL: b.c.RabbitMQ, ConnectionName: "loadtest-baseline"},
		nil, transport.Hooks{})
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	b.broker = broker
	for i := 1; i < b.c.Connections; i++ {
		extra, err := transport.Dial(ctx, transport.Config{URL: b.c.RabbitMQ,
			ConnectionName: fmt.Sprintf("loadtest-baseline-%d", i)}, nil, transport.Hooks{})
		if err != nil {
			return fmt.Errorf("connect to RabbitMQ: %w", err)
		}
		b.extra = append(b.extra, extra)
	}
	if b.c.Baseline == baselineBroker {
		return nil
	}

	store, err := persistence.Open(ctx, b.c.DatabaseURL, nil)
	if err != nil {
		return fmt.Errorf("open the database: %w", err)
	}
	b.store = store
	if err := store.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate the database: %w", err)
	}
	return nil
}

func (b *baseline) close() {
	if b.store != nil {
		b.store.Close()
	}
	for _, extra := range b.extra {
		_ = extra.Close()
	}
	if b.broker != nil {
		_ = b.broker.Close()
	}
}

// consumer returns the connection that consumes tenant i.
func (b *baseline) consumer(i int) *transport.Broker {
	if n := i % (len(b.extra) + 1); n > 0 {
		return b.extra[n-1]
	}
	return b.broker
}

// createTenants creates each tenant's partition (unless the baseline needs
// no database) and its queues.
func (b *baseline) createTenants(ctx context.Context) error {
	for _, id := range b.ids {
		if b.store != nil {
			t := persistence.Tenant{ID: id, Name: "loadtest " + id, WorkerCount: b.workers()}
			if _, err := b.store.CreateTenant(ctx, t); err != nil && !errors.Is(err, persistence.ErrTenantExists) {
				return fmt.Errorf("create tenant %s: %w", id, err)
			}
		}
		if err := b.broker.DeclareTenant(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// deleteTenants removes the tenants' queues and partitions unless -keep.
func (b *baseline) deleteTenants(env *runEnv) {
	if b.c.Keep {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for _, id := range b.ids {
		if err := b.broker.DeleteTenant(ctx, id); err != nil {
			fmt.Fprintf(env.stderr, "loadtest: %v\n", err)
		}
		if b.store == nil {
			continue
		}
		if err := b.store.DeleteTenant(ctx, id); err != nil && !errors.Is(err, persistence.ErrTenantNotFound) {
			fmt.Fprintf(env.stderr, "loadtest: delete tenant %s: %v\n", id, err)
		}
	}
}

func (b *baseline) workers() int {
	if b.c.Workers > 0 {
		return b.c.Workers
	}
	return defaultBaselineWorkers
}

// consumers returns the prefetch count of each tenant's consumer and the
// number of goroutines that handle its deliveries.
func (b *baseline) consumers() (prefetch, goroutines int) {
	prefetch, goroutines = min(b.workers()*b.c.BatchSize, transport.MaxPrefetch), b.workers()
	if b.c.Baseline == baselineNaive {
		prefetch, goroutines = 1, 1
	}
	if b.c.Prefetch > 0 {
		prefetch = b.c.Prefetch
	}
	return prefetch, goroutines
}

// start starts the consumers of b.c.Baseline and returns where their
// results can be read.
func (b *baseline) start(ctx context.Context, env *runEnv) (rowSource, error) {
	var handler func(ctx context.Context, tenant int, deliveries <-chan amqp.Delivery)
	prefetch, goroutines := b.consumers()
	var src rowSource
	switch b.c.Baseline {
	case baselineNaive:
		handler = b.consumeNaive
	case baselineBatch:
		handler = b.consumeBatches
	case baselineBroker:
		mem := newMemorySource(len(b.ids))
		handler, src = func(ctx context.Context, tenant int, d <-chan amqp.Delivery) {
			consumeOnly(ctx, mem, tenant, d)
		}, mem
	}
	if src == nil {
		src = &dbSource{pool: b.store.Pool(), tenants: b.ids}
	}

	for i, id := range b.ids {
		cons, err := b.consumer(i).Consume(ctx, id, prefetch)
		if err != nil {
			return nil, err
		}
		// Like an actor's mailbox, the buffer lets deliveries pile up while
		// the goroutines insert, so the next batch is waiting for them.
		mailbox := make(chan amqp.Delivery, prefetch)
		b.wg.Go(func() {
			pump(ctx, cons.Deliveries(), mailbox)
			if ctx.Err() == nil {
				b.consumerLost(fmt.Errorf("consumer of tenant %s ended: %w", id, cons.Err()))
			}
		})
		for range goroutines {
			b.wg.Go(func() { handler(ctx, i, mailbox) })
		}
		b.wg.Go(func() {
			<-ctx.Done()
			if err := cons.Close(); err != nil {
				fmt.Fprintf(env.stderr, "loadtest: %v\n", err)
			}
		})
	}
	return src, nil
}

// consumerLost reports a consumer that ended before the run did. The
// baseline does not consume again, unlike the server, so the run fails.
func (b *baseline) consumerLost(err error) {
	select {
	case b.lost <- err:
	default: // one reason is enough
	}
}

// pump moves deliveries into mailbox until they end or ctx ends, then
// closes mailbox.
func pump(ctx context.Context, deliveries <-chan amqp.Delivery, mailbox chan<- amqp.Delivery) {
	defer close(mailbox)
	for d := range deliveries {
		select {
		case mailbox <- d:
		case <-ctx.Done():
			return
		}
	}
}

// message converts a delivery the way the server's workers do.
func message(d *amqp.Delivery) persistence.Message {
	return persistence.Message{MessageID: d.MessageId, Payload: d.Body, PublishedAt: deliveryPublishedAt(d)}
}

// deliveryPublishedAt reads the x-published-at header, or else the
// timestamp property.
func deliveryPublishedAt(d *amqp.Delivery) time.Time {
	if s, ok := d.Headers[publishedAtHeader].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t
		}
	}
	return d.Timestamp
}

// settle acks the deliveries that results mark as stored or duplicate,
// rejects those the database rejected and requeues all when err is set,
// because then nothing was stored.
func settle(ds []amqp.Delivery, results []persistence.Result, err error) {
	for i := range ds {
		if err == nil && results[i].Outcome != persistence.Rejected {
			_ = ds[i].Ack(false)
		} else {
			_ = ds[i].Nack(false, err != nil)
		}
	}
}
