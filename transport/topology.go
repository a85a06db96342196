package transport

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// queueArgs returns the arguments of the tenant's queue: rejected or
// expired messages go through the default exchange to the dead-letter
// queue.
func queueArgs(tenantID string) amqp.Table {
	return amqp.Table{
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": DeadLetterQueueName(tenantID),
	}
}

// DeclareTenant declares the tenant's dead-letter queue, its queue and the
// binding from ExchangeName. It is idempotent. When a queue already exists
// with other arguments, the error wraps ErrTopologyConflict and nothing is
// changed. The broker's reply closes only a throwaway channel.
func (b *Broker) DeclareTenant(ctx context.Context, tenantID string) error {
	if err := ValidateTenantID(tenantID); err != nil {
		return err
	}
	queue, dlq := QueueName(tenantID), DeadLetterQueueName(tenantID)

	err := b.withChannel(ctx, "declare tenant", func(ch *amqp.Channel) error {
		err := ch.ExchangeDeclare(ExchangeName, amqp.ExchangeDirect, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("declare exchange %s: %w", ExchangeName, classifyDeclare(err))
		}
		if _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare queue %s: %w", dlq, classifyDeclare(err))
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, queueArgs(tenantID)); err != nil {
			return fmt.Errorf("declare queue %s: %w", queue, classifyDeclare(err))
		}
		if err := ch.QueueBind(queue, tenantID, ExchangeName, false, nil); err != nil {
			return fmt.Errorf("bind queue %s: %w", queue, classify(err))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("declare tenant %s: %w", tenantID, err)
	}
	return nil
}

// DeleteTenant deletes the tenant's queue and dead-letter queue with the
// messages in them. A queue that does not exist is not an error. The broker
// cancels the consumers of a deleted queue.
func (b *Broker) DeleteTenant(ctx context.Context, tenantID string) error {
	if err := ValidateTenantID(tenantID); err != nil {
		return err
	}

	for _, queue := range []string{QueueName(tenantID), DeadLetterQueueName(tenantID)} {
		// A channel per queue, because a NOT_FOUND reply closes it.
		err := b.withChannel(ctx, "delete queue", func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(queue, false, false, false)
			if err != nil && !hasCode(err, amqp.NotFound) {
				return classify(err)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("delete tenant %s: delete queue %s: %w", tenantID, queue, err)
		}
	}
	return nil
}

// QueueDepth returns the number of ready messages in the tenant's queue and
// its number of consumers. Messages delivered but not yet acked are not
// counted. The error wraps ErrQueueNotFound when the queue does not exist.
func (b *Broker) QueueDepth(ctx context.Context, tenantID string) (messages, consumers int, err error) {
	if err := ValidateTenantID(tenantID); err != nil {
		return 0, 0, err
	}
	queue := QueueName(tenantID)

	var q amqp.Queue
	err = b.withChannel(ctx, "inspect queue", func(ch *amqp.Channel) error {
		var err error
		q, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil && !hasCode(err, amqp.NotFound) {
			return classify(err)
		}
		return err
	})
	switch {
	case hasCode(err, amqp.NotFound):
		return 0, 0, fmt.Errorf("inspect queue %s: %w: %w", queue, ErrQueueNotFound, err)
	case err != nil:
		return 0, 0, fmt.Errorf("inspect queue %s: %w", queue, err)
	}
	return q.Messages, q.Consumers, nil
}

// withChannel runs fn on a new channel of the consume connection, which the
// broker does not block under a resource alarm because nothing publishes on
// it, and closes the channel afterwards.
func (b *Broker) withChannel(ctx context.Context, op string, fn func(*amqp.Channel) error) error {
	conn, err := b.consume.current()
	if err != nil {
		return err
	}

	return b.bounded(ctx, op, func() error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", classify(err))
		}
		defer closeChannel(ch)
		return fn(ch)
	}, nil)
}
