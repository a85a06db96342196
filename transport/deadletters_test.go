package transport_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

var deadLetterPublishedAt = time.Date(2024, 3, 4, 5, 6, 7, 890000000, time.UTC)

// deadLetter puts a message with id into the tenant's dead-letter queue the
// way a worker does, with DeadLetter.
func deadLetter(t *testing.T, b *transport.Broker, tenant, id string, body string) {
	t.Helper()
	d := amqp.Delivery{
		MessageId:   id,
		ContentType: "application/json",
		Timestamp:   deadLetterPublishedAt.Truncate(time.Second),
		Headers:     amqp.Table{transport.HeaderPublishedAt: deadLetterPublishedAt.Format(time.RFC3339Nano)},
		RoutingKey:  tenant,
		Body:        []byte(body),
	}
	require.NoError(t, b.DeadLetter(testContext(t), tenant, d, transport.ReasonRejected, "detail of "+id, 5))
}

// queueLen returns the number of ready messages in queue.
func queueLen(t *testing.T, queue string) int {
	t.Helper()
	q, err := rawChannel(t).QueueDeclarePassive(queue, true, false, false, false, nil)
	require.NoError(t, err)
	return q.Messages
}

// drain reads every message of queue, acked, and returns their message ids
// in queue order.
func drain(t *testing.T, queue string) []string {
	t.Helper()
	ch := rawChannel(t)
	var ids []string
	for {
		d, ok, err := ch.Get(queue, true)
		require.NoError(t, err)
		if !ok {
			return ids
		}
		ids = append(ids, d.MessageId)
	}
}

func ids(letters []transport.DeadLetter) []string {
	out := make([]string, len(letters))
	for i, l := range letters {
		out[i] = l.MessageID
	}
	return out
}

func TestListDeadLettersLeavesThemInTheQueue(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	for i := range 3 {
		deadLetter(t, b, tenant, fmt.Sprintf("m%d", i), fmt.Sprintf(`{"n":%d}`, i))
	}
	dlq := transport.DeadLetterQueueName(tenant)

	got, err := b.ListDeadLetters(testContext(t), tenant, 2)
	require.NoError(t, err)
	require.Equal(t, []string{"m0", "m1"}, ids(got))
	require.Equal(t, 3, queueLen(t, dlq), "listing removes nothing")

	got, err = b.ListDeadLetters(testContext(t), tenant, 10)
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.ElementsMatch(t, []string{"m0", "m1", "m2"}, ids(got))

	first := got[slices.Index(ids(got), "m0")]
	require.Equal(t, transport.ReasonRejected, first.Reason)
	require.Equal(t, "detail of m0", first.Detail)
	require.Equal(t, 5, first.Attempts)
	require.Equal(t, []byte(`{"n":0}`), first.Body)
	require.Equal(t, "application/json", first.ContentType)
	require.Equal(t, tenant, first.OriginalRoutingKey)
	require.True(t, first.PublishedAt.Equal(deadLetterPublishedAt), "published_at %s", first.PublishedAt)
	require.Equal(t, 3, queueLen(t, dlq))
}

func TestListDeadLettersEmptyQueue(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	got, err := b.ListDeadLetters(testContext(t), tenant, 10)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestListDeadLettersMissingQueue(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	_, err := b.ListDeadLetters(testContext(t), testenv.TenantID("transport"), 10)
	require.ErrorIs(t, err, transport.ErrQueueNotFound)

	_, err = b.ReplayDeadLetters(testContext(t), testenv.TenantID("transport"), nil, true)
	require.ErrorIs(t, err, transport.ErrQueueNotFound)
}

func TestDeadLettersRejectBadArguments(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	_, err := b.ListDeadLetters(testContext(t), "Bad/ID", 10)
	require.ErrorIs(t, err, transport.ErrInvalidTenantID)
	_, err = b.ListDeadLetters(testContext(t), "ok", 0)
	require.ErrorContains(t, err, "limit 0")

	_, err = b.ReplayDeadLetters(testContext(t), "Bad/ID", nil, true)
	require.ErrorIs(t, err, transport.ErrInvalidTenantID)
	_, err = b.ReplayDeadLetters(testContext(t), "ok", []string{"a"}, true)
	require.ErrorContains(t, err, "not both")

	n, err := b.ReplayDeadLetters(testContext(t), "ok", nil, false)
	require.NoError(t, err)
	require.Zero(t, n)
}

// A message the broker itself dead-lettered (rejected without requeue)
// carries x-death instead of the x-death-* headers of DeadLetter.
func TestListDeadLettersReadsBrokerDeathHeader(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("broker", 1)))
	ch := rawChannel(t)
	d := getMessageNoAck(t, ch, transport.QueueName(tenant))
	require.NoError(t, d.Nack(false, false))

	var got []transport.DeadLetter
	eventually(t, func() bool {
		var err error
		got, err = b.ListDeadLetters(testContext(t), tenant, 10)
		return err == nil && len(got) == 1
	}, "the rejected message reaches the dead-letter queue")
	require.Equal(t, "broker-0", got[0].MessageID)
	require.Equal(t, "rejected", got[0].Reason)
	require.Equal(t, 1, got[0].Attempts)
	require.Empty(t, got[0].Detail)
	require.False(t, got[0].PublishedAt.IsZero())
}

func getMessageNoAck(t *testing.T, ch *amqp.Channel, queue string) amqp.Delivery {
	t.Helper()
	var d amqp.Delivery
	eventually(t, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(queue, false)
		return err == nil && ok
	}, "a message in %s", queue)
	return d
}

func TestReplayDeadLettersByID(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	for _, id := range []string{"a", "b", "c", "d"} {
		deadLetter(t, b, tenant, id, `{"id":"`+id+`"}`)
	}

	n, err := b.ReplayDeadLetters(testContext(t), tenant, []string{"b", "d", "not-there"}, false)
	require.NoError(t, err)
	require.Equal(t, 2, n)

	replayed := getMessage(t, transport.QueueName(tenant))
	require.Equal(t, "b", replayed.MessageId)
	require.Equal(t, []byte(`{"id":"b"}`), replayed.Body)
	require.Equal(t, transport.ExchangeName, replayed.Exchange)
	require.Equal(t, tenant, replayed.RoutingKey)
	require.Equal(t, amqp.Persistent, replayed.DeliveryMode)
	require.Equal(t, deadLetterPublishedAt.Format(time.RFC3339Nano), replayed.Headers[transport.HeaderPublishedAt],
		"published_at survives the replay")
	for _, h := range []string{transport.HeaderDeathReason, transport.HeaderDeathDetail,
		transport.HeaderAttempts, transport.HeaderOriginalRoutingKey} {
		require.NotContains(t, replayed.Headers, h)
	}
	require.Equal(t, []string{"d"}, drain(t, transport.QueueName(tenant)))

	left, err := b.ListDeadLetters(testContext(t), tenant, 10)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"a", "c"}, ids(left))
}

func TestReplayAllDeadLetters(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	// More than one publish batch of the replay.
	const count = 250
	want := make([]string, count)
	for i := range count {
		want[i] = fmt.Sprintf("m%03d", i)
		deadLetter(t, b, tenant, want[i], "{}")
	}

	n, err := b.ReplayDeadLetters(testContext(t), tenant, nil, true)
	require.NoError(t, err)
	require.Equal(t, count, n)
	require.Zero(t, queueLen(t, transport.DeadLetterQueueName(tenant)))
	require.Equal(t, want, drain(t, transport.QueueName(tenant)), "replay keeps the queue order")
}

// A replayed message that is dead-lettered again at once must not make the
// replay loop: it reads only what was in the queue when it started.
func TestReplayAllStopsAtStartingDepth(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	for i := range 5 {
		deadLetter(t, b, tenant, fmt.Sprintf("m%d", i), "{}")
	}

	// A consumer that rejects everything sends each replayed message
	// straight back to the dead-letter queue.
	ch := rawChannel(t)
	deliveries, err := ch.Consume(transport.QueueName(tenant), "", false, false, false, false, nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for d := range deliveries {
			_ = d.Nack(false, false)
		}
	})
	t.Cleanup(func() {
		_ = ch.Close()
		wg.Wait()
	})

	n, err := b.ReplayDeadLetters(testContext(t), tenant, nil, true)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	eventually(t, func() bool { return queueLen(t, transport.DeadLetterQueueName(tenant)) == 5 },
		"every rejected message is back in the dead-letter queue")
}

// Without the tenant's queue the broker cannot route the copies, so
// nothing is acked and every dead letter stays.
func TestReplayWithoutTenantQueueKeepsDeadLetters(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	for i := range 3 {
		deadLetter(t, b, tenant, fmt.Sprintf("m%d", i), "{}")
	}
	_, err := rawChannel(t).QueueDelete(transport.QueueName(tenant), false, false, false)
	require.NoError(t, err)

	n, err := b.ReplayDeadLetters(testContext(t), tenant, nil, true)
	require.ErrorIs(t, err, transport.ErrUnroutable)
	require.Zero(t, n)
	eventually(t, func() bool { return queueLen(t, transport.DeadLetterQueueName(tenant)) == 3 },
		"the dead letters are back in their queue")
}

// Two replays at once never move a message twice, because a message one of
// them holds is invisible to the other.
func TestConcurrentReplaysMoveEachMessageOnce(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	const count = 120
	for i := range count {
		deadLetter(t, b, tenant, fmt.Sprintf("m%03d", i), "{}")
	}

	var wg sync.WaitGroup
	results := make(chan int, 4)
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			n, err := b.ReplayDeadLetters(testContext(t), tenant, nil, true)
			results <- n
			errs <- err
		})
	}
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	total := 0
	for n := range results {
		total += n
	}
	require.Equal(t, count, total)

	moved := drain(t, transport.QueueName(tenant))
	require.Len(t, moved, count)
	slices.Sort(moved)
	require.Len(t, slices.Compact(moved), count, "no message is in the tenant's queue twice")
}

// A listing that runs during a replay returns what it held to the queue,
// so the replayed and the remaining messages add up.
func TestListDuringReplayLosesNothing(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	const count = 60
	for i := range count {
		deadLetter(t, b, tenant, fmt.Sprintf("m%03d", i), "{}")
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		for range 5 {
			_, err := b.ListDeadLetters(testContext(t), tenant, 20)
			if err != nil {
				t.Errorf("list: %v", err)
			}
		}
	})
	n, err := b.ReplayDeadLetters(testContext(t), tenant, nil, true)
	wg.Wait()
	require.NoError(t, err)

	eventually(t, func() bool {
		return queueLen(t, transport.DeadLetterQueueName(tenant)) == count-n
	}, "replayed (%d) and remaining dead letters add up to %d", n, count)
	require.Len(t, drain(t, transport.QueueName(tenant)), n)
}
