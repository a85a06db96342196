package transport_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

func TestDialRejectsInvalidConfig(t *testing.T) {
	t.Parallel()

	cases := map[string]transport.Config{
		"empty url":          {},
		"http url":           {URL: "http://guest:guest@127.0.0.1:5672/"},
		"negative timeout":   {URL: "amqp://127.0.0.1/", PublishTimeout: -time.Second},
		"min above max":      {URL: "amqp://127.0.0.1/", ReconnectMin: time.Minute, ReconnectMax: time.Second},
		"negative channels":  {URL: "amqp://127.0.0.1/", PublishChannels: -1},
		"malformed password": {URL: "amqp://guest:se%zzcret@127.0.0.1:5672/"},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := transport.Dial(t.Context(), cfg, nil, transport.Hooks{})
			require.Error(t, err)
			require.Nil(t, b)
			require.NotContains(t, err.Error(), "secret", "the error must not show the password")
		})
	}
}

func TestDialFailsWhenContextEnds(t *testing.T) {
	t.Parallel()

	// Port 1 on loopback refuses connections, so every attempt fails.
	cfg := transport.Config{URL: "amqp://guest:guest@127.0.0.1:1/", ReconnectMin: 10 * time.Millisecond}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()

	start := time.Now()
	b, err := transport.Dial(ctx, cfg, testLogger(t), transport.Hooks{})
	require.Error(t, err)
	require.Nil(t, b)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 3*time.Second)
}

func TestDialFailsFastOnBadCredentials(t *testing.T) {
	t.Parallel()
	testenv.RequireRabbitMQ(t)

	cfg := transport.Config{URL: "amqp://guest:wrong-password@127.0.0.1:5672/"}
	start := time.Now()
	b, err := transport.Dial(testContext(t), cfg, testLogger(t), transport.Hooks{})
	require.Error(t, err)
	require.Nil(t, b)
	require.NotContains(t, err.Error(), "wrong-password")
	require.Less(t, time.Since(start), 5*time.Second, "bad credentials must not be retried")
}

func TestBrokerConnectedAndClose(t *testing.T) {
	t.Parallel()

	var connected atomic.Int32
	b, _ := setup(t, func(_ *transport.Config, h *transport.Hooks) {
		h.OnConnected = func() { connected.Add(1) }
	})
	require.True(t, b.Connected())
	require.Equal(t, int32(1), connected.Load())

	require.NoError(t, b.Close())
	require.False(t, b.Connected())
	require.NoError(t, b.Close(), "a second Close is a no-op")
}

func TestBrokerSurvivesPanickingHook(t *testing.T) {
	t.Parallel()

	b, _ := setup(t, func(_ *transport.Config, h *transport.Hooks) {
		h.OnConnected = func() { panic("hook failure") }
	})
	require.True(t, b.Connected())
}

func TestCallsAfterCloseReturnUnavailable(t *testing.T) {
	t.Parallel()

	b, _ := setup(t)
	tenant := newTenant(t, b)
	require.NoError(t, b.Close())

	start := time.Now()
	err := b.Publish(t.Context(), tenant, messages("closed", 1))
	require.ErrorIs(t, err, transport.ErrUnavailable)
	require.Less(t, time.Since(start), time.Second)

	_, err = b.Consume(t.Context(), tenant, 1)
	require.ErrorIs(t, err, transport.ErrUnavailable)
	require.ErrorIs(t, b.DeclareTenant(t.Context(), tenant), transport.ErrUnavailable)
	require.ErrorIs(t, b.DeleteTenant(t.Context(), tenant), transport.ErrUnavailable)
	_, _, err = b.QueueDepth(t.Context(), tenant)
	require.ErrorIs(t, err, transport.ErrUnavailable)
}

func TestReconnectAfterConsumeConnectionClosed(t *testing.T) {
	t.Parallel()

	var reconnects, disconnects, connects atomic.Int32
	b, cfg := setup(t, func(_ *transport.Config, h *transport.Hooks) {
		h.OnReconnect = func() { reconnects.Add(1) }
		h.OnDisconnected = func(error) { disconnects.Add(1) }
		h.OnConnected = func() { connects.Add(1) }
	})
	tenant := newTenant(t, b)
	c, err := b.Consume(testContext(t), tenant, 10)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	reconnected := b.Reconnected()
	closeConnection(t, "messaging-consume-"+cfg.ConnectionName)

	select {
	case <-reconnected:
	case <-time.After(waitTimeout):
		t.Fatalf("Reconnected did not fire within %s", waitTimeout)
	}
	eventually(t, b.Connected, "broker connected again")
	require.Equal(t, int32(1), reconnects.Load())
	require.Equal(t, int32(1), disconnects.Load())
	require.Equal(t, int32(2), connects.Load())

	// The old consumer died with its connection.
	requireClosed(t, c)
	require.ErrorIs(t, c.Err(), transport.ErrUnavailable)

	c2, err := b.Consume(testContext(t), tenant, 10)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c2.Close() })
	require.NoError(t, b.Publish(testContext(t), tenant, messages("after-reconnect", 1)))
	d := receive(t, c2, 1)[0]
	require.Equal(t, "after-reconnect-0", d.MessageId)
	require.NoError(t, d.Ack(false))
}

func TestReconnectAfterPublishConnectionClosed(t *testing.T) {
	t.Parallel()

	var reconnects atomic.Int32
	b, cfg := setup(t, func(_ *transport.Config, h *transport.Hooks) {
		h.OnReconnect = func() { reconnects.Add(1) }
	})
	tenant := newTenant(t, b)
	require.NoError(t, b.Publish(testContext(t), tenant, messages("before", 1)))

	closeConnection(t, "messaging-publish-"+cfg.ConnectionName)

	// Each call either fails fast with ErrUnavailable or succeeds on the
	// new connection; none may hang past PublishTimeout.
	var published bool
	deadline := time.Now().Add(waitTimeout)
	for !published && time.Now().Before(deadline) {
		start := time.Now()
		err := b.Publish(t.Context(), tenant, messages("after", 1))
		require.Less(t, time.Since(start), cfg.PublishTimeout+time.Second)
		if err != nil {
			require.ErrorIs(t, err, transport.ErrUnavailable)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		published = true
	}
	require.True(t, published, "Publish did not succeed again within %s", waitTimeout)
	eventually(t, b.Connected, "broker connected again")
	require.Zero(t, reconnects.Load(), "OnReconnect is only for the consume connection")

	depth, _, err := b.QueueDepth(testContext(t), tenant)
	require.NoError(t, err)
	require.GreaterOrEqual(t, depth, 2, "both confirmed messages are in the queue")
}

func TestPublishDuringConnectionLossNeverHangs(t *testing.T) {
	t.Parallel()

	b, cfg := setup(t, func(c *transport.Config, _ *transport.Hooks) {
		c.PublishTimeout = 2 * time.Second
	})
	tenant := newTenant(t, b)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- publishLoop(ctx, b, tenant, cfg.PublishTimeout) }()
	}

	time.Sleep(200 * time.Millisecond)
	closeConnection(t, "messaging-publish-"+cfg.ConnectionName)
	eventually(t, b.Connected, "broker connected again")
	time.Sleep(500 * time.Millisecond)
	cancel()

	for range cap(errs) {
		select {
		case err := <-errs:
			require.NoError(t, err)
		case <-time.After(waitTimeout):
			t.Fatal("a publisher did not stop")
		}
	}
}

// publishLoop publishes until ctx ends. It returns an error when a call
// took longer than timeout or failed with an error other than
// ErrUnavailable.
func publishLoop(ctx context.Context, b *transport.Broker, tenant string, timeout time.Duration) error {
	for ctx.Err() == nil {
		start := time.Now()
		err := b.Publish(context.Background(), tenant, messages(testenv.RandomSuffix(), 5))
		if took := time.Since(start); took > timeout+time.Second {
			return errors.New("publish took " + took.String())
		}
		if err != nil && !errors.Is(err, transport.ErrUnavailable) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func TestCloseDuringPublishReturnsPromptly(t *testing.T) {
	t.Parallel()

	b, _ := setup(t, func(c *transport.Config, _ *transport.Hooks) {
		c.PublishChannels = 1
		c.PublishTimeout = 30 * time.Second
	})
	tenant := newTenant(t, b)

	errs := make(chan error, 6)
	for range cap(errs) {
		go func() { errs <- b.Publish(t.Context(), tenant, messages(testenv.RandomSuffix(), 300)) }()
	}
	time.Sleep(20 * time.Millisecond)

	start := time.Now()
	require.NoError(t, b.Close())
	require.Less(t, time.Since(start), 5*time.Second)

	for range cap(errs) {
		select {
		case err := <-errs:
			if err != nil {
				require.ErrorIs(t, err, transport.ErrUnavailable)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a Publish call did not return after Close")
		}
	}
}
