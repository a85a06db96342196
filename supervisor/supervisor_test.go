package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
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

// startWithoutSync starts a supervisor that loads the tenants table only
// once, so that nothing but the test's requests starts or stops a tenant.
func (f *fixture) startWithoutSync() *supervisor.Supervisor {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sup, err := supervisor.Start(ctx, f.system, f.store, f.broker, f.deps,
		supervisor.Config{SyncInterval: time.Hour})
	require.NoError(f.t, err)
	f.t.Cleanup(func() { _ = sup.Shutdown(context.Background()) })
	return sup
}

// requireDelete deletes the tenant and checks that its actor, queues and
// row are gone.
func (f *fixture) requireDelete(sup *supervisor.Supervisor, id string) {
	f.t.Helper()
	ctx := ctxT(f.t)
	require.NoError(f.t, sup.Delete(ctx, id))
	require.False(f.t, sup.Running(id))
	require.False(f.t, queueExists(f.t, transport.QueueName(id)))
	require.False(f.t, queueExists(f.t, transport.DeadLetterQueueName(id)))
	_, err := f.store.GetTenant(ctx, id)
	require.ErrorIs(f.t, err, persistence.ErrTenantNotFound)
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

// dialChannel opens a connection to the broker and a channel on it. The
// caller runs closeConn when done.
func dialChannel(t *testing.T) (ch *amqp.Channel, closeConn func()) {
	t.Helper()
	conn, err := amqp.Dial(testenv.RabbitMQURL())
	require.NoError(t, err)
	ch, err = conn.Channel()
	if err != nil {
		_ = conn.Close()
	}
	require.NoError(t, err)
	return ch, func() { _ = conn.Close() }
}

// inspectQueue declares the queue passively, which returns its counts, or
// an error when it does not exist.
func inspectQueue(t *testing.T, name string) (amqp.Queue, error) {
	t.Helper()
	ch, closeConn := dialChannel(t)
	defer closeConn()
	return ch.QueueDeclarePassive(name, true, false, false, false, nil)
}

func queueExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := inspectQueue(t, name)
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

	f.requireDelete(sup, id)
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

// publish publishes each body to the tenant, persistent and mandatory, on a
// confirm channel, with the message ids prefix-0, prefix-1 and so on, and
// returns how many the broker returned as unroutable.
func publish(t *testing.T, tenantID, prefix string, bodies ...string) (returned int) {
	t.Helper()
	ch, closeConn := dialChannel(t)
	defer closeConn()
	require.NoError(t, ch.Confirm(false))
	returns := ch.NotifyReturn(make(chan amqp.Return, len(bodies)))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, body := range bodies {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, transport.ExchangeName, tenantID, true, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: fmt.Sprintf("%s-%d", prefix, i),
				Body: []byte(body)})
		require.NoError(t, err)
		ok, err := c.WaitContext(ctx)
		require.NoError(t, err)
		require.True(t, ok, "the broker nacked a publish")
	}
	// The broker sends a return before the confirm of the same message.
	return len(returns)
}

// queueLength returns the number of ready messages in the queue.
func queueLength(t *testing.T, name string) int {
	t.Helper()
	q, err := inspectQueue(t, name)
	require.NoError(t, err, "queue %s", name)
	return q.Messages
}

// holdPartitionLock locks the tenant's partition in ACCESS EXCLUSIVE mode
// from a connection of its own until release is called or the test ends.
func (f *fixture) holdPartitionLock(id string) (release func()) {
	f.t.Helper()
	ctx := ctxT(f.t)
	conn, err := pgx.Connect(ctx, f.store.Pool().Config().ConnString())
	require.NoError(f.t, err)
	tx, err := conn.Begin(ctx)
	require.NoError(f.t, err)
	var partition string
	require.NoError(f.t, tx.QueryRow(ctx, `SELECT partition_name FROM tenants WHERE id = $1`, id).Scan(&partition))
	_, err = tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{partition}.Sanitize()+" IN ACCESS EXCLUSIVE MODE")
	require.NoError(f.t, err)
	var once sync.Once
	release = func() {
		once.Do(func() {
			_ = tx.Rollback(context.Background())
			_ = conn.Close(context.Background())
		})
	}
	f.t.Cleanup(release)
	return release
}

// TestSupervisorFailedDeleteKeepsTenant checks that a delete
// that gives up on a partition lock changes nothing: the queues keep the
// messages that arrived while the tenant was stopped for the delete, and
// the tenant runs again at once and stores them.
func TestSupervisorFailedDeleteKeepsTenant(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := ctxT(t)
	// No sync during the test: only the failed delete itself may start
	// the tenant again.
	sup := f.startWithoutSync()
	id := f.tenantID()
	_, err := sup.Create(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
	require.NoError(t, err)
	require.Zero(t, publish(t, id, "before", `{"n":0}`, `{"n":1}`, "not json"))
	eventually(t, 10*time.Second, "2 stored messages", func() bool {
		n, err := f.store.CountMessages(ctx, id)
		return err == nil && n == 2
	})
	eventually(t, 10*time.Second, "1 dead letter", func() bool {
		return queueLength(t, transport.DeadLetterQueueName(id)) == 1
	})

	release := f.holdPartitionLock(id)
	deleted := make(chan error, 1)
	go func() { deleted <- sup.Delete(ctx, id) }()
	// The delete stops the tenant before it waits for the partition, so
	// messages published now wait in the queue.
	f.waitForDeleteLock()
	require.ErrorIs(t, sup.Available(id), supervisor.ErrDeleting,
		"while the delete waits, the tenant may still come back, so it is not reported missing")
	returned := publish(t, id, "during", `{"n":10}`, `{"n":11}`, `{"n":12}`)
	require.Zero(t, returned, "the queue was deleted while the delete still waited for the partition")
	ready, consumers, err := f.broker.QueueDepth(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 3, ready)
	require.Zero(t, consumers)

	select {
	case err = <-deleted:
	case <-time.After(15 * time.Second):
		t.Fatal("the delete did not give up on the partition lock within 15s")
	}
	require.True(t, persistence.IsRetryable(err), "error: %v", err)
	require.True(t, sup.Running(id), "the tenant does not run after the failed delete")
	require.NoError(t, sup.Available(id))
	_, err = f.store.GetTenant(ctx, id)
	require.NoError(t, err, "the failed delete removed the tenant row")
	require.Equal(t, 1, queueLength(t, transport.DeadLetterQueueName(id)), "the failed delete emptied the DLQ")

	release()
	eventually(t, 10*time.Second, "the queued messages stored", func() bool {
		n, err := f.store.CountMessages(ctx, id)
		return err == nil && n == 5
	})

	f.requireDelete(sup, id)
	require.ErrorIs(t, sup.Available(id), persistence.ErrTenantNotFound)
}

// TestSupervisorDeletingTenantIsNotMissing checks the errors that other
// calls return while a delete stops a tenant whose worker cannot commit.
// The tenant is being deleted, not missing, because the delete may still
// fail. Once the delete succeeds, the tenant is missing.
func TestSupervisorDeletingTenantIsNotMissing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	ctx := ctxT(t)
	id := f.tenantID()
	_, err := sup.Create(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
	require.NoError(t, err)
	require.NoError(t, sup.Available(id))

	// The worker takes the message and retries its insert until the lock
	// is gone, so the delete waits for the worker to drain.
	release := f.holdPartitionLock(id)
	require.Zero(t, publish(t, id, "held", `{"n":0}`))
	eventually(t, 10*time.Second, "a retried insert", func() bool {
		return testutil.ToFloat64(f.deps.Metrics.BatchRetries.WithLabelValues(id)) > 0
	})
	deleted := make(chan error, 1)
	go func() { deleted <- sup.Delete(ctx, id) }()
	eventually(t, 10*time.Second, "the delete to start", func() bool { return !sup.Running(id) })

	// Several callers at once, as HTTP publishes would be.
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sup.Available(id)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.ErrorIs(t, err, supervisor.ErrDeleting, "caller %d", i)
	}
	require.False(t, sup.Running(id))
	_, err = sup.Resize(ctx, id, 2)
	require.ErrorIs(t, err, supervisor.ErrDeleting)
	require.ErrorIs(t, sup.Delete(ctx, id), supervisor.ErrDeleting)
	select {
	case err := <-deleted:
		t.Fatalf("the delete ended while the worker could not commit: %v", err)
	default:
	}

	release()
	select {
	case err := <-deleted:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the delete did not end within 30s of the lock's release")
	}
	require.ErrorIs(t, sup.Available(id), persistence.ErrTenantNotFound)
	_, err = sup.Resize(ctx, id, 2)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound)
	require.ErrorIs(t, sup.Delete(ctx, id), persistence.ErrTenantNotFound)
}

// TestSupervisorShutdownDuringDelete checks that a shutdown lets a delete
// under way finish, rejects new changes, and keeps the tenants it stops
// available for publishes, because their queues stay.
func TestSupervisorShutdownDuringDelete(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := ctxT(t)
	sup := f.start()
	remaining, deleted := f.tenantID(), f.tenantID()
	for _, id := range []string{remaining, deleted} {
		_, err := sup.Create(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
		require.NoError(t, err)
	}

	// The held batch delays the tenant's stop, and with it the delete,
	// until the lock ends.
	release := f.holdBatch(deleted)
	deleteDone := make(chan error, 1)
	go func() { deleteDone <- sup.Delete(ctx, deleted) }()
	eventually(t, 10*time.Second, "the delete to stop the tenant", func() bool {
		return errors.Is(sup.Available(deleted), supervisor.ErrDeleting)
	})
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- sup.Shutdown(ctx) }()

	eventually(t, 10*time.Second, "the remaining tenant stopped", func() bool { return !sup.Running(remaining) })
	require.NoError(t, sup.Available(remaining), "a tenant stopped by the shutdown no longer takes publishes")
	require.ErrorIs(t, sup.Ready(), supervisor.ErrStopped)
	_, err := sup.Resize(ctx, remaining, 2)
	require.ErrorIs(t, err, supervisor.ErrStopped)
	require.ErrorIs(t, sup.Delete(ctx, remaining), supervisor.ErrStopped)
	_, err = sup.Create(ctx, persistence.Tenant{ID: f.tenantID(), Name: "late", WorkerCount: 1})
	require.ErrorIs(t, err, supervisor.ErrStopped)
	select {
	case err := <-shutdownDone:
		t.Fatalf("the shutdown returned (%v) while a delete waited for its tenant to stop", err)
	case <-time.After(500 * time.Millisecond):
	}

	release()
	for _, done := range []chan error{deleteDone, shutdownDone} {
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(15 * time.Second):
			t.Fatal("the delete or the shutdown did not finish within 15s after the lock ended")
		}
	}
	_, err = f.store.GetTenant(ctx, deleted)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound)
	require.NoError(t, sup.Available(remaining))
	require.True(t, queueExists(t, transport.QueueName(remaining)), "the shutdown deleted the queue of a tenant it stopped")
}

// holdBatch locks the tenant's partition and publishes a message, and
// returns once the worker retries its batch on the lock. The worker then
// cannot drain, so the tenant cannot stop, until release is called.
func (f *fixture) holdBatch(id string) (release func()) {
	f.t.Helper()
	release = f.holdPartitionLock(id)
	require.Zero(f.t, publish(f.t, id, "held", `{"n":0}`))
	retries := f.deps.Metrics.BatchRetries.WithLabelValues(id)
	eventually(f.t, 10*time.Second, "a batch retry on the locked partition", func() bool {
		return testutil.ToFloat64(retries) > 0
	})
	return release
}

func TestSupervisorShutdownPastDeadline(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	id := f.tenantID()
	_, err := sup.Create(ctxT(t), persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
	require.NoError(t, err)
	release := f.holdBatch(id)
	defer release()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = sup.Shutdown(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded, "a shutdown that outlasts its context")
}

// waitForDeleteLock returns once a session of the test's database waits for
// a lock in a LOCK TABLE statement, as the delete of a tenant whose
// partition is locked does.
func (f *fixture) waitForDeleteLock() {
	f.t.Helper()
	ctx := ctxT(f.t)
	eventually(f.t, 10*time.Second, "the delete to wait for the partition lock", func() bool {
		var waiting bool
		err := f.store.Pool().QueryRow(ctx, `
			SELECT count(*) > 0 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%LOCK TABLE%'`).
			Scan(&waiting)
		return err == nil && waiting
	})
}

// TestSupervisorDropsExpiredChange checks that a create
// whose caller stopped waiting while it was queued behind a delete is
// reported as not applied and is dropped rather than run later.
func TestSupervisorDropsExpiredChange(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := ctxT(t)
	// No sync during the test, so that nothing but the requests runs in
	// the root actor.
	sup := f.startWithoutSync()
	blocked, queued, later := f.tenantID(), f.tenantID(), f.tenantID()
	_, err := sup.Create(ctx, persistence.Tenant{ID: blocked, Name: blocked, WorkerCount: 1})
	require.NoError(t, err)

	// The delete waits up to 3 s for the partition in the root actor's
	// turn, so the create queues behind it.
	release := f.holdPartitionLock(blocked)
	deleted := make(chan error, 1)
	go func() { deleted <- sup.Delete(ctx, blocked) }()
	f.waitForDeleteLock()

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	started := time.Now()
	_, err = sup.Create(short, persistence.Tenant{ID: queued, Name: queued, WorkerCount: 1})
	require.ErrorIs(t, err, supervisor.ErrNotApplied)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(started), 2*time.Second, "the create waited past its deadline")

	select {
	case err = <-deleted:
		require.True(t, persistence.IsRetryable(err), "error: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("the delete did not give up on the partition lock within 15s")
	}
	release()
	// The mailbox is FIFO: once this create is done, the root actor has
	// taken up the one queued before it.
	_, err = sup.Create(ctx, persistence.Tenant{ID: later, Name: later, WorkerCount: 1})
	require.NoError(t, err)
	_, err = f.store.GetTenant(ctx, queued)
	require.ErrorIs(t, err, persistence.ErrTenantNotFound, "the create was applied after its caller gave up")
	require.False(t, sup.Running(queued))
	require.False(t, queueExists(t, transport.QueueName(queued)))
}

// TestSupervisorRunningChangeTimeout checks that a delete whose
// caller stops waiting after the root actor took it up is reported as
// possibly applied, and that it does take effect.
func TestSupervisorRunningChangeTimeout(t *testing.T) {
	t.Parallel()
	f := setup(t)
	sup := f.start()
	ctx := ctxT(t)
	id := f.tenantID()
	_, err := sup.Create(ctx, persistence.Tenant{ID: id, Name: id, WorkerCount: 1})
	require.NoError(t, err)
	// The held batch keeps the tenant from stopping, and the delete from
	// ending, until release.
	release := f.holdBatch(id)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = sup.Delete(short, id)
	require.ErrorIs(t, err, supervisor.ErrMaybeApplied)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, sup.Available(id), supervisor.ErrDeleting, "the delete goes on without its caller")

	release()
	eventually(t, 20*time.Second, "the tenant deleted", func() bool {
		_, err := f.store.GetTenant(ctx, id)
		return errors.Is(err, persistence.ErrTenantNotFound)
	})
	eventually(t, 10*time.Second, "the tenant forgotten", func() bool {
		return errors.Is(sup.Available(id), persistence.ErrTenantNotFound)
	})
}
