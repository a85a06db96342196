package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// Dead-letter reasons, sent in the x-death-reason header and used as the
// reason label of messaging_messages_dead_lettered_total.
const (
	ReasonInvalidJSON = "invalid_json"
	ReasonTooLarge    = "too_large"
	ReasonRejected    = "rejected"
	ReasonMaxAttempts = "max_attempts"
)

// publishedAtHeader carries published_at with nanoseconds; the AMQP
// timestamp property has whole seconds only.
const publishedAtHeader = "x-published-at"

// Messages a worker sends itself.
type (
	// flushIfIdle reaches the worker after every delivery that was in its
	// mailbox when the first delivery of the batch was handled, so handling
	// it means no more deliveries were waiting.
	flushIfIdle struct{}
	// flushDeadline fires BatchTimeout after the first delivery of batch gen.
	flushDeadline struct{ gen uint64 }
)

// drainRequest requests a worker to flush and settle everything it has received
// so far; it responds with drained. Deliveries routed to it afterwards are
// handled as usual.
type drainRequest struct{}

type drained struct{}

// pending is one delivery in a worker's batch.
type pending struct {
	d       *delivery
	settled bool // acked, nacked or dead-lettered: it must not be settled again
}

// worker batches deliveries and stores each batch in one transaction.
type worker struct {
	tenantID string
	deps     *Deps
	attempts *attempts
	retryLog *retryLog // shared by the tenant's workers
	logger   *slog.Logger

	batch       []pending
	unacked     []*delivery   // stored or dead-lettered, ack not sent yet
	routed      *atomic.Int64 // deliveries routed here and not flushed; shared with the router
	idleCheck   bool          // a flushIfIdle is in the mailbox
	timer       *time.Timer
	timerGen    uint64
	retryStreak int // retried failures since the last committed batch
}

var _ actor.Actor = (*worker)(nil)

func newWorker(tenantID string, deps *Deps, att *attempts, retryLog *retryLog, routed *atomic.Int64,
	logger *slog.Logger) *worker {
	return &worker{tenantID: tenantID, deps: deps, attempts: att, retryLog: retryLog, routed: routed, logger: logger}
}

// Receive handles one message of the worker's mailbox.
func (w *worker) Receive(c actor.Context) {
	switch m := c.Message().(type) {
	case *delivery:
		w.add(c, m)
	case flushIfIdle:
		w.idleCheck = false
		w.flush()
	case flushDeadline:
		if m.gen == w.timerGen {
			w.flush()
		}
	case *drainRequest:
		w.flush()
		c.Respond(&drained{})
	case *actor.Restarting:
		w.requeueBatch("worker restarting")
	case *actor.Stopping:
		w.requeueBatch("worker stopping")
	}
}

func (w *worker) add(c actor.Context, d *delivery) {
	w.deps.Metrics.Received.WithLabelValues(w.tenantID).Inc()

	// A message that already failed is stored alone, so a poison message
	// cannot take the rest of a batch down with it again.
	if w.attempts.get(d.Delivery) > 0 {
		w.flush()
		w.batch = append(w.batch, pending{d: d})
		w.flush()
		return
	}

	w.batch = append(w.batch, pending{d: d})
	if len(w.batch) >= w.deps.Options.BatchSize {
		w.flush()
		return
	}
	if len(w.batch) == 1 {
		w.startTimer(c)
	}
	if !w.idleCheck {
		w.idleCheck = true
		c.Send(c.Self(), flushIfIdle{})
	}
}

func (w *worker) startTimer(c actor.Context) {
	w.timerGen++
	gen, self, root := w.timerGen, c.Self(), c.ActorSystem().Root
	w.timer = time.AfterFunc(w.deps.Options.BatchTimeout, func() {
		root.Send(self, flushDeadline{gen: gen})
	})
}

// flush stores the batch, acks what was stored or was a duplicate,
// dead-letters what can never be stored and requeues the rest.
func (w *worker) flush() {
	if len(w.batch) == 0 {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	w.timerGen++

	msgs, index := w.prepare()
	if len(msgs) > 0 {
		w.store(msgs, index)
	}
	w.sendAcks()
	w.routed.Add(-int64(len(w.batch)))
	w.batch = w.batch[:0]
}

// prepare validates each delivery, dead-letters those that can never be
// stored and returns the rest with their positions in the batch.
func (w *worker) prepare() ([]persistence.Message, []int) {
	msgs := make([]persistence.Message, 0, len(w.batch))
	index := make([]int, 0, len(w.batch))
	for i := range w.batch {
		p := &w.batch[i]
		n := w.attempts.get(p.d.Delivery)
		switch {
		case n >= w.deps.Options.MaxAttempts:
			w.deadLetter(p, ReasonMaxAttempts, fmt.Sprintf("failed %d times", n))
		case len(p.d.Body) > w.deps.Options.MaxPayloadBytes:
			w.deadLetter(p, ReasonTooLarge, fmt.Sprintf("body is %d bytes, the limit is %d",
				len(p.d.Body), w.deps.Options.MaxPayloadBytes))
		case !json.Valid(p.d.Body):
			w.deadLetter(p, ReasonInvalidJSON, "body is not valid JSON")
		default:
			injectFault(p.d.Delivery)
			msgs = append(msgs, toMessage(p.d.Delivery))
			index = append(index, i)
		}
	}
	return msgs, index
}

func toMessage(d *amqp.Delivery) persistence.Message {
	id := d.MessageId
	if id == "" {
		id = uuid.NewString()
	}
	return persistence.Message{MessageID: id, Payload: d.Body, PublishedAt: publishedAt(d)}
}

// publishedAt prefers the x-published-at header, then the timestamp
// property, then the time the broker handed the message over (now).
func publishedAt(d *amqp.Delivery) time.Time {
	if s, ok := d.Headers[publishedAtHeader].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t
		}
	}
	if !d.Timestamp.IsZero() {
		return d.Timestamp
	}
	return time.Now()
}

func (w *worker) store(msgs []persistence.Message, index []int) {
	m := w.deps.Metrics
	started := time.Now()
	results, err := w.insertWithRetry(msgs)
	if err != nil {
		w.failBatch(index, err)
		return
	}
	m.BatchSize.Observe(float64(len(msgs)))
	m.BatchDuration.Observe(time.Since(started).Seconds())

	committed := time.Now()
	for j, r := range results {
		p := &w.batch[index[j]]
		switch r.Outcome {
		case persistence.Inserted:
			m.Persisted.WithLabelValues(w.tenantID).Inc()
			m.StoreLatency.Observe(committed.Sub(msgs[j].PublishedAt).Seconds())
			w.ack(p)
		case persistence.Duplicate:
			m.Duplicates.WithLabelValues(w.tenantID).Inc()
			w.ack(p)
		case persistence.Rejected:
			w.deadLetter(p, ReasonRejected, errorDetail(r.Err))
		}
	}
}

// insertWithRetry retries transient database errors with capped exponential
// backoff until the batch commits, the error is permanent or the deps
// context ends. The tenant's retryLog logs the retries.
func (w *worker) insertWithRetry(msgs []persistence.Message) ([]persistence.Result, error) {
	ctx := w.deps.Context
	wait := w.deps.Options.RetryMin
	for {
		results, err := w.deps.Store.InsertBatch(ctx, w.tenantID, msgs)
		if err == nil {
			if w.retryStreak > 0 {
				w.retryLog.succeeded(w.logger, w.retryStreak)
				w.retryStreak = 0
			}
			return results, nil
		}
		if ctx.Err() != nil || !persistence.IsRetryable(err) {
			return nil, err
		}

		w.retryStreak++
		w.deps.Metrics.BatchRetries.WithLabelValues(w.tenantID).Inc()
		w.retryLog.retry(w.logger, err, len(msgs), w.retryStreak, wait)
		if !sleep(ctx, jitter(wait)) {
			return nil, ctx.Err()
		}
		wait = min(2*wait, w.deps.Options.RetryMax)
	}
}

// failBatch handles a batch that did not commit. When the tenant stops, at
// shutdown or for a delete, the deliveries stay unacked, and the broker
// requeues them when the channel closes. Otherwise each is counted as a
// failed try and requeued.
func (w *worker) failBatch(index []int, err error) {
	if w.deps.Context.Err() != nil {
		w.logger.Warn("worker: batch abandoned because the tenant is stopping; the broker will redeliver it",
			"err", err, "batch_size", len(index))
		return
	}
	w.logger.Error("worker: batch insert failed; requeueing its messages", "err", err, "batch_size", len(index))
	for _, i := range index {
		p := &w.batch[i]
		w.attempts.fail(p.d.Delivery)
		w.nack(p)
	}
}

func (w *worker) deadLetter(p *pending, reason, detail string) {
	n := w.attempts.get(p.d.Delivery) + 1
	err := w.deps.Broker.DeadLetter(w.deps.Context, w.tenantID, *p.d.Delivery, reason, detail, n)
	if errors.Is(err, transport.ErrUnroutable) {
		// The dead-letter queue was deleted from outside: declare the
		// tenant's queues again and retry once.
		if dErr := w.deps.Broker.DeclareTenant(w.deps.Context, w.tenantID); dErr == nil {
			err = w.deps.Broker.DeadLetter(w.deps.Context, w.tenantID, *p.d.Delivery, reason, detail, n)
		}
	}
	if err != nil {
		// Counting the try bounds the loop: the message comes back as a
		// redelivery and, past MaxAttempts, is dead-lettered again.
		w.logger.Error("worker: dead-letter publish failed; requeueing the message",
			"err", err, "reason", reason, "message_id", p.d.MessageId)
		w.attempts.fail(p.d.Delivery)
		w.nack(p)
		return
	}
	w.deps.Metrics.DeadLettered.WithLabelValues(w.tenantID, reason).Inc()
	w.logger.Warn("worker: message dead-lettered", "reason", reason, "detail", detail, "message_id", p.d.MessageId)
	w.ack(p)
}

// ack marks p stored; sendAcks acks it with the rest of the batch, so a
// batch settled in order costs one ack frame.
func (w *worker) ack(p *pending) {
	if p.settled {
		return
	}
	p.settled = true
	w.attempts.forget(p.d.Delivery)
	w.unacked = append(w.unacked, p.d)
}

// sendAcks sends the acks collected by ack, grouped by consumer.
func (w *worker) sendAcks() {
	for len(w.unacked) > 0 {
		acks := w.unacked[0].acks
		group := make([]*amqp.Delivery, 0, len(w.unacked))
		rest := w.unacked[:0]
		for _, d := range w.unacked {
			if d.acks == acks {
				group = append(group, d.Delivery)
			} else {
				rest = append(rest, d)
			}
		}
		w.unacked = rest
		if err := acks.ack(group...); err != nil {
			// The channel is gone: the broker redelivers these messages and
			// the message_id check keeps them from being stored twice.
			w.logger.Debug("worker: ack failed", "err", err, "count", len(group))
		}
	}
}

func (w *worker) nack(p *pending) {
	if p.settled {
		return
	}
	p.settled = true
	if err := p.d.acks.nack(p.d.Delivery); err != nil {
		w.logger.Debug("worker: nack failed", "err", err, "message_id", p.d.MessageId)
	}
}

// requeueBatch returns the unsettled deliveries of a worker that is about to
// lose its state, counting each as a failed try.
func (w *worker) requeueBatch(why string) {
	if w.timer != nil {
		w.timer.Stop()
	}
	w.sendAcks() // stored before the failure: ack them, do not requeue

	n := 0
	for i := range w.batch {
		p := &w.batch[i]
		if !p.settled {
			w.attempts.fail(p.d.Delivery)
			w.nack(p)
			n++
		}
	}
	if n > 0 {
		w.logger.Warn("worker: requeued in-flight deliveries", "reason", why, "count", n)
	}
	w.routed.Add(-int64(len(w.batch)))
	w.batch = nil
}

// errorDetail returns a short, safe description of a database rejection.
func errorDetail(err error) string {
	if err == nil {
		return "rejected by the database"
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
