package main

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/persistence"
)

// consumeBatches is one of a tenant's batching goroutines, which share the
// tenant's consumer. Like the server's workers, it flushes a batch when no
// delivery is waiting, at -batch-size messages or -batch-timeout after the
// batch's first message, and it acks after the commit. It has no actors,
// metrics or API around it.
func (b *baseline) consumeBatches(ctx context.Context, tenant int, deliveries <-chan amqp.Delivery) {
	id := b.ids[tenant]
	batch := make([]amqp.Delivery, 0, b.c.BatchSize)
	msgs := make([]persistence.Message, 0, b.c.BatchSize)
	var opened time.Time
	flush := func() {
		msgs = msgs[:0]
		for i := range batch {
			msgs = append(msgs, message(&batch[i]))
		}
		results, err := b.store.InsertBatch(ctx, id, msgs)
		settle(batch, results, err)
		batch = batch[:0]
	}

	for {
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case d, ok := <-deliveries:
				if !ok {
					return
				}
				batch, opened = append(batch, d), time.Now()
			}
			continue
		}

		select {
		case d, ok := <-deliveries:
			if !ok {
				flush()
				return
			}
			batch = append(batch, d)
			if len(batch) >= b.c.BatchSize || time.Since(opened) >= b.c.BatchTimeout {
				flush()
			}
		default:
			flush() // idle: nothing else is waiting
		}
	}
}
