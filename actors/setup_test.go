package actors_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/actors"
	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/metrics"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// shared is one database and one broker connection for every test of the
// package; each test uses its own tenant, so they do not interfere.
var shared struct {
	once   sync.Once
	err    error
	dbErr  error
	url    string
	store  *persistence.Postgres
	broker *transport.Broker
}

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	url, drop, err := testenv.CreateDatabase(ctx)
	cancel()
	shared.url, shared.dbErr = url, err
	code := m.Run()
	if shared.broker != nil {
		shared.broker.Close()
	}
	if shared.store != nil {
		shared.store.Close()
	}
	if drop != nil {
		drop()
	}
	os.Exit(code)
}

func testLogger() *slog.Logger {
	if os.Getenv("TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// services returns the package's store and broker, creating them on first
// use.
func services(t *testing.T) (*persistence.Postgres, *transport.Broker) {
	t.Helper()
	testenv.RequireDatabase(t, shared.dbErr)
	rabbitURL := testenv.RequireRabbitMQ(t)
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shared.store, shared.err = persistence.Open(ctx, shared.url, testLogger())
		if shared.err != nil {
			return
		}
		if shared.err = shared.store.Migrate(ctx); shared.err != nil {
			return
		}
		shared.broker, shared.err = transport.Dial(ctx, transport.Config{URL: rabbitURL}, testLogger(), transport.Hooks{})
	})
	require.NoError(t, shared.err)
	return shared.store, shared.broker
}

type fixture struct {
	t       *testing.T
	store   *persistence.Postgres
	broker  *transport.Broker
	system  *actor.ActorSystem
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	deps    *actors.Deps
	tenant  string
	state   *actors.TenantState
	pid     *actor.PID
}

// setup creates a tenant (row, partition and queues) and the dependencies
// of its actor; spawn starts the actor.
func setup(t *testing.T, opts actors.Options, wrap func(actors.Store) actors.Store) *fixture {
	t.Helper()
	store, broker := services(t)
	f := &fixture{t: t, store: store, broker: broker, reg: prometheus.NewRegistry()}
	f.metrics = metrics.New(f.reg)
	f.system = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return testLogger()
	}))
	t.Cleanup(f.system.Shutdown)

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var s actors.Store = store
	if wrap != nil {
		s = wrap(store)
	}
	f.deps = &actors.Deps{Store: s, Broker: broker, Metrics: f.metrics, Logger: testLogger(),
		Options: opts, Context: ctx}

	f.tenant = testenv.TenantID("act")
	_, err := store.CreateTenant(ctx, persistence.Tenant{ID: f.tenant, Name: f.tenant, WorkerCount: 1})
	require.NoError(t, err)
	require.NoError(t, broker.DeclareTenant(ctx, f.tenant))
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		_ = broker.DeleteTenant(cctx, f.tenant)
	})
	return f
}

func (f *fixture) spawn(workers int) {
	f.state = &actors.TenantState{}
	f.pid = f.system.Root.Spawn(actors.NewTenantProps(f.tenant, workers, f.deps, f.state))
	f.t.Cleanup(func() { f.system.Root.Stop(f.pid) })
}

func (f *fixture) request(msg any) any {
	f.t.Helper()
	res, err := f.system.Root.RequestFuture(f.pid, msg, 60*time.Second).Result()
	require.NoError(f.t, err)
	return res
}

// publish sends n JSON messages with ids prefix-from.. through the broker.
func (f *fixture) publish(prefix string, from, n int) {
	f.t.Helper()
	msgs := make([]transport.OutgoingMessage, 0, n)
	for i := from; i < from+n; i++ {
		msgs = append(msgs, transport.OutgoingMessage{
			MessageID:   fmt.Sprintf("%s-%d", prefix, i),
			Body:        []byte(fmt.Sprintf(`{"n":%d}`, i)),
			PublishedAt: time.Now(),
		})
	}
	for len(msgs) > 0 {
		k := min(len(msgs), 500)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		require.NoError(f.t, f.broker.Publish(ctx, f.tenant, msgs[:k]))
		cancel()
		msgs = msgs[k:]
	}
}

// publishRaw sends one message with the given body and id.
func (f *fixture) publishRaw(id string, body []byte) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(f.t, f.broker.Publish(ctx, f.tenant,
		[]transport.OutgoingMessage{{MessageID: id, Body: body, PublishedAt: time.Now()}}))
}

func (f *fixture) count() int64 {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := f.store.CountMessages(ctx, f.tenant)
	require.NoError(f.t, err)
	return n
}

func (f *fixture) waitCount(want int64, timeout time.Duration) {
	f.t.Helper()
	eventually(f.t, timeout, fmt.Sprintf("%d stored messages", want), func() bool { return f.count() >= want })
	require.Equal(f.t, want, f.count())
}

// queueDepth returns the ready messages of a queue, after unacked ones
// have been requeued (callers stop the consumer first).
func (f *fixture) queueDepth(queue string) int {
	f.t.Helper()
	conn, err := amqp.Dial(testenv.RabbitMQURL())
	require.NoError(f.t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(f.t, err)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	require.NoError(f.t, err)
	return q.Messages
}

// deleteQueue deletes a queue from outside the server.
func (f *fixture) deleteQueue(queue string) {
	f.t.Helper()
	conn, err := amqp.Dial(testenv.RabbitMQURL())
	require.NoError(f.t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(f.t, err)
	_, err = ch.QueueDelete(queue, false, false, false)
	require.NoError(f.t, err)
}

// deadLetters reads up to want messages of the tenant's dead-letter queue,
// waiting up to timeout for them. A queue that does not exist yet (the
// worker declares it again after it was deleted) counts as empty.
func (f *fixture) deadLetters(want int, timeout time.Duration) []amqp.Delivery {
	f.t.Helper()
	conn, err := amqp.Dial(testenv.RabbitMQURL())
	require.NoError(f.t, err)
	defer conn.Close()
	var out []amqp.Delivery
	var ch *amqp.Channel
	deadline := time.Now().Add(timeout)
	for len(out) < want && time.Now().Before(deadline) {
		if ch == nil || ch.IsClosed() {
			ch, err = conn.Channel()
			require.NoError(f.t, err)
		}
		d, ok, err := ch.Get(transport.DeadLetterQueueName(f.tenant), true)
		var amqpErr *amqp.Error
		if errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound {
			ok, err = false, nil // the 404 closed the channel; open another
		}
		require.NoError(f.t, err)
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		out = append(out, d)
	}
	return out
}

func (f *fixture) counter(c *prometheus.CounterVec, labels ...string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(labels...))
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

// lockPartition takes an ACCESS EXCLUSIVE lock on the tenant's partition in
// a transaction on a connection of its own, as an operator's migration
// would, and holds it until release is called or the test ends.
func (f *fixture) lockPartition() (release func()) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, shared.url)
	require.NoError(f.t, err)
	var partition string
	err = conn.QueryRow(ctx, `SELECT partition_name FROM tenants WHERE id = $1`, f.tenant).Scan(&partition)
	require.NoError(f.t, err)
	tx, err := conn.Begin(ctx)
	require.NoError(f.t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{partition}.Sanitize()+" IN ACCESS EXCLUSIVE MODE")
	require.NoError(f.t, err)

	var once sync.Once
	release = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = tx.Rollback(ctx)
			_ = conn.Close(ctx)
		})
	}
	f.t.Cleanup(release)
	return release
}

// faultyStore wraps the real store to inject failures into InsertBatch.
type faultyStore struct {
	actors.Store
	fail func(msgs []persistence.Message) error // nil error: call the real store
	hits atomic.Int64
}

func (s *faultyStore) InsertBatch(ctx context.Context, tenantID string,
	msgs []persistence.Message) ([]persistence.Result, error) {
	if err := s.fail(msgs); err != nil {
		s.hits.Add(1)
		return nil, err
	}
	return s.Store.InsertBatch(ctx, tenantID, msgs)
}
