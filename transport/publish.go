package transport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// maxShortString is the AMQP 0-9-1 limit for short strings such as the
// message_id property, in bytes.
const maxShortString = 255

// maxDetailBytes caps the x-death-reason detail, which may carry a whole
// database error.
const maxDetailBytes = 1024

// OutgoingMessage is one message to publish.
type OutgoingMessage struct {
	MessageID   string    // message_id property, the idempotency key; required
	Body        []byte    // JSON payload
	PublishedAt time.Time // timestamp property and x-published-at; zero means now
}

// Publish publishes msgs persistently to ExchangeName with routing key
// tenantID and returns once the broker confirmed every one. Messages have
// content type application/json, the message_id and timestamp properties,
// and the x-published-at header (RFC 3339 with nanoseconds, UTC).
//
// The error wraps ErrUnavailable when a connection is down, the broker
// blocks publishing, or a confirm does not arrive within PublishTimeout or
// before ctx ends. Some of msgs may still be stored then, so a retry must
// reuse their message ids. The error wraps ErrNacked when the broker
// rejected a message and ErrUnroutable when the tenant's queue does not
// exist.
func (b *Broker) Publish(ctx context.Context, tenantID string, msgs []OutgoingMessage) error {
	if err := ValidateTenantID(tenantID); err != nil {
		return err
	}
	pubs, err := publishings(msgs)
	if err != nil {
		return err
	}
	if len(pubs) == 0 {
		return nil
	}

	if err := b.send(ctx, ExchangeName, tenantID, pubs); err != nil {
		return fmt.Errorf("publish %d messages for tenant %s: %w", len(pubs), tenantID, err)
	}
	return nil
}

func publishings(msgs []OutgoingMessage) ([]amqp.Publishing, error) {
	pubs := make([]amqp.Publishing, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		if m.MessageID == "" {
			return nil, fmt.Errorf("message %d: message id is empty", i)
		}
		if len(m.MessageID) > maxShortString {
			return nil, fmt.Errorf("message %d: message id is %d bytes, longer than %d",
				i, len(m.MessageID), maxShortString)
		}

		at := m.PublishedAt
		if at.IsZero() {
			at = now
		}
		pubs[i] = amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    m.MessageID,
			Timestamp:    at,
			Headers:      amqp.Table{HeaderPublishedAt: at.UTC().Format(time.RFC3339Nano)},
			Body:         m.Body,
		}
	}
	return pubs, nil
}

// DeadLetter publishes a copy of d to the tenant's dead-letter queue
// through the default exchange and returns once the broker confirmed it.
// Only then may the caller ack d. The copy keeps d's body, properties and
// headers and adds x-death-reason (one of the Reason constants),
// x-death-detail (cut to 1 KiB), x-attempts (int32) and
// x-original-routing-key. The user_id and expiration properties are
// dropped: the broker rejects a user_id that is not the publishing user,
// and an expiration would delete the copy from the dead-letter queue.
func (b *Broker) DeadLetter(ctx context.Context, tenantID string, d amqp.Delivery, reason, detail string, attempts int) error {
	if err := ValidateTenantID(tenantID); err != nil {
		return err
	}
	if !validReason(reason) {
		return fmt.Errorf("invalid dead-letter reason %q: use one of the Reason constants", reason)
	}
	pub, err := deadLetterPublishing(d, reason, detail, attempts)
	if err != nil {
		return err
	}

	if err := b.send(ctx, "", DeadLetterQueueName(tenantID), []amqp.Publishing{pub}); err != nil {
		return fmt.Errorf("dead-letter message %q of tenant %s: %w", d.MessageId, tenantID, err)
	}
	return nil
}

func deadLetterPublishing(d amqp.Delivery, reason, detail string, attempts int) (amqp.Publishing, error) {
	headers := make(amqp.Table, len(d.Headers)+4)
	maps.Copy(headers, d.Headers)
	headers[HeaderDeathReason] = reason
	headers[HeaderDeathDetail] = truncateUTF8(detail, maxDetailBytes)
	headers[HeaderAttempts] = int32(min(max(attempts, 0), math.MaxInt32))
	headers[HeaderOriginalRoutingKey] = d.RoutingKey
	if err := headers.Validate(); err != nil {
		return amqp.Publishing{}, fmt.Errorf("dead-letter headers: %w", err)
	}

	return republishing(d, headers), nil
}

// republishing returns a persistent copy of delivery d with the given
// headers: its body and properties except user_id and expiration (see
// DeadLetter).
func republishing(d amqp.Delivery, headers amqp.Table) amqp.Publishing {
	return amqp.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}

// truncateUTF8 returns s as valid UTF-8 of at most n bytes.
func truncateUTF8(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// send publishes pubs within PublishTimeout and ctx.
func (b *Broker) send(ctx context.Context, exchange, key string, pubs []amqp.Publishing) error {
	cause := fmt.Errorf("no confirm within the publish timeout of %s", b.cfg.PublishTimeout)
	ctx, cancel := context.WithTimeoutCause(ctx, b.cfg.PublishTimeout, cause)
	defer cancel()

	run := func() error { return b.pool.run(ctx, exchange, key, pubs) }
	return b.bounded(ctx, "publish", run, nil)
}

// publishAll publishes pubs as mandatory messages and waits for their
// confirms. settled is false when confirms are still outstanding.
func (cc *confirmChannel) publishAll(ctx context.Context, exchange, key string, pubs []amqp.Publishing) (settled bool, err error) {
	confirms := make([]*amqp.DeferredConfirmation, 0, len(pubs))
	for i := range pubs {
		if ctx.Err() != nil {
			return false, timedOut(ctx, "publish")
		}
		dc, err := cc.ch.PublishWithDeferredConfirm(exchange, key, true, false, pubs[i])
		if err != nil {
			return false, cc.closedErr(err)
		}
		confirms = append(confirms, dc)
	}

	returned, err := cc.wait(ctx, confirms)
	if err != nil {
		return false, err
	}
	return true, cc.outcome(confirms, returned)
}

// wait waits for every confirm and collects the basic.return frames that
// the broker sends before the confirm of an unroutable message.
func (cc *confirmChannel) wait(ctx context.Context, confirms []*amqp.DeferredConfirmation) ([]amqp.Return, error) {
	var returned []amqp.Return
	returns := (<-chan amqp.Return)(cc.returns)
	for i := 0; i < len(confirms); {
		select {
		case <-confirms[i].Done():
			i++
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			returned = append(returned, r)
		case <-ctx.Done():
			return nil, timedOut(ctx, fmt.Sprintf("wait for confirm %d of %d", i+1, len(confirms)))
		}
	}

	for returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				return returned, nil
			}
			returned = append(returned, r)
		default:
			return returned, nil
		}
	}
	return returned, nil
}

// outcome turns settled confirms into an error. The library marks the
// confirms still pending when a channel closes as negative, so negative
// confirms on a closed channel mean the channel died, not a rejection.
func (cc *confirmChannel) outcome(confirms []*amqp.DeferredConfirmation, returned []amqp.Return) error {
	nacked := 0
	for _, dc := range confirms {
		if !dc.Acked() {
			nacked++
		}
	}

	switch {
	case nacked > 0 && cc.ch.IsClosed():
		return cc.closedErr(fmt.Errorf("%d of %d messages unconfirmed", nacked, len(confirms)))
	case nacked > 0:
		return fmt.Errorf("%w: %d of %d messages", ErrNacked, nacked, len(confirms))
	case len(returned) > 0:
		r := returned[0]
		return fmt.Errorf("%w: %d of %d messages returned with %d %s (exchange %q, routing key %q)",
			ErrUnroutable, len(returned), len(confirms), r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey)
	}
	return nil
}

// closedErr explains a failure on a channel that may have closed: by the
// broker's channel exception, which is returned as it is, or by a lost
// connection, which wraps ErrUnavailable.
func (cc *confirmChannel) closedErr(err error) error {
	select {
	case e, ok := <-cc.closes:
		if ok && e != nil {
			return fmt.Errorf("publish channel closed: %w", classify(e))
		}
	default:
	}
	if errors.Is(err, amqp.ErrClosed) || cc.ch.IsClosed() {
		return fmt.Errorf("%w: publish channel closed: %w", ErrUnavailable, err)
	}
	return classify(err)
}
