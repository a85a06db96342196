//go:build faults

package faults

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

const reconnectsMetric = "messaging_broker_reconnects_total"

// load is an AMQP and an HTTP producer publishing to one tenant at once.
type load struct {
	amqp *amqpProducer
	http *httpProducer
	wait []func() error
}

// startLoad publishes amqpCount messages over AMQP at rate messages per
// second and httpCount over HTTP at the rate that makes both take as long.
func startLoad(t *testing.T, e *env, tenantID string, amqpCount, httpCount, rate int) *load {
	t.Helper()
	httpRate := max(1, rate*httpCount/amqpCount)
	l := &load{
		amqp: newAMQPProducer(e.rabbitURL, tenantID, tenantID+"-amqp", amqpCount, rate),
		http: newHTTPProducer(e, e.tenantToken(t, tenantID), tenantID+"-http", httpCount, httpRate),
	}
	l.wait = []func() error{l.amqp.start(t), l.http.start(t)}
	return l
}

// finish waits for both producers, then for the queue to drain, and checks
// that every confirmed message is stored exactly once.
func (l *load) finish(t *testing.T, e *env, tenantID string) storedRows {
	t.Helper()
	for _, wait := range l.wait {
		require.NoError(t, wait())
	}
	waitDrained(t, tenantID)
	confirmed := union(l.amqp.confirmed.snapshot(), l.http.confirmed.snapshot())
	require.Len(t, confirmed, l.amqp.count+l.http.count, "every published message is confirmed in the end")
	rows := requireExactlyOnce(t, e.databaseURL, tenantID, confirmed)
	republished, dials := l.amqp.stats()
	failures, slowest, samples := l.http.failures()
	t.Logf("tenant %s: %d confirmed, %d rows, %d distinct; AMQP producer republished %d after %d dials; "+
		"HTTP failures by status %v, slowest %v, first %q", tenantID, len(confirmed), rows.total, rows.distinct,
		republished, dials, failures, slowest, samples)
	return rows
}

// readinessWatch polls /ready until stopped and records every status seen.
type readinessWatch struct {
	mu     sync.Mutex
	seen   map[int]int
	bodies []string
	stop   chan struct{}
	done   chan struct{}
}

func watchReadiness(e *env) *readinessWatch {
	w := &readinessWatch{seen: make(map[int]int), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			status, body := e.ready()
			w.mu.Lock()
			w.seen[status]++
			if status != http.StatusOK && len(w.bodies) < 5 {
				w.bodies = append(w.bodies, body)
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *readinessWatch) finish() (map[int]int, []string) {
	close(w.stop)
	<-w.done
	return w.seen, w.bodies
}

func TestBrokerConnectionsClosedUnderLoad(t *testing.T) {
	// Not parallel: close_all_connections drops every client of the broker.
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "brokerclose", 3)
	before := e.metrics(t)[reconnectsMetric]
	watch := watchReadiness(e)

	l := startLoad(t, e, id, 8000, 2000, 1000)
	for range 2 {
		time.Sleep(2 * time.Second)
		rabbitmqctl(t, "close_all_connections", "fault test")
	}
	l.finish(t, e, id)
	seen, bodies := watch.finish()

	after := e.metrics(t)[reconnectsMetric]
	require.GreaterOrEqual(t, after-before, 2.0, "%s before %v, after %v", reconnectsMetric, before, after)
	require.Equal(t, 1.0, e.metrics(t)["messaging_broker_connected"])
	status, body := e.ready()
	require.Equal(t, http.StatusOK, status, body)
	t.Logf("/ready statuses during the faults: %v %v", seen, bodies)
}

func TestBrokerRestartUnderLoad(t *testing.T) {
	// Not parallel: stop_app takes the broker away from every client.
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "brokerrestart", 3)
	token := e.tenantToken(t, id)
	before := e.metrics(t)[reconnectsMetric]

	l := startLoad(t, e, id, 8000, 2000, 1000)
	time.Sleep(2 * time.Second)
	stopBroker(t)
	stopped := time.Now()

	// While the broker is away, /ready is 503 naming the broker, and an
	// HTTP publish fails fast with 503 instead of hanging.
	eventually(t, 10*time.Second, 100*time.Millisecond, "/ready 503 with the broker down", func() bool {
		status, body := e.ready()
		return status == http.StatusServiceUnavailable && strings.Contains(body, `"broker"`)
	})
	began := time.Now()
	status, body, err := do(http.MethodPost, e.url("/api/v1/messages"), token,
		map[string]any{"message_id": id + "-probe", "payload": map[string]any{"probe": true}})
	took := time.Since(began)
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, status, "%s", body)
	require.Less(t, took, 3*time.Second, "HTTP publish with the broker down took %s", took)

	time.Sleep(time.Until(stopped.Add(5 * time.Second)))
	startBroker(t)
	restarted := time.Now()
	eventually(t, 60*time.Second, 100*time.Millisecond, "/ready 200 after the broker restart", func() bool {
		status, _ := e.ready()
		return status == http.StatusOK
	})
	t.Logf("broker down for %s; server ready %s after start_app; probe publish returned 503 in %s",
		restarted.Sub(stopped).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond),
		took.Round(time.Millisecond))

	l.finish(t, e, id)
	after := e.metrics(t)[reconnectsMetric]
	require.GreaterOrEqual(t, after-before, 1.0, "%s before %v, after %v", reconnectsMetric, before, after)
	require.Equal(t, 1.0, e.metrics(t)["messaging_broker_connected"])
}

func TestTenantQueueDeletedRecovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	a := e.createTenant(t, "qdel-a", 3)
	b := e.createTenant(t, "qdel-b", 3)

	la := newAMQPProducer(e.rabbitURL, a, a, 8000, 1000)
	waitA := la.start(t)
	lb := startLoad(t, e, b, 6000, 2000, 1000)
	time.Sleep(2 * time.Second)

	// Lock tenant A's partition so that a backlog builds in its queue, then
	// delete the queue from outside. The broker drops the messages in it.
	// The server must re-declare the queue, consume again and commit the
	// deliveries its workers already had.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, a), 6*time.Second)
	eventually(t, 5*time.Second, 100*time.Millisecond, "a backlog of 300 ready messages for tenant A", func() bool {
		return queueStats(t)[transport.QueueName(a)].ready >= 300
	})
	// Pause the producer between two windows, because the check below needs
	// the exact purge count. NOTE: one run without the pause missed 20
	// confirmed messages (one producer window) more than the broker
	// reported purged, most likely messages routed while the queue was
	// being deleted, which the broker confirmed without counting them.
	la.hold()
	purged := deleteQueue(t, e.rabbitURL, transport.QueueName(a))
	la.release()
	deleted := time.Now()
	unlock()
	eventually(t, 30*time.Second, 100*time.Millisecond, "tenant A's queue back with a consumer", func() bool {
		s, ok := queueStats(t)[transport.QueueName(a)]
		return ok && s.consumers > 0
	})
	eventually(t, 30*time.Second, 100*time.Millisecond, "/ready 200 after the queue deletion", func() bool {
		status, _ := e.ready()
		return status == http.StatusOK
	})
	recovered := time.Since(deleted)

	require.NoError(t, waitA())
	lb.finish(t, e, b)
	waitDrained(t, a)

	// Tenant A: nothing stored twice, and the only confirmed messages
	// missing are the ones the deletion purged from the queue.
	rows := storedMessages(t, e.databaseURL, a)
	require.Equal(t, rows.distinct, rows.total, "tenant A: rows stored more than once")
	confirmed := la.confirmed.snapshot()
	missing := 0
	for mid := range confirmed {
		if !rows.ids[mid] {
			missing++
		}
	}
	for mid := range rows.ids {
		require.True(t, confirmed[mid], "tenant A: stored message %s was never confirmed", mid)
	}
	require.Equal(t, purged, missing, "tenant A: confirmed messages missing, against messages the deletion purged")
	republished, _ := la.stats()
	t.Logf("tenant A: queue deleted with %d messages in it; consumer back after %s; %d confirmed, %d stored, "+
		"%d republished after returns", purged, recovered.Round(time.Millisecond), len(confirmed), rows.total, republished)
}

// deleteQueue deletes a queue over its own connection and returns how
// many messages the broker dropped with it.
func deleteQueue(t *testing.T, rabbitURL, queue string) int {
	t.Helper()
	conn, err := amqp.DialConfig(rabbitURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	n, err := ch.QueueDelete(queue, false, false, false)
	require.NoError(t, err)
	return n
}
