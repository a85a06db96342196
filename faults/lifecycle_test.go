//go:build faults

package faults

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

// adminTimeout bounds each create, resize and delete request under load.
const adminTimeout = 20 * time.Second

// timedCall runs call and returns how long it took.
func timedCall(t *testing.T, method, url, token string, body any, want int) time.Duration {
	t.Helper()
	began := time.Now()
	call(t, method, url, token, body, want, nil)
	return time.Since(began)
}

func TestTenantLifecycleUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	busy := e.createTenant(t, "life-busy", 2)
	doomed := e.createTenant(t, "life-doomed", 1)
	l := startLoad(t, e, busy, 10000, 2000, 1000)

	// Build a backlog for the doomed tenant: lock its partition so that its
	// worker cannot commit, and publish 5000 messages.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, doomed), 5*time.Second)
	backlog := newAMQPProducer(e.rabbitURL, doomed, doomed, 5000, 20000)
	require.NoError(t, backlog.start(t)())
	depth := queueStats(t)[transport.QueueName(doomed)]
	require.Positive(t, depth.ready, "no backlog in the doomed tenant's queue: %+v", depth)

	// Delete it with the backlog in place and its worker blocked.
	took := timedCall(t, http.MethodDelete, e.url("/api/v1/tenants/"+doomed), e.admin, nil, http.StatusNoContent)
	require.Less(t, took, adminTimeout, "DELETE of a tenant with a backlog took %s", took)
	unlock()

	// Create tenants while the busy one ingests, resize the busy one
	// repeatedly, and publish to the new ones.
	var created []string
	var producers []*amqpProducer
	var waits []func() error
	var slowest time.Duration
	for i, workers := range []int{1, 4, 2, 6, 3} {
		began := time.Now()
		id := e.createTenant(t, fmt.Sprintf("life-new%d", i), 2)
		slowest = max(slowest, time.Since(began))
		created = append(created, id)
		p := newAMQPProducer(e.rabbitURL, id, id, 1000, 500)
		producers = append(producers, p)
		waits = append(waits, p.start(t))

		took := timedCall(t, http.MethodPut, e.url("/api/v1/tenants/"+busy+"/config/concurrency"), e.admin,
			map[string]any{"worker_count": workers}, http.StatusOK)
		slowest = max(slowest, took)
		time.Sleep(400 * time.Millisecond)
	}
	require.Less(t, slowest, adminTimeout, "slowest create or resize under load")

	l.finish(t, e, busy)
	for i, wait := range waits {
		require.NoError(t, wait())
		waitDrained(t, created[i])
		requireExactlyOnce(t, e.databaseURL, created[i], producers[i].confirmed.snapshot())
	}
	eventually(t, 30*time.Second, 200*time.Millisecond, "3 live workers for the resized tenant", func() bool {
		var v tenantView
		call(t, http.MethodGet, e.url("/api/v1/tenants/"+busy), e.admin, nil, http.StatusOK, &v)
		return v.WorkerCount == 3 && v.WorkersRunning == 3
	})
	require.Equal(t, 3.0, e.metrics(t)[fmt.Sprintf(`messaging_workers_live{tenant=%q}`, busy)])

	// Two tenant sync intervals later, nothing of the deleted tenant is
	// left or has come back.
	time.Sleep(2500 * time.Millisecond)
	requireTenantGone(t, e, doomed)
	status, body := e.ready()
	require.Equal(t, http.StatusOK, status, body)
	t.Logf("deleted a tenant with %d ready messages in %s; slowest create or resize %s",
		depth.ready, took.Round(time.Millisecond), slowest.Round(time.Millisecond))
}

// requireTenantGone checks that no actor, queue, partition, row or metric
// series of the tenant is left.
func requireTenantGone(t *testing.T, e *env, id string) {
	t.Helper()
	call(t, http.MethodGet, e.url("/api/v1/tenants/"+id), e.admin, nil, http.StatusNotFound, nil)
	stats := queueStats(t)
	for _, q := range []string{transport.QueueName(id), transport.DeadLetterQueueName(id)} {
		_, ok := stats[q]
		require.False(t, ok, "queue %s still exists", q)
	}
	withConn(t, e.databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		var partitions, rows int
		err := conn.QueryRow(ctx, `
			SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'messages'::regclass
			  AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (%L)', $1::text)`, id).Scan(&partitions)
		require.NoError(t, err)
		require.Zero(t, partitions, "partition of tenant %s still exists", id)
		err = conn.QueryRow(ctx, `SELECT count(*) FROM tenants WHERE id = $1`, id).Scan(&rows)
		require.NoError(t, err)
		require.Zero(t, rows, "row of tenant %s still exists", id)
	})
	for _, line := range strings.Split(e.metricsText(t), "\n") {
		require.NotContains(t, line, `tenant="`+id+`"`, "metric series of the deleted tenant")
	}
}

func TestTenantDeleteWhileBrokerDown(t *testing.T) {
	// Not parallel: stop_app takes the broker away from every client.
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "life-brokerdown", 2)
	p := newAMQPProducer(e.rabbitURL, id, id, 500, 1000)
	require.NoError(t, p.start(t)())
	waitDrained(t, id)

	// DELETE while the broker is away must either fail and leave the
	// tenant in place, or succeed and still remove its queues once the
	// broker is back.
	stopBroker(t)
	eventually(t, 10*time.Second, 100*time.Millisecond, "/ready 503 with the broker down", func() bool {
		status, _ := e.ready()
		return status == http.StatusServiceUnavailable
	})
	began := time.Now()
	status, body, err := do(http.MethodDelete, e.url("/api/v1/tenants/"+id), e.admin, nil)
	took := time.Since(began)
	require.NoError(t, err)
	require.Less(t, took, adminTimeout, "DELETE with the broker down took %s", took)
	startBroker(t)
	eventually(t, 60*time.Second, 200*time.Millisecond, "/ready 200 after the broker restart", func() bool {
		status, _ := e.ready()
		return status == http.StatusOK
	})

	// An operator retries a failed DELETE until it is done.
	final := status
	for i := 0; final != http.StatusNoContent && final != http.StatusNotFound && i < 20; i++ {
		time.Sleep(500 * time.Millisecond)
		final, _, err = do(http.MethodDelete, e.url("/api/v1/tenants/"+id), e.admin, nil)
		require.NoError(t, err)
	}
	t.Logf("DELETE with the broker down: %d in %s (%s); after the restart: %d", status,
		took.Round(time.Millisecond), strings.TrimSpace(string(body)), final)
	time.Sleep(2500 * time.Millisecond)
	stats := queueStats(t)
	_, queueLeft := stats[transport.QueueName(id)]
	_, dlqLeft := stats[transport.DeadLetterQueueName(id)]
	if queueLeft || dlqLeft {
		t.Fatalf("DELETE with the broker down returned %d and the retry %d, "+
			"but the tenant's queues were not deleted", status, final)
	}
	requireTenantGone(t, e, id)
}

// waitForLockWait waits until a session of the test database waits for a
// lock while it runs a query that matches the LIKE pattern.
func waitForLockWait(t *testing.T, databaseURL, pattern string) {
	t.Helper()
	withConn(t, databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		eventually(t, 10*time.Second, 20*time.Millisecond, "a query like "+pattern+" to wait for a lock", func() bool {
			var waiting bool
			err := conn.QueryRow(ctx, `
				SELECT count(*) > 0 FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
				pattern).Scan(&waiting)
			require.NoError(t, err)
			return waiting
		})
	})
}

func TestTenantDeleteWhilePartitionLocked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "life-locked", 2)
	dlq := transport.DeadLetterQueueName(id)
	before := newAMQPProducer(e.rabbitURL, id, "before", 200, 1000)
	require.NoError(t, before.start(t)())
	poison := newAMQPProducer(e.rabbitURL, id, "poison", 1, 100)
	poison.body = func(int) []byte { return []byte("not json") }
	require.NoError(t, poison.start(t)())
	waitDrained(t, id)
	eventually(t, 10*time.Second, 100*time.Millisecond, "the poison message in the DLQ", func() bool {
		return queueStats(t)[dlq].ready == 1
	})

	// Another session keeps the partition locked for longer than the
	// DELETE waits for it (3 s), so the DELETE fails.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, id), 10*time.Second)
	type result struct {
		status int
		body   []byte
		err    error
		took   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		began := time.Now()
		status, body, err := do(http.MethodDelete, e.url("/api/v1/tenants/"+id), e.admin, nil)
		done <- result{status: status, body: body, err: err, took: time.Since(began)}
	}()

	// The DELETE stops the tenant's consumer before it waits for the
	// partition, so what is published meanwhile waits in the queue.
	waitForLockWait(t, e.databaseURL, "%LOCK TABLE%")
	during := newAMQPProducer(e.rabbitURL, id, "during", 100, 1000)
	require.NoError(t, during.start(t)())
	republished, _ := during.stats()
	require.Zero(t, republished, "messages returned as unroutable: the DELETE deleted the queue before it gave up")
	select {
	case r := <-done:
		t.Fatalf("DELETE returned %d before the messages were published; lock it longer", r.status)
	default:
	}

	var r result
	select {
	case r = <-done:
	case <-time.After(adminTimeout):
		t.Fatalf("DELETE did not return within %s", adminTimeout)
	}
	require.NoError(t, r.err)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "DELETE with the partition locked: %s", r.body)
	t.Logf("DELETE with the partition locked: %d in %s (%s)", r.status, r.took.Round(time.Millisecond),
		strings.TrimSpace(string(r.body)))

	// Nothing of the tenant is gone: it runs, its queue delivers what was
	// published during the DELETE, and its DLQ keeps the poison message.
	call(t, http.MethodGet, e.url("/api/v1/tenants/"+id), e.admin, nil, http.StatusOK, nil)
	unlock()
	waitDrained(t, id)
	requireExactlyOnce(t, e.databaseURL, id, union(before.confirmed.snapshot(), during.confirmed.snapshot()))
	letters := deadLetters(t, e.rabbitURL, id)
	require.Len(t, letters, 1, "dead letters after the failed DELETE")
	require.Equal(t, "poison-0", letters[0].messageID)

	call(t, http.MethodDelete, e.url("/api/v1/tenants/"+id), e.admin, nil, http.StatusNoContent, nil)
	time.Sleep(2500 * time.Millisecond) // two sync intervals: the tenant must not come back
	requireTenantGone(t, e, id)
}
