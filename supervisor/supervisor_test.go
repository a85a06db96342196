package supervisor_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/actors"
	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/metrics"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/supervisor"
	"github.com/go-messaging-system/messaging/transport"
)

func testLogger() *slog.Logger {
	if os.Getenv("TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type fixture struct {
	t       *testing.T
	store   *persistence.Postgres
	broker  *transport.Broker
	reg     *prometheus.Registry
	deps    *actors.Deps
	system  *actor.ActorSystem
	created []string
}

// setup gives each test its own database, so the supervisor loads only the
// test's tenants.
func setup(t *testing.T) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := persistence.Open(ctx, testenv.NewDatabase(t), testLogger())
	require.NoError(t, err)
	t.Cleanup(store.Close)
	require.NoError(t, store.Migrate(ctx))
	broker, err := transport.Dial(ctx, transport.Config{URL: testenv.RequireRabbitMQ(t)}, testLogger(), transport.Hooks{})
	require.NoError(t, err)
	t.Cleanup(func() { broker.Close() })

	work, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	f := &fixture{t: t, store: store, broker: broker, reg: prometheus.NewRegistry()}
	f.deps = &actors.Deps{Store: store, Broker: broker, Metrics: metrics.New(f.reg), Logger: testLogger(),
		Context: work, Options: actors.Options{DrainTimeout: 10 * time.Second}}
	f.system = actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return testLogger() }))
	t.Cleanup(f.system.Shutdown)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		for _, id := range f.created {
			_ = broker.DeleteTenant(cctx, id)
		}
	})
	return f
}

func (f *fixture) start() *supervisor.Supervisor {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sup, err := supervisor.Start(ctx, f.system, f.store, f.broker, f.deps,
		supervisor.Config{SyncInterval: 100 * time.Millisecond})
	require.NoError(f.t, err)
	f.t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		_ = sup.Shutdown(sctx)
	})
	return sup
}

func (f *fixture) tenantID() string {
	id := testenv.TenantID("sup")
	f.created = append(f.created, id)
	return id
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

func queueExists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := amqp.Dial(testenv.RabbitMQURL())
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
	return err == nil
}

func TestSupervisorStartsStoredTenants(t *testing.T) {
	t.Parallel()
	f := setup(t)
	a, b := f.tenantID(), f.tenantID()
	for _, id := range []string{a, b} {
		_, err := f.store.CreateTenant(ctxT(t), persistence.Tenant{ID: id, Name: id, WorkerCount: 2})
		require.NoError(t, err)
	}
	sup := f.start()

	require.True(t, sup.Running(a))
	require.True(t, sup.Running(b))
	eventually(t, 10*time.Second, "consumers running", func() bool { return sup.Ready() == nil })
	require.True(t, queueExists(t, transport.QueueName(a)), "missing queues of stored tenants are declared")
	require.True(t, queueExists(t, transport.DeadLetterQueueName(b)))
	got, err := sup.Get(ctxT(t), a)
	require.NoError(t, err)
	require.Equal(t, 2, got.WorkersRunning)
}

func TestSupervisorCreateResizeDelete(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	ctx := ctxT(t)
	id := f.tenantID()

	created, err := sup.Create(ctx, persistence.Tenant{ID: id, Name: "Tenant", WorkerCount: 3})
	require.NoError(t, err)
	require.Equal(t, 3, created.WorkerCount)
	require.Equal(t, 3, created.WorkersRunning)
	require.True(t, queueExists(t, transport.QueueName(id)))
	require.True(t, queueExists(t, transport.DeadLetterQueueName(id)))

	_, err = sup.Create(ctx, persistence.Tenant{ID: id, Name: "Again", WorkerCount: 1})
	require.ErrorIs(t, err, persistence.ErrTenantExists)

	resized, err := sup.Resize(ctx, id, 7)
	require.NoError(t, err)
	require.Equal(t, 7, resized.WorkerCount)
	eventually(t, 10*time.Second, "7 live workers", func() bool {
		v, err := sup.Get(ctx, id)
		return err == nil && v.WorkersRunning == 7
	})
	stored, err := f.store.GetTenant(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 7, stored.WorkerCount, "the new count is stored")

	require.NoError(t, sup.Delete(ctx, id))
	require.False(t, sup.Running(id))
	require.False(t, queueExists(t, transport.QueueName(id)))
	require.False(t, queueExists(t, transport.DeadLetterQueueName(id)))
	_, err = f.store.GetTenant(ctx, id)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound)
	families, err := f.reg.Gather()
	require.NoError(t, err)
	for _, fam := range families {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				require.False(t, l.GetName() == "tenant" && l.GetValue() == id,
					"series %s of the deleted tenant remains", fam.GetName())
			}
		}
	}

	_, err = sup.Resize(ctx, id, 2)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound)
	err = sup.Delete(ctx, id)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound)
}

func TestSupervisorFollowsTenantsTable(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	ctx := ctxT(t)
	id := f.tenantID()

	// A row written by someone else (another instance, or psql) is picked
	// up by the periodic sync.
	_, err := f.store.CreateTenant(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
	require.NoError(t, err)
	eventually(t, 10*time.Second, "actor for the new row", func() bool { return sup.Running(id) })

	_, err = f.store.SetWorkerCount(ctx, id, 4)
	require.NoError(t, err)
	eventually(t, 10*time.Second, "4 live workers", func() bool {
		v, err := sup.Get(ctx, id)
		return err == nil && v.WorkersRunning == 4
	})

	require.NoError(t, f.store.DeleteTenant(ctx, id))
	eventually(t, 10*time.Second, "actor stopped after the row went", func() bool { return !sup.Running(id) })
}

func TestSupervisorConcurrentCreates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	ctx := ctxT(t)
	id := f.tenantID()

	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = sup.Create(ctx, persistence.Tenant{ID: id, Name: "race", WorkerCount: 1})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
			continue
		}
		require.ErrorIs(t, err, persistence.ErrTenantExists)
	}
	require.Equal(t, 1, ok, "exactly one create succeeds")
}

func TestSupervisorShutdownTwice(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	ctx := ctxT(t)
	id := f.tenantID()
	_, err := sup.Create(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 2})
	require.NoError(t, err)

	require.NoError(t, sup.Shutdown(ctx))
	require.NoError(t, sup.Shutdown(ctx))
	_, err = sup.Create(ctx, persistence.Tenant{ID: f.tenantID(), Name: "late", WorkerCount: 1})
	require.True(t, errors.Is(err, supervisor.ErrStopped), "got %v", err)
	require.Error(t, sup.Ready())
}

// flakyBroker fails DeleteTenant while failDeletes is set, as a stopped
// broker would.
type flakyBroker struct {
	supervisor.Broker
	mu          sync.Mutex
	failDeletes bool
}

func (b *flakyBroker) DeleteTenant(ctx context.Context, id string) error {
	b.mu.Lock()
	fail := b.failDeletes
	b.mu.Unlock()
	if fail {
		return transport.ErrUnavailable
	}
	return b.Broker.DeleteTenant(ctx, id)
}

func TestSupervisorDeleteRetriesAfterBrokerFault(t *testing.T) {
	t.Parallel()
	f := setup(t)
	broker := &flakyBroker{Broker: f.broker, failDeletes: true}
	ctx := ctxT(t)
	sup, err := supervisor.Start(ctx, f.system, f.store, broker, f.deps,
		supervisor.Config{SyncInterval: 100 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sup.Shutdown(context.Background()) })
	id := f.tenantID()
	_, err = sup.Create(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
	require.NoError(t, err)

	err = sup.Delete(ctx, id)
	require.ErrorIs(t, err, transport.ErrUnavailable)
	_, err = f.store.GetTenant(ctx, id)
	require.NoError(t, err, "the row stays while the queues could not be deleted")
	eventually(t, 10*time.Second, "the tenant restarted by the sync", func() bool { return sup.Running(id) })

	broker.mu.Lock()
	broker.failDeletes = false
	broker.mu.Unlock()
	require.NoError(t, sup.Delete(ctx, id))
	require.False(t, queueExists(t, transport.QueueName(id)))
	_, err = f.store.GetTenant(ctx, id)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound)
}
