package transport

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	t.Parallel()

	const minWait, maxWait = 100 * time.Millisecond, 2 * time.Second
	for attempt := 1; attempt <= 40; attempt++ {
		base := min(minWait<<(min(attempt, 30)-1), maxWait)
		for range 50 {
			wait := backoff(attempt, minWait, maxWait)
			require.GreaterOrEqual(t, wait, base/2, "attempt %d", attempt)
			require.LessOrEqual(t, wait, base, "attempt %d", attempt)
		}
	}
}

func TestBackoffHasJitter(t *testing.T) {
	t.Parallel()

	seen := map[time.Duration]bool{}
	for range 20 {
		seen[backoff(5, 100*time.Millisecond, time.Minute)] = true
	}
	require.Greater(t, len(seen), 1, "waits of the same attempt differ")
}

func TestBackoffHugeAttemptDoesNotOverflow(t *testing.T) {
	t.Parallel()

	wait := backoff(1_000_000, time.Nanosecond, time.Duration(1<<62))
	require.Positive(t, wait)
	require.LessOrEqual(t, wait, time.Duration(1<<62))
}

func TestTruncateUTF8(t *testing.T) {
	t.Parallel()

	require.Equal(t, "short", truncateUTF8("short", 10))
	require.Equal(t, "ab", truncateUTF8("abc", 2))
	require.Equal(t, "é", truncateUTF8("éé", 3), "a rune is never split")
	require.Equal(t, "\uFFFDx", truncateUTF8("\xffx", 10))

	long := truncateUTF8(strings.Repeat("€", 1000), maxDetailBytes)
	require.LessOrEqual(t, len(long), maxDetailBytes)
	require.True(t, utf8.ValidString(long))
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()

	cfg, err := Config{URL: "amqp://guest:guest@127.0.0.1:5672/"}.withDefaults()
	require.NoError(t, err)
	require.Equal(t, DefaultReconnectMin, cfg.ReconnectMin)
	require.Equal(t, DefaultReconnectMax, cfg.ReconnectMax)
	require.Equal(t, DefaultPublishChannels, cfg.PublishChannels)
	require.Equal(t, DefaultPublishTimeout, cfg.PublishTimeout)
	require.Equal(t, DefaultDialTimeout, cfg.DialTimeout)
}

func TestConnectionNames(t *testing.T) {
	t.Parallel()

	logger := slog.New(slog.DiscardHandler)
	require.Equal(t, "messaging-consume", newLink("consume", Config{}, logger).name)
	require.Equal(t, "messaging-publish-host-1", newLink("publish", Config{ConnectionName: "host-1"}, logger).name)
}

func TestPoolReplacesDeadChannel(t *testing.T) {
	t.Parallel()

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	cfg := Config{URL: testenv.RequireRabbitMQ(t), PublishChannels: 1, PublishTimeout: 5 * time.Second}
	b, err := Dial(ctx, cfg, slog.New(slog.DiscardHandler), Hooks{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })

	// The broker closes a channel that publishes to a missing exchange
	// (404 NOT_FOUND). That is the broker's reply to the request, not an outage.
	missing := "missing-exchange-" + testenv.RandomSuffix()
	err = b.send(ctx, missing, "key", []amqp.Publishing{{MessageId: "m", Body: []byte(`1`)}})
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrUnavailable)
	require.True(t, hasCode(err, amqp.NotFound), "error %v", err)

	// The dead channel is replaced: the default exchange routes to any
	// queue by name, so publishing there succeeds.
	queue := "transport-pool-" + testenv.RandomSuffix()
	declareQueue(t, b, queue)
	require.NoError(t, b.send(ctx, "", queue, []amqp.Publishing{{MessageId: "n", Body: []byte(`1`)}}))

	cc := <-b.pool.slots
	require.NotNil(t, cc)
	require.True(t, cc.usable())
	closeChannel(cc.ch)
	b.pool.slots <- cc
	require.NoError(t, b.send(ctx, "", queue, []amqp.Publishing{{MessageId: "o", Body: []byte(`1`)}}))

	replaced := <-b.pool.slots
	require.NotSame(t, cc, replaced)
	b.pool.slots <- replaced
}

// declareQueue declares an exclusive queue, which goes away with the
// Broker's consume connection.
func declareQueue(t *testing.T, b *Broker, name string) {
	t.Helper()
	conn, err := b.consume.current()
	require.NoError(t, err)
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare(name, false, false, true, false, nil)
	require.NoError(t, err)
}
