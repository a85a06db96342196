package transport_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

func TestPublishSetsProperties(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("CEST", 2*3600))
	msg := transport.OutgoingMessage{MessageID: "props-1", Body: []byte(`{"a":1}`), PublishedAt: at}
	require.NoError(t, b.Publish(testContext(t), tenant, []transport.OutgoingMessage{msg}))

	d := getMessage(t, transport.QueueName(tenant))
	require.Equal(t, []byte(`{"a":1}`), d.Body)
	require.Equal(t, "props-1", d.MessageId)
	require.Equal(t, "application/json", d.ContentType)
	require.Equal(t, amqp.Persistent, d.DeliveryMode)
	require.Equal(t, transport.ExchangeName, d.Exchange)
	require.Equal(t, tenant, d.RoutingKey)
	require.True(t, d.Timestamp.Equal(at.Truncate(time.Second)), "timestamp %s", d.Timestamp)

	header, ok := d.Headers[transport.HeaderPublishedAt].(string)
	require.True(t, ok, "x-published-at is a string: %#v", d.Headers)
	require.Equal(t, "2024-05-06T05:08:09.123456789Z", header)
	parsed, err := time.Parse(time.RFC3339Nano, header)
	require.NoError(t, err)
	require.True(t, parsed.Equal(at))
}

func TestPublishZeroTimeMeansNow(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	before := time.Now()
	msg := transport.OutgoingMessage{MessageID: "now", Body: []byte(`1`)}
	require.NoError(t, b.Publish(testContext(t), tenant, []transport.OutgoingMessage{msg}))

	d := getMessage(t, transport.QueueName(tenant))
	parsed, err := time.Parse(time.RFC3339Nano, d.Headers[transport.HeaderPublishedAt].(string))
	require.NoError(t, err)
	require.False(t, parsed.Before(before))
	require.WithinDuration(t, time.Now(), parsed, time.Minute)
}

func TestPublishConcurrentCallers(t *testing.T) {
	t.Parallel()

	b, _ := setup(t, func(c *transport.Config, _ *transport.Hooks) { c.PublishChannels = 3 })
	tenant := newTenant(t, b)

	const callers, batches, batchSize = 16, 5, 20
	var wg sync.WaitGroup
	errs := make(chan error, callers*batches)
	for w := range callers {
		wg.Go(func() {
			for i := range batches {
				errs <- b.Publish(testContext(t), tenant, messages(fmt.Sprintf("w%d-b%d", w, i), batchSize))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	depth, _, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Equal(t, callers*batches*batchSize, depth)
}

func TestPublishLargeBody(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	// Larger than the negotiated frame size, so it spans many body frames.
	body := bytes.Repeat([]byte("x"), 4<<20)
	body[0], body[len(body)-1] = '"', '"'
	msg := transport.OutgoingMessage{MessageID: "large", Body: body, PublishedAt: time.Now()}
	require.NoError(t, b.Publish(testContext(t), tenant, []transport.OutgoingMessage{msg}))

	d := getMessage(t, transport.QueueName(tenant))
	require.Equal(t, body, d.Body)
}

func TestPublishRejectsInvalidMessages(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	ctx := testContext(t)

	require.NoError(t, b.Publish(ctx, tenant, nil), "nothing to publish")

	err := b.Publish(ctx, tenant, []transport.OutgoingMessage{{MessageID: "ok"}, {Body: []byte(`1`)}})
	require.ErrorContains(t, err, "message 1: message id is empty")

	long := transport.OutgoingMessage{MessageID: strings.Repeat("m", 256), Body: []byte(`1`)}
	require.ErrorContains(t, b.Publish(ctx, tenant, []transport.OutgoingMessage{long}), "longer than 255")

	depth, _, err := b.QueueDepth(ctx, tenant)
	require.NoError(t, err)
	require.Zero(t, depth, "a batch with an invalid message publishes nothing")
}

func TestPublishHostileBodies(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	// The broker carries bodies as opaque bytes; checking JSON is the
	// caller's job.
	bodies := [][]byte{nil, {}, {0, 0xff, 0xfe}, []byte("not json"), []byte(`"\u0000"`)}
	msgs := make([]transport.OutgoingMessage, len(bodies))
	for i, body := range bodies {
		msgs[i] = transport.OutgoingMessage{MessageID: fmt.Sprintf("hostile-%d", i), Body: body}
	}
	msgs = append(msgs, transport.OutgoingMessage{MessageID: "ünïcode id ✓", Body: []byte(`{}`)})
	require.NoError(t, b.Publish(testContext(t), tenant, msgs))

	for i, body := range bodies {
		d := getMessage(t, transport.QueueName(tenant))
		require.Equal(t, fmt.Sprintf("hostile-%d", i), d.MessageId)
		require.Equal(t, len(body), len(d.Body))
	}
	require.Equal(t, "ünïcode id ✓", getMessage(t, transport.QueueName(tenant)).MessageId)
}

func TestPublishToMissingQueueIsUnroutable(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	err := b.Publish(testContext(t), testenv.TenantID("nobody"), messages("lost", 3))
	require.ErrorIs(t, err, transport.ErrUnroutable)
	require.NotErrorIs(t, err, transport.ErrUnavailable)
	require.ErrorContains(t, err, "3 of 3 messages")

	// The channel stays in the pool and works for the next caller.
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("found", 1)))
}

func TestPublishCancelledContext(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	err := b.Publish(ctx, tenant, messages("cancelled", 1))
	require.ErrorIs(t, err, transport.ErrUnavailable)
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("next", 1)))
}

func TestPublishTimeoutWhenPoolIsBusy(t *testing.T) {
	t.Parallel()

	b, _ := setup(t, func(c *transport.Config, _ *transport.Hooks) {
		c.PublishChannels = 1
		c.PublishTimeout = 300 * time.Millisecond
	})
	tenant := newTenant(t, b)

	// Many concurrent batches on one channel: each call either succeeds
	// or times out with ErrUnavailable, and none takes much longer than
	// the timeout.
	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, 8)
	for range cap(results) {
		go func() {
			start := time.Now()
			err := b.Publish(t.Context(), tenant, messages(testenv.RandomSuffix(), 200))
			results <- result{err, time.Since(start)}
		}()
	}
	for range cap(results) {
		var r result
		select {
		case r = <-results:
		case <-time.After(waitTimeout):
			t.Fatal("a Publish call hung")
		}
		if r.err != nil {
			require.ErrorIs(t, r.err, transport.ErrUnavailable)
		}
		require.Less(t, r.took, 2*time.Second)
	}
	require.NoError(t, b.Publish(testContext(t), tenant, messages("after", 1)))
}

func TestDeadLetterHeaders(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("dead", 1)))

	c, err := b.Consume(testContext(t), tenant, 1)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	d := receive(t, c, 1)[0]

	err = b.DeadLetter(testContext(t), tenant, d, transport.ReasonInvalidJSON, "unexpected token at byte 3", 3)
	require.NoError(t, err)
	require.NoError(t, d.Ack(false))

	dead := getMessage(t, transport.DeadLetterQueueName(tenant))
	require.Equal(t, d.Body, dead.Body)
	require.Equal(t, "dead-0", dead.MessageId)
	require.Equal(t, "application/json", dead.ContentType)
	require.Equal(t, amqp.Persistent, dead.DeliveryMode)
	require.True(t, dead.Timestamp.Equal(d.Timestamp))
	require.Equal(t, "", dead.Exchange)
	require.Equal(t, transport.DeadLetterQueueName(tenant), dead.RoutingKey)

	require.Equal(t, "invalid_json", dead.Headers[transport.HeaderDeathReason])
	require.Equal(t, "unexpected token at byte 3", dead.Headers[transport.HeaderDeathDetail])
	require.Equal(t, int32(3), dead.Headers[transport.HeaderAttempts])
	require.Equal(t, tenant, dead.Headers[transport.HeaderOriginalRoutingKey])
	require.Equal(t, d.Headers[transport.HeaderPublishedAt], dead.Headers[transport.HeaderPublishedAt],
		"the original headers are kept")

	depth, _, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Zero(t, depth)
}

func TestDeadLetterCutsLongDetail(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	// A foreign message with properties that must not be copied.
	ch := rawChannel(t)
	err := ch.PublishWithContext(testContext(t), transport.ExchangeName, tenant, false, false, amqp.Publishing{
		MessageId:  "foreign",
		Expiration: "600000",
		Headers:    amqp.Table{"custom": int64(-7)},
		Body:       []byte(`{"x":1}`),
	})
	require.NoError(t, err)
	d := getMessage(t, transport.QueueName(tenant))

	detail := "bad \xff byte " + strings.Repeat("é", 2000)
	require.NoError(t, b.DeadLetter(testContext(t), tenant, d, transport.ReasonRejected, detail, -5))

	dead := getMessage(t, transport.DeadLetterQueueName(tenant))
	got, ok := dead.Headers[transport.HeaderDeathDetail].(string)
	require.True(t, ok)
	require.LessOrEqual(t, len(got), 1024)
	require.True(t, utf8.ValidString(got))
	require.True(t, strings.HasPrefix(strings.ToValidUTF8(detail, "\uFFFD"), got))
	require.Equal(t, int32(0), dead.Headers[transport.HeaderAttempts])
	require.Equal(t, int64(-7), dead.Headers["custom"])
	require.Empty(t, dead.Expiration)
}

func TestDeadLetterRejectsBadInput(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	d := amqp.Delivery{MessageId: "x", Body: []byte(`1`)}

	err := b.DeadLetter(testContext(t), tenant, d, "bored", "", 1)
	require.ErrorContains(t, err, `invalid dead-letter reason "bored"`)
	require.ErrorIs(t, b.DeadLetter(testContext(t), "Bad.Tenant", d, transport.ReasonRejected, "", 1),
		transport.ErrInvalidTenantID)

	err = b.DeadLetter(testContext(t), testenv.TenantID("nodlq"), d, transport.ReasonTooLarge, "", 1)
	require.ErrorIs(t, err, transport.ErrUnroutable, "a missing dead-letter queue must not drop the message silently")
}
