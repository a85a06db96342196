package transport_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

func TestConsumeDeliversInOrderWithManualAck(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("order", 5)))

	c, err := b.Consume(testContext(t), tenant, 10)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	got := receive(t, c, 5)
	for i, d := range got {
		require.Equal(t, messages("order", 5)[i].MessageID, d.MessageId)
		require.False(t, d.Redelivered)
	}

	_, consumers, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Equal(t, 1, consumers)

	for _, d := range got {
		require.NoError(t, d.Ack(false))
	}
	require.NoError(t, c.Close())
	requireClosed(t, c)
	require.NoError(t, c.Err())

	depth, consumers, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Zero(t, depth, "acked messages are gone")
	require.Zero(t, consumers)
}

func TestConsumePrefetchLimitsUnacked(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("prefetch", 5)))

	c, err := b.Consume(testContext(t), tenant, 2)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	first := receive(t, c, 2)
	select {
	case d := <-c.Deliveries():
		t.Fatalf("got delivery %s beyond the prefetch of 2", d.MessageId)
	case <-time.After(200 * time.Millisecond):
	}

	require.NoError(t, first[0].Ack(false))
	require.Equal(t, "prefetch-2", receive(t, c, 1)[0].MessageId)
}

func TestConsumeRejectsInvalidPrefetch(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	for _, prefetch := range []int{-1, 0, 65536} {
		_, err := b.Consume(testContext(t), tenant, prefetch)
		require.ErrorContains(t, err, "invalid prefetch", "prefetch %d", prefetch)
	}
}

func TestConsumeMissingQueue(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	_, err := b.Consume(testContext(t), testenv.TenantID("missing"), 1)
	require.ErrorIs(t, err, transport.ErrQueueNotFound)
	require.NotErrorIs(t, err, transport.ErrUnavailable)
	require.True(t, b.Connected(), "the failed consume closed only its own channel")
}

func TestConsumerCancelDeliversInFlight(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("inflight", 5)))

	c, err := b.Consume(testContext(t), tenant, 10)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	// Wait until the broker sent all five to the client, unread.
	eventually(t, func() bool {
		depth, _, err := b.QueueDepth(testContext(t), tenant)
		return err == nil && depth == 0
	}, "all messages delivered")

	require.NoError(t, c.Cancel())
	got := receive(t, c, 5)
	requireClosed(t, c)
	require.NoError(t, c.Err())

	// The channel stays open after Cancel, so the deliveries can be acked.
	for _, d := range got {
		require.NoError(t, d.Ack(false))
	}
	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "Close is idempotent")

	depth, consumers, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Zero(t, depth)
	require.Zero(t, consumers)
}

func TestConsumerCloseRequeuesUnacked(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("requeue", 3)))

	c, err := b.Consume(testContext(t), tenant, 10)
	require.NoError(t, err)
	got := receive(t, c, 3)
	require.NoError(t, got[0].Ack(false))
	require.NoError(t, c.Close())
	requireClosed(t, c)
	require.NoError(t, c.Err())
	require.Error(t, got[1].Ack(false), "acking on a closed channel fails")

	c2, err := b.Consume(testContext(t), tenant, 10)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c2.Close()) })
	again := receive(t, c2, 2)
	ids := []string{again[0].MessageId, again[1].MessageId}
	require.ElementsMatch(t, []string{"requeue-1", "requeue-2"}, ids)
	require.True(t, again[0].Redelivered)
	require.True(t, again[1].Redelivered)
}

func TestConsumerClosesWhenQueueDeleted(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	c, err := b.Consume(testContext(t), tenant, 1)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	// Deleted from outside, as an operator would.
	_, err = rawChannel(t).QueueDelete(transport.QueueName(tenant), false, false, false)
	require.NoError(t, err)

	requireClosed(t, c)
	require.ErrorIs(t, c.Err(), transport.ErrConsumerCancelled)
	require.ErrorContains(t, c.Err(), transport.QueueName(tenant))
	require.True(t, b.Connected())
}

func TestConsumerErrAfterBrokerClose(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	c, err := b.Consume(testContext(t), tenant, 1)
	require.NoError(t, err)

	require.NoError(t, b.Close())
	requireClosed(t, c)
	require.ErrorIs(t, c.Err(), transport.ErrUnavailable)
	require.NoError(t, c.Close())
}

func TestManyConsumersOnOneConnection(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenants := make([]string, 10)
	consumers := make([]*transport.Consumer, len(tenants))
	for i := range tenants {
		tenants[i] = newTenant(t, b)
		c, err := b.Consume(testContext(t), tenants[i], 5)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, c.Close()) })
		consumers[i] = c
	}

	for i, tenant := range tenants {
		require.NoError(t, b.Publish(testContext(t), tenant, messages(tenant, 2)))
		for _, d := range receive(t, consumers[i], 2) {
			require.Equal(t, tenant, d.RoutingKey, "each tenant gets only its own messages")
			require.NoError(t, d.Ack(false))
		}
	}
}

func TestConsumerCancelAndCloseInAnyOrder(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)

	c, err := b.Consume(testContext(t), tenant, 1)
	require.NoError(t, err)
	require.NoError(t, c.Cancel())
	require.NoError(t, c.Cancel(), "a second Cancel is harmless")
	requireClosed(t, c)
	require.NoError(t, c.Close())
	require.NoError(t, c.Cancel(), "Cancel after Close is a no-op")
	require.NoError(t, c.Err())

	c2, err := b.Consume(testContext(t), tenant, 1)
	require.NoError(t, err)
	require.NoError(t, c2.Close())
	requireClosed(t, c2)
	require.NoError(t, c2.Cancel())
	require.NoError(t, c2.Err())
}
