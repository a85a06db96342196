package main

import (
	"context"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// consumeOnly acks every delivery as it arrives and records its arrival
// time as the stored time: the broker alone, with no database.
func consumeOnly(ctx context.Context, mem *memorySource, tenant int, deliveries <-chan amqp.Delivery) {
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			mem.add(tenant, row{messageID: d.MessageId, publishedAt: deliveryPublishedAt(&d), storedAt: time.Now()})
			_ = d.Ack(false)
		}
	}
}
