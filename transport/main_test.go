package transport_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait on the broker in these tests.
const waitTimeout = 15 * time.Second

// testContext returns a context that ends with the test or after
// waitTimeout.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// setup dials a Broker with fast reconnects and a connection name unique to
// the test, and closes it when the test ends.
func setup(t *testing.T, opts ...func(*transport.Config, *transport.Hooks)) (*transport.Broker, transport.Config) {
	t.Helper()
	cfg := transport.Config{
		URL:            testenv.RequireRabbitMQ(t),
		ReconnectMin:   20 * time.Millisecond,
		ReconnectMax:   500 * time.Millisecond,
		PublishTimeout: 5 * time.Second,
		ConnectionName: "test-" + testenv.RandomSuffix(),
	}
	var hooks transport.Hooks
	for _, opt := range opts {
		opt(&cfg, &hooks)
	}

	b, err := transport.Dial(testContext(t), cfg, testLogger(t), hooks)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b, cfg
}

// testLogger writes the Broker's log to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newTenant declares a tenant with a unique id and deletes its queues when
// the test ends, over a connection of its own so that the cleanup works
// after the test closed its Broker.
func newTenant(t *testing.T, b *transport.Broker) string {
	t.Helper()
	id := testenv.TenantID("transport")
	deleteQueuesAtCleanup(t, transport.QueueName(id), transport.DeadLetterQueueName(id))
	require.NoError(t, b.DeclareTenant(testContext(t), id))
	return id
}

func deleteQueuesAtCleanup(t *testing.T, queues ...string) {
	t.Helper()
	t.Cleanup(func() {
		ch := rawChannel(t)
		for _, q := range queues {
			_, err := ch.QueueDelete(q, false, false, false)
			require.NoError(t, err, "delete queue %s", q)
		}
	})
}

// rawChannel opens a channel on a connection that bypasses the package
// under test, for setting up and inspecting the broker from outside.
func rawChannel(t *testing.T) *amqp.Channel {
	t.Helper()
	conn, err := amqp.DialConfig(testenv.RequireRabbitMQ(t), amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })

	ch, err := conn.Channel()
	require.NoError(t, err)
	return ch
}

// getMessage polls queue until it holds a message and returns it acked.
func getMessage(t *testing.T, queue string) amqp.Delivery {
	t.Helper()
	ch := rawChannel(t)
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		require.NoError(t, err)
		if ok {
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no message in queue %s after %s", queue, waitTimeout)
	return amqp.Delivery{}
}

// receive reads n deliveries or fails after waitTimeout.
func receive(t *testing.T, c *transport.Consumer, n int) []amqp.Delivery {
	t.Helper()
	var got []amqp.Delivery
	timeout := time.After(waitTimeout)
	for len(got) < n {
		select {
		case d, ok := <-c.Deliveries():
			require.True(t, ok, "deliveries closed after %d of %d: %v", len(got), n, c.Err())
			got = append(got, d)
		case <-timeout:
			t.Fatalf("received %d of %d deliveries within %s", len(got), n, waitTimeout)
		}
	}
	return got
}

// requireClosed waits until the consumer's deliveries channel closes,
// discarding deliveries that still arrive.
func requireClosed(t *testing.T, c *transport.Consumer) {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-c.Deliveries():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("deliveries still open after %s", waitTimeout)
		}
	}
}

// eventually polls cond every 20ms until it holds or waitTimeout passes.
func eventually(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, waitTimeout, 20*time.Millisecond, fmt.Sprintf(format, args...))
}

// messages returns n messages with ids prefix-0 ... prefix-(n-1).
func messages(prefix string, n int) []transport.OutgoingMessage {
	msgs := make([]transport.OutgoingMessage, n)
	for i := range msgs {
		msgs[i] = transport.OutgoingMessage{
			MessageID:   fmt.Sprintf("%s-%d", prefix, i),
			Body:        fmt.Appendf(nil, `{"n":%d}`, i),
			PublishedAt: time.Now(),
		}
	}
	return msgs
}

// closeConnection closes the broker connection whose connection_name is
// name, with rabbitmqctl, which must run on this machine.
func closeConnection(t *testing.T, name string) {
	t.Helper()
	out := rabbitmqctl(t, "list_connections", "pid", "client_properties", "--no-table-headers")

	want := fmt.Sprintf(`{"connection_name",%q}`, name)
	var pid string
	scanner := bufio.NewScanner(strings.NewReader(out))
	scanner.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for scanner.Scan() {
		fields := strings.SplitN(scanner.Text(), "\t", 2)
		if len(fields) == 2 && strings.Contains(fields[1], want) {
			pid = fields[0]
		}
	}
	require.NotEmpty(t, pid, "no connection named %s in:\n%s", name, out)

	rabbitmqctl(t, "close_connection", pid, "transport fault test")
}

// rabbitmqctl runs rabbitmqctl quietly and returns its output.
func rabbitmqctl(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("rabbitmqctl is not installed; the fault tests need it on the broker's machine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	require.NoError(t, err, "rabbitmqctl %v: %s", args, out)
	return strings.TrimSpace(string(out))
}
