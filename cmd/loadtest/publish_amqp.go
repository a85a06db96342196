package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Names the server's AMQP topology uses: producers publish to this direct
// exchange with the tenant id as routing key, and the server reads
// published_at with nanoseconds from this header.
const (
	exchangeName      = "messages"
	publishedAtHeader = "x-published-at"
)

// confirmTimeout bounds the wait for the confirms of one job.
const confirmTimeout = 30 * time.Second

// amqpPublisher publishes on its own confirm-mode channel, as a producer
// that bypasses the HTTP API does.
type amqpPublisher struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	tenants []string
	size    int // payload bytes
}

var _ publisher = (*amqpPublisher)(nil)

// newAMQPPublisher opens a confirm-mode channel on conn. batch is the
// largest job it will publish.
func newAMQPPublisher(conn *amqp.Connection, tenants []string, size, batch int) (*amqpPublisher, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open AMQP channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	// The library hands returns over before the confirm that follows them,
	// so the buffer must hold the returns of every job in flight, or its
	// reader blocks.
	returns := ch.NotifyReturn(make(chan amqp.Return, batch*(maxInflight+2)))
	return &amqpPublisher{ch: ch, returns: returns, tenants: tenants, size: size}, nil
}

// send publishes the job's messages persistently and mandatory. Its wait
// function fails when a message was returned, which means the tenant has
// no queue.
func (p *amqpPublisher) send(ctx context.Context, j job) (func(context.Context) error, error) {
	tenant := p.tenants[j.tenant]
	confirms := make([]*amqp.DeferredConfirmation, 0, j.n)
	for seq := j.first; seq < j.first+j.n; seq++ {
		now := time.Now().UTC()
		msg := amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    messageID(seq),
			Timestamp:    now,
			Headers:      amqp.Table{publishedAtHeader: now.Format(time.RFC3339Nano)},
			Body:         payload(seq, p.size),
		}
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchangeName, tenant, true, false, msg)
		if err != nil {
			return nil, fmt.Errorf("publish to tenant %s: %w", tenant, err)
		}
		confirms = append(confirms, dc)
	}
	return func(ctx context.Context) error { return p.wait(ctx, tenant, confirms) }, nil
}

func (p *amqpPublisher) wait(ctx context.Context, tenant string, confirms []*amqp.DeferredConfirmation) error {
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	nacked := 0
	for _, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("wait for confirms of tenant %s: %w", tenant, err)
		}
		if !ok {
			nacked++
		}
	}

	returned := 0
	for drained := false; !drained; {
		select {
		case _, open := <-p.returns:
			if !open {
				// The library closes the channel when the AMQP channel or
				// its connection closes.
				return fmt.Errorf("AMQP channel closed while publishing for tenant %s", tenant)
			}
			returned++
		default:
			drained = true
		}
	}
	switch {
	case returned > 0:
		return fmt.Errorf("%d messages for tenant %s were unroutable: does queue tenant.%s exist?",
			returned, tenant, tenant)
	case nacked > 0:
		return retryableError{fmt.Errorf("broker nacked %d messages for tenant %s", nacked, tenant)}
	}
	return nil
}

func (p *amqpPublisher) close() error {
	err := p.ch.Close()
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// dialAMQP connects to RabbitMQ with a name that the management UI shows.
func dialAMQP(url string) (*amqp.Connection, error) {
	cfg := amqp.Config{
		Properties: amqp.Table{"connection_name": "loadtest"},
		Dial:       amqp.DefaultDial(10 * time.Second),
	}
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	return conn, nil
}
