package main

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/persistence"
)

// consumeNaive stores one message per transaction and acks it before the
// broker, with prefetch 1, sends the next: the design without batching.
func (b *baseline) consumeNaive(ctx context.Context, tenant int, deliveries <-chan amqp.Delivery) {
	id := b.ids[tenant]
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			results, err := b.store.InsertBatch(ctx, id, []persistence.Message{message(&d)})
			settle([]amqp.Delivery{d}, results, err)
		}
	}
}
