package transport

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// MaxPrefetch is the largest prefetch count that basic.qos carries.
const MaxPrefetch = 65535

// Consumer is one tenant's consuming channel on the consume connection.
// Deliveries must be acked or nacked on it (amqp.Delivery.Ack) before
// Close, or the broker requeues them.
type Consumer struct {
	tenantID string
	ch       *amqp.Channel
	tag      string

	out        chan amqp.Delivery
	stop       chan struct{}   // closed by Close
	brokerDone <-chan struct{} // closed by Broker.Close
	done       chan struct{}   // closed when forward returns
	closes     chan *amqp.Error
	cancels    chan string

	mu       sync.Mutex
	err      error
	stopping bool // Cancel or Close was called

	closeOnce sync.Once
	closeErr  error
}

// Consume opens a channel on the consume connection, sets its prefetch
// count (1 to 65535) and consumes the tenant's queue with manual acks. The
// error wraps ErrQueueNotFound when the queue does not exist. The Consumer
// does not survive a lost connection: after Reconnected fires, consume
// again.
func (b *Broker) Consume(ctx context.Context, tenantID string, prefetch int) (*Consumer, error) {
	if err := ValidateTenantID(tenantID); err != nil {
		return nil, err
	}
	if prefetch < 1 || prefetch > MaxPrefetch {
		return nil, fmt.Errorf("invalid prefetch %d: must be between 1 and %d", prefetch, MaxPrefetch)
	}
	conn, err := b.consume.current()
	if err != nil {
		return nil, err
	}

	var c *Consumer
	err = b.bounded(ctx, "consume", func() error {
		var err error
		c, err = b.openConsumer(conn, tenantID, prefetch)
		return err
	}, func() { c.Close() })
	if err != nil {
		if hasCode(err, amqp.NotFound) {
			err = fmt.Errorf("%w: %w", ErrQueueNotFound, err)
		}
		return nil, fmt.Errorf("consume queue %s: %w", QueueName(tenantID), err)
	}
	return c, nil
}

func (b *Broker) openConsumer(conn *amqp.Connection, tenantID string, prefetch int) (*Consumer, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", classify(err))
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		closeChannel(ch)
		return nil, fmt.Errorf("set prefetch: %w", classify(err))
	}

	c := &Consumer{
		tenantID:   tenantID,
		ch:         ch,
		tag:        consumerTag(tenantID),
		out:        make(chan amqp.Delivery),
		stop:       make(chan struct{}),
		brokerDone: b.ctx.Done(),
		done:       make(chan struct{}),
		closes:     ch.NotifyClose(make(chan *amqp.Error, 1)),
		cancels:    ch.NotifyCancel(make(chan string, 1)),
	}
	in, err := ch.Consume(QueueName(tenantID), c.tag, false, false, false, false, nil)
	if err != nil {
		closeChannel(ch)
		return nil, classify(err)
	}

	if !b.goTracked(func() { c.forward(in) }) {
		closeChannel(ch)
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, errBrokerClosed)
	}
	return c, nil
}

// consumerTag returns a tag unique on the broker that names the queue, as
// the management UI shows it.
func consumerTag(tenantID string) string {
	return QueueName(tenantID) + "-" + strings.ToLower(rand.Text())
}

// forward passes deliveries on to Deliveries until the library closes its
// channel, Close is called or the Broker closes.
func (c *Consumer) forward(in <-chan amqp.Delivery) {
	defer close(c.done)
	defer close(c.out)

	for {
		select {
		case d, ok := <-in:
			if !ok {
				c.setErr(c.reason())
				return
			}
			select {
			case c.out <- d:
			case <-c.stop:
				return
			case <-c.brokerDone:
				c.setErr(fmt.Errorf("%w: %w", ErrUnavailable, errBrokerClosed))
				return
			}
		case <-c.stop:
			return
		case <-c.brokerDone:
			c.setErr(fmt.Errorf("%w: %w", ErrUnavailable, errBrokerClosed))
			return
		}
	}
}

// reason explains why the library closed the delivery channel. The library
// sends to the cancel and close listeners before it closes that channel, so
// a non-blocking receive finds the reason.
func (c *Consumer) reason() error {
	select {
	case tag, ok := <-c.cancels: // closed without a tag when the channel closes
		if ok {
			return fmt.Errorf("%w: consumer %s of queue %s (was the queue deleted?)",
				ErrConsumerCancelled, tag, QueueName(c.tenantID))
		}
	default:
	}
	select {
	case e, ok := <-c.closes:
		if ok && e != nil {
			return fmt.Errorf("consumer channel closed: %w", classify(e))
		}
	default:
	}
	return fmt.Errorf("%w: consumer channel closed", ErrUnavailable)
}

func (c *Consumer) setErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopping {
		c.err = err
	}
}

// Deliveries returns the channel of deliveries. It is closed after Cancel
// once the deliveries in flight have arrived, at Close, when the broker
// cancels the consumer (for example because the queue was deleted) and
// when the channel or connection dies. Err returns the reason.
func (c *Consumer) Deliveries() <-chan amqp.Delivery {
	return c.out
}

// Cancel stops the consumer (basic.cancel). Deliveries already sent by the
// broker still arrive and can be acked, then Deliveries closes. Call Close
// afterwards to release the channel.
//
// NOTE: Cancel and Close take no context. On a connection that died
// silently they block until the library's read deadline of three heartbeat
// intervals passes (30 s with its default interval of 10 s).
func (c *Consumer) Cancel() error {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()

	err := c.ch.Cancel(c.tag, false)
	if err != nil && !errors.Is(err, amqp.ErrClosed) {
		return fmt.Errorf("cancel consumer %s: %w", c.tag, classify(err))
	}
	return nil
}

// Close closes the channel, and the broker requeues every delivery not yet
// acked. Deliveries closes. Close is idempotent.
func (c *Consumer) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.stopping = true
		c.mu.Unlock()

		close(c.stop)
		err := c.ch.Close()
		<-c.done
		if err != nil && !errors.Is(err, amqp.ErrClosed) {
			c.closeErr = fmt.Errorf("close consumer %s: %w", c.tag, classify(err))
		}
	})
	return c.closeErr
}

// Err returns why Deliveries closed: it wraps ErrConsumerCancelled when the
// broker cancelled the consumer, ErrUnavailable when the connection or the
// Broker closed, and the broker's *amqp.Error when a channel exception
// closed the channel. It is nil while Deliveries is open and when Cancel or
// Close closed it.
func (c *Consumer) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
