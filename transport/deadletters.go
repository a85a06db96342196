package transport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// MaxReplayMessages bounds the dead letters that one ReplayDeadLetters call
// reads, replayed or not, so that one call finishes within an HTTP request.
const MaxReplayMessages = 10000

// replayBatch is how many messages ReplayDeadLetters publishes before it
// waits for their confirms and acks them.
const replayBatch = 100

// DeadLetter is a message in a tenant's dead-letter queue.
type DeadLetter struct {
	// MessageID is the message_id property, empty when the producer set
	// none.
	MessageID string
	// Reason is the x-death-reason header (one of the Reason constants), or
	// for a message that the broker dead-lettered, the reason of its first
	// x-death entry (rejected, expired, maxlen or delivery_limit).
	Reason string
	// Detail is the x-death-detail header, empty when absent.
	Detail string
	// Attempts is the x-attempts header, or the count of the first x-death
	// entry, or 0.
	Attempts int
	// Body is the message body as published.
	Body []byte
	// ContentType is the content_type property.
	ContentType string
	// PublishedAt is the x-published-at header, or the timestamp property,
	// or zero when the message has neither.
	PublishedAt time.Time
	// OriginalRoutingKey is the x-original-routing-key header, empty when
	// absent.
	OriginalRoutingKey string
}

// Headers of broker-side dead-lettering (RabbitMQ "Dead Letter
// Exchanges"), dropped from a replayed message together with the ones
// DeadLetter adds.
var brokerDeathHeaders = []string{
	"x-death",
	"x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
	"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
}

// ListDeadLetters returns up to limit messages from the head of the
// tenant's dead-letter queue and leaves them in the queue. It reads them
// with basic.get without ack, which reports when the queue is empty, and
// then returns them with basic.nack and requeue. A requeued message keeps
// its place in a classic queue when the broker can manage it, but a
// listing may still reorder the queue, and sets the redelivered flag.
// While a listing holds messages, other readers of the queue do not see
// them. The error wraps ErrQueueNotFound when the queue does not exist.
func (b *Broker) ListDeadLetters(ctx context.Context, tenantID string, limit int) ([]DeadLetter, error) {
	if err := ValidateTenantID(tenantID); err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, fmt.Errorf("list dead letters: limit %d must be positive", limit)
	}
	queue := DeadLetterQueueName(tenantID)

	var out []DeadLetter
	err := b.withChannel(ctx, "list dead letters", func(ch *amqp.Channel) error {
		var got []DeadLetter
		var last uint64
		for len(got) < limit {
			if ctx.Err() != nil {
				return timedOut(ctx, "list dead letters")
			}
			d, ok, err := ch.Get(queue, false)
			if err != nil {
				return getError(queue, err)
			}
			if !ok {
				break
			}
			got = append(got, toDeadLetter(d))
			last = d.DeliveryTag
		}
		if last > 0 {
			// Closing the channel would requeue them too, but nack
			// returns them at once and does not depend on the close.
			if err := ch.Nack(last, true, true); err != nil {
				return fmt.Errorf("requeue listed dead letters: %w", classify(err))
			}
		}
		out = got
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list dead letters of tenant %s: %w", tenantID, err)
	}
	return out, nil
}

// ReplayDeadLetters moves messages from the tenant's dead-letter queue back
// to its queue: the ones whose message_id is in ids, or every one when all
// is set. For each batch it publishes copies to ExchangeName with routing
// key tenantID, waits for the broker's confirms, and only then acks the
// originals in the dead-letter queue. A crash in between leaves a message
// in both queues, never in neither, and the message_id keeps the stored
// copy unique.
//
// It reads at most the messages that were in the queue when it started,
// and at most MaxReplayMessages, so a replayed message that is
// dead-lettered again is not replayed twice in one call. With ids it stops
// once it found every id; a later message with an id already replayed stays
// in the queue. Messages it reads but does not replay are returned to the
// queue with basic.nack and requeue, which may reorder it.
//
// It returns the number of messages replayed, also when it fails part way:
// those are in the tenant's queue. The error wraps ErrQueueNotFound when the
// dead-letter queue does not exist and ErrUnroutable when the tenant's
// queue does not exist.
func (b *Broker) ReplayDeadLetters(ctx context.Context, tenantID string, ids []string, all bool) (int, error) {
	if err := ValidateTenantID(tenantID); err != nil {
		return 0, err
	}
	if all && len(ids) > 0 {
		return 0, errors.New("replay dead letters: pass ids or all, not both")
	}
	if !all && len(ids) == 0 {
		return 0, nil
	}

	r := &replay{
		broker:   b,
		tenantID: tenantID,
		queue:    DeadLetterQueueName(tenantID),
		all:      all,
		wanted:   make(map[string]bool, len(ids)),
	}
	for _, id := range ids {
		r.wanted[id] = true
	}
	err := b.withChannel(ctx, "replay dead letters", func(ch *amqp.Channel) error {
		return r.run(ctx, ch)
	})
	n := int(r.replayed.Load())
	if err != nil {
		return n, fmt.Errorf("replay dead letters of tenant %s (%d replayed): %w", tenantID, n, err)
	}
	return n, nil
}

// replay is the state of one ReplayDeadLetters call.
type replay struct {
	broker   *Broker
	tenantID string
	queue    string
	all      bool
	wanted   map[string]bool // ids not found yet
	replayed atomic.Int64    // read by the caller after a timeout
}

func (r *replay) run(ctx context.Context, ch *amqp.Channel) error {
	var (
		batch   []amqp.Delivery
		budget  = MaxReplayMessages
		lastTag uint64 // of the last message read
		held    bool   // some read messages are not replayed
	)
	for read := 0; read < budget && (r.all || len(r.wanted) > 0); read++ {
		if ctx.Err() != nil {
			return timedOut(ctx, "replay dead letters")
		}
		d, ok, err := ch.Get(r.queue, false)
		if err != nil {
			return getError(r.queue, err)
		}
		if !ok {
			break
		}
		if read == 0 {
			// MessageCount is what remains after this message.
			budget = min(int(d.MessageCount)+1, MaxReplayMessages)
		}
		lastTag = d.DeliveryTag

		if !r.all && !r.wanted[d.MessageId] {
			held = true
			continue
		}
		delete(r.wanted, d.MessageId)
		batch = append(batch, d)
		if len(batch) == replayBatch {
			if err := r.flush(ctx, ch, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := r.flush(ctx, ch, batch); err != nil {
		return err
	}

	if held {
		// Everything replayed is acked, so this returns exactly the
		// messages that were read and not replayed.
		if err := ch.Nack(lastTag, true, true); err != nil {
			return fmt.Errorf("requeue dead letters not replayed: %w", classify(err))
		}
	}
	return nil
}

// flush publishes batch to the tenant's queue with confirms, then acks each
// message of it in the dead-letter queue.
func (r *replay) flush(ctx context.Context, ch *amqp.Channel, batch []amqp.Delivery) error {
	if len(batch) == 0 {
		return nil
	}
	pubs := make([]amqp.Publishing, len(batch))
	for i, d := range batch {
		pubs[i] = replayPublishing(d)
	}
	if err := r.broker.send(ctx, ExchangeName, r.tenantID, pubs); err != nil {
		return fmt.Errorf("publish %d replayed messages: %w", len(pubs), err)
	}

	for _, d := range batch {
		if err := ch.Ack(d.DeliveryTag, false); err != nil {
			return fmt.Errorf("ack replayed message %q: %w", d.MessageId, classify(err))
		}
		r.replayed.Add(1)
	}
	return nil
}

// replayPublishing returns the message to publish for dead letter d: its
// body and properties, without the dead-letter headers, and without
// user_id and expiration for the reasons given at DeadLetter.
func replayPublishing(d amqp.Delivery) amqp.Publishing {
	headers := maps.Clone(d.Headers)
	for _, h := range append([]string{HeaderDeathReason, HeaderDeathDetail, HeaderAttempts, HeaderOriginalRoutingKey},
		brokerDeathHeaders...) {
		delete(headers, h)
	}
	return republishing(d, headers)
}

// getError explains a failed basic.get on queue.
func getError(queue string, err error) error {
	if hasCode(err, amqp.NotFound) {
		return fmt.Errorf("read queue %s: %w: %w", queue, ErrQueueNotFound, err)
	}
	return fmt.Errorf("read queue %s: %w", queue, classify(err))
}

func toDeadLetter(d amqp.Delivery) DeadLetter {
	dl := DeadLetter{
		MessageID:   d.MessageId,
		Body:        d.Body,
		ContentType: d.ContentType,
		PublishedAt: d.Timestamp,
	}
	dl.Reason, _ = d.Headers[HeaderDeathReason].(string)
	dl.Detail, _ = d.Headers[HeaderDeathDetail].(string)
	dl.OriginalRoutingKey, _ = d.Headers[HeaderOriginalRoutingKey].(string)
	if s, ok := d.Headers[HeaderPublishedAt].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			dl.PublishedAt = t
		}
	}
	attempts, hasAttempts := toInt(d.Headers[HeaderAttempts])
	dl.Attempts = attempts

	// A message the broker dead-lettered carries x-death instead: an array
	// of tables, the most recent first.
	death := firstDeath(d.Headers)
	if dl.Reason == "" {
		dl.Reason, _ = death["reason"].(string)
	}
	if !hasAttempts {
		dl.Attempts, _ = toInt(death["count"])
	}
	return dl
}

func firstDeath(headers amqp.Table) amqp.Table {
	deaths, _ := headers["x-death"].([]any)
	if len(deaths) == 0 {
		return nil
	}
	t, _ := deaths[0].(amqp.Table)
	return t
}

// toInt converts the integer types that AMQP tables decode to.
func toInt(v any) (int, bool) {
	switch n := v.(type) {
	case int8:
		return int(n), true
	case int16:
		return int(n), true
	case int32:
		return int(n), true
	case int64:
		return int(n), true
	case int:
		return n, true
	case uint8:
		return int(n), true
	case uint16:
		return int(n), true
	case uint32:
		return int(n), true
	}
	return 0, false
}
