package transport_test

import (
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

func TestQueueNames(t *testing.T) {
	t.Parallel()

	require.Equal(t, "tenant.acme", transport.QueueName("acme"))
	require.Equal(t, "tenant.acme.dlq", transport.DeadLetterQueueName("acme"))
}

func TestValidateTenantID(t *testing.T) {
	t.Parallel()

	valid := []string{"a", "0", "acme", "acme-1_b", strings.Repeat("a", 63)}
	for _, id := range valid {
		require.NoError(t, transport.ValidateTenantID(id), id)
	}

	invalid := []string{
		"", "-acme", "_acme", "Acme", "ac.me", "ac#me", "ac*me", "ac me", "ac/me",
		"../etc", "acme\n", "ácme", strings.Repeat("a", 64), "a\x00b",
	}
	for _, id := range invalid {
		require.ErrorIs(t, transport.ValidateTenantID(id), transport.ErrInvalidTenantID, "%q", id)
	}
}

func TestTopologyRejectsInvalidTenantID(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	ctx := testContext(t)
	for _, id := range []string{"", "a.b", "#", strings.Repeat("x", 300)} {
		require.ErrorIs(t, b.DeclareTenant(ctx, id), transport.ErrInvalidTenantID)
		require.ErrorIs(t, b.DeleteTenant(ctx, id), transport.ErrInvalidTenantID)
		_, _, err := b.QueueDepth(ctx, id)
		require.ErrorIs(t, err, transport.ErrInvalidTenantID)
		_, err = b.Consume(ctx, id, 1)
		require.ErrorIs(t, err, transport.ErrInvalidTenantID)
		require.ErrorIs(t, b.Publish(ctx, id, messages("x", 1)), transport.ErrInvalidTenantID)
	}
}

func TestDeclareTenantIsIdempotent(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.DeclareTenant(testContext(t), tenant))

	depth, consumers, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Zero(t, depth)
	require.Zero(t, consumers)

	// Declaring passively succeeds only for queues that exist.
	ch := rawChannel(t)
	_, err = ch.QueueDeclarePassive(transport.DeadLetterQueueName(tenant), true, false, false, false, nil)
	require.NoError(t, err)
}

func TestDeclareTenantDeadLettersRejectedMessages(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("rejected", 1)))

	c, err := b.Consume(testContext(t), tenant, 1)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	d := receive(t, c, 1)[0]
	require.NoError(t, d.Nack(false, false))

	// The queue arguments route the rejected message to the dead-letter
	// queue through the default exchange.
	dead := getMessage(t, transport.DeadLetterQueueName(tenant))
	require.Equal(t, "rejected-0", dead.MessageId)
}

func TestDeclareTenantConflictingQueue(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := testenv.TenantID("conflict")
	queue := transport.QueueName(tenant)
	deleteQueuesAtCleanup(t, queue, transport.DeadLetterQueueName(tenant))

	// An existing queue with other arguments than DeclareTenant uses.
	ch := rawChannel(t)
	_, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-max-length": int32(5)})
	require.NoError(t, err)

	err = b.DeclareTenant(testContext(t), tenant)
	require.ErrorIs(t, err, transport.ErrTopologyConflict)
	require.ErrorContains(t, err, queue)

	// Only the throwaway channel died: the Broker still works.
	require.True(t, b.Connected())
	other := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), other, messages("still-works", 1)))
	require.ErrorIs(t, b.DeclareTenant(testContext(t), tenant), transport.ErrTopologyConflict,
		"a second attempt fails the same way")
}

func TestDeleteTenant(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("doomed", 3)))

	require.NoError(t, b.DeleteTenant(testContext(t), tenant))
	_, _, err := b.QueueDepth(testContext(t), tenant)
	require.ErrorIs(t, err, transport.ErrQueueNotFound)

	ch := rawChannel(t)
	_, err = ch.QueueDeclarePassive(transport.DeadLetterQueueName(tenant), true, false, false, false, nil)
	require.Error(t, err, "the dead-letter queue is gone too")

	require.NoError(t, b.DeleteTenant(testContext(t), tenant), "deleting again is not an error")
	require.NoError(t, b.DeleteTenant(testContext(t), testenv.TenantID("never-declared")))
}

func TestQueueDepthCountsReadyMessagesAndConsumers(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("depth", 7)))

	depth, consumers, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.Equal(t, 7, depth)
	require.Zero(t, consumers)

	c, err := b.Consume(testContext(t), tenant, 2)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, c.Close()) })

	// Two messages are delivered (the prefetch) and no longer ready.
	eventually(t, func() bool {
		depth, consumers, err = b.QueueDepth(testContext(t), tenant)
		return err == nil && depth == 5 && consumers == 1
	}, "queue depth 5 with 1 consumer")
}

func TestQueueDepthMissingQueue(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	_, _, err := b.QueueDepth(testContext(t), testenv.TenantID("missing"))
	require.ErrorIs(t, err, transport.ErrQueueNotFound)
	require.True(t, b.Connected())
}
