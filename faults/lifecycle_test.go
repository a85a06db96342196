//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
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

	r := awaitDelete(t, done)
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

// awaitDelete waits up to adminTimeout for the result of a DELETE that
// runs in a goroutine.
func awaitDelete[T any](t *testing.T, done <-chan T) T {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(adminTimeout):
	}
	t.Fatalf("DELETE did not return within %s", adminTimeout)
	var zero T
	return zero
}

// publishResult is the response to one HTTP publish.
type publishResult struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// publishOne publishes one message with the id over HTTP. It does not
// touch t, so that goroutines can call it.
func publishOne(e *env, token, messageID string) publishResult {
	var r publishResult
	r.status, r.header, r.body, r.err = doWithHeader(http.MethodPost, e.url("/api/v1/messages"), token,
		map[string]any{"message_id": messageID, "payload": map[string]any{"id": messageID}})
	return r
}

// requireDeleting checks that r is the 503 for a tenant being deleted: a
// problem document with Retry-After.
func requireDeleting(t *testing.T, r publishResult, label string) {
	t.Helper()
	require.NoError(t, r.err, label)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s: %s", label, r.body)
	require.Equal(t, "5", r.header.Get("Retry-After"), label)
	require.Equal(t, "application/problem+json", r.header.Get("Content-Type"), label)
	var p struct {
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	require.NoError(t, json.Unmarshal(r.body, &p), "%s: %s", label, r.body)
	require.Equal(t, http.StatusServiceUnavailable, p.Status, label)
	require.Contains(t, p.Detail, "the tenant is being deleted", label)
}

// TestPublishDuringTenantDeleteAnswers503 publishes over HTTP while a
// DELETE waits for a locked partition. The tenant may outlive the DELETE,
// so the publishes get 503 with Retry-After, not 404. After the DELETE
// fails they are accepted again, and after a DELETE that succeeds they get
// 404.
func TestPublishDuringTenantDeleteAnswers503(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "life-pub503", 1)
	other := e.createTenant(t, "life-other", 1)
	token, otherToken := e.tenantToken(t, id), e.tenantToken(t, other)
	r := publishOne(e, token, "before-0")
	require.NoError(t, r.err)
	require.Equal(t, http.StatusAccepted, r.status, "%s", r.body)
	waitDrained(t, id)

	// The DELETE waits 3 s for the partition and then fails, as in
	// TestTenantDeleteWhilePartitionLocked.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, id), 6*time.Second)
	done := make(chan publishResult, 1)
	began := time.Now()
	go func() {
		var r publishResult
		r.status, r.header, r.body, r.err = doWithHeader(http.MethodDelete, e.url("/api/v1/tenants/"+id), e.admin, nil)
		done <- r
	}()
	waitForLockWait(t, e.databaseURL, "%LOCK TABLE%")

	// Several producers at once, each publishing a few times while the
	// DELETE waits.
	const producers, rounds = 8, 3
	results := make([][]publishResult, producers)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range rounds {
				results[p] = append(results[p], publishOne(e, token, fmt.Sprintf("during-%d-%d", p, round)))
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	select {
	case r := <-done:
		t.Fatalf("DELETE returned %d before the publishes ended; lock the partition longer", r.status)
	default:
	}
	for p, rs := range results {
		for round, r := range rs {
			requireDeleting(t, r, fmt.Sprintf("publish %d of producer %d during the DELETE", round, p))
		}
	}

	// A token of another tenant gets the same 404 for the tenant being
	// deleted as for one that never existed.
	status, deletingBody, err := do(http.MethodGet, e.url("/api/v1/tenants/"+id), otherToken, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, status, "%s", deletingBody)
	status, unknownBody, err := do(http.MethodGet, e.url("/api/v1/tenants/"+id+"-none"), otherToken, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, status, "%s", unknownBody)
	require.Equal(t, string(unknownBody), string(deletingBody))

	r = awaitDelete(t, done)
	took := time.Since(began)
	require.NoError(t, r.err)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "DELETE with the partition locked: %s", r.body)
	t.Logf("%d publishes during the DELETE got 503 (%s); the DELETE got 503 after %s",
		producers*rounds, strings.TrimSpace(string(results[0][0].body)), took.Round(time.Millisecond))

	// The failed DELETE started the tenant again.
	r = publishOne(e, token, "after-0")
	require.NoError(t, r.err)
	require.Equal(t, http.StatusAccepted, r.status, "publish after the failed DELETE: %s", r.body)
	unlock()
	waitDrained(t, id)
	requireExactlyOnce(t, e.databaseURL, id, map[string]bool{"before-0": true, "after-0": true})

	call(t, http.MethodDelete, e.url("/api/v1/tenants/"+id), e.admin, nil, http.StatusNoContent, nil)
	r = publishOne(e, token, "gone-0")
	require.NoError(t, r.err)
	require.Equal(t, http.StatusNotFound, r.status, "publish after the DELETE: %s", r.body)
	require.Contains(t, string(r.body), "tenant not found")
	call(t, http.MethodGet, e.url("/api/v1/tenants/"+id), token, nil, http.StatusNotFound, nil)
}
